"""SAM2OfficialLoss against Meta's `training.loss_fns.MultiStepMultiMasksAndIous` and on hand-made cases."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from training.loss_fns import MultiStepMultiMasksAndIous

import sam2train.losses.official as losses_sam2
from sam2train.config import Sam2LossConfig
from sam2train.losses.official import SAM2OfficialLoss
from sam2train.losses.terms import focal_per_mask

M = 3
KEYS = ("mask", "dice", "iou", "class")
META_KEYS = {"mask": "loss_mask", "dice": "loss_dice", "iou": "loss_iou", "class": "loss_class"}


@dataclass
class Case:
    """A batch in our layout plus how Meta sees it.

    objects[b]: real objects of clip b (the rest of N is padding); steps[t]: prompting steps of frame t, shared
    by all objects (Meta's layout); multi[t][k]: whether step k of frame t is a multimask output (else single).
    base [B, T, N, K, M, h, w] is the leaf the gradients are taken on; `logits` repeats candidate 0 on
    single-mask steps, and padded slots hold `pad` (they must not matter).
    """

    base: torch.Tensor
    logits: torch.Tensor
    ious_base: torch.Tensor
    ious: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    targets: torch.Tensor
    objects: list[int]
    steps: list[int]
    multi: list[list[bool]]


def _blobs(shape: tuple[int, ...], size: int, g: torch.Generator) -> torch.Tensor:
    """Random 0/1 blob masks [*shape, size, size]: thresholded smooth noise."""
    noise = torch.randn(*shape, 4, 4, generator=g).flatten(0, -3).unsqueeze(1)
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth > 0.4).float().reshape(*shape, size, size)


def _case(objects=(2, 3), steps=(1, 3, 2), size=32, low=8, seed=0, pad=float("inf"), absent=0.3) -> Case:
    g = torch.Generator().manual_seed(seed)
    b_, t_, n_, k_ = len(objects), len(steps), max(objects), max(steps)
    targets = _blobs((b_, t_, n_), size, g)
    targets *= (torch.rand(b_, t_, n_, 1, 1, generator=g) > absent).float()  # some objects absent
    for b, n_obj in enumerate(objects):
        targets[b, :, n_obj:] = 0
    # logits that look like the target to a random degree per candidate, so the best candidate varies
    target_low = F.interpolate(targets.flatten(0, 2).unsqueeze(1), size=(low, low), mode="area")
    target_low = target_low.reshape(b_, t_, n_, 1, 1, low, low)
    strength = torch.rand(b_, t_, n_, k_, M, 1, 1, generator=g) * 6
    base = torch.randn(b_, t_, n_, k_, M, low, low, generator=g) * 2 + strength * (2 * target_low - 1)
    ious_base = torch.rand(b_, t_, n_, k_, M, generator=g)
    scores = torch.randn(b_, t_, n_, k_, generator=g) * 3

    multi = [[bool(torch.rand((), generator=g) > 0.5) for _ in range(k)] for k in steps]
    multi[0][0] = True
    single = torch.zeros(t_, k_, dtype=torch.bool)
    valid = torch.zeros(b_, t_, n_, k_, dtype=torch.bool)
    for t, k in enumerate(steps):
        single[t, :k] = torch.tensor([not m for m in multi[t]])
        for b, n_obj in enumerate(objects):
            valid[b, t, :n_obj, :k] = True

    base.requires_grad_(True)
    ious_base.requires_grad_(True)
    scores.requires_grad_(True)
    rep = single.view(1, t_, 1, k_, 1)
    logits = torch.where(rep.unsqueeze(-1).unsqueeze(-1), base[..., :1, :, :].expand_as(base), base)
    ious = torch.where(rep, ious_base[..., :1].expand_as(ious_base), ious_base)
    pad_slots = ~valid
    logits = torch.where(pad_slots.view(b_, t_, n_, k_, 1, 1, 1), torch.full_like(logits, pad), logits)
    ious = torch.where(pad_slots.unsqueeze(-1), torch.full_like(ious, pad), ious)
    scores_in = torch.where(pad_slots, torch.full_like(scores, -pad), scores)
    return Case(base, logits, ious_base, ious, scores_in, valid, targets, list(objects), list(steps), multi)


def _meta_outputs(case: Case) -> list[dict]:
    """Meta's per-frame dicts: objects of all clips on one axis, high-res masks [n_obj, M or 1, S, S]."""
    size = case.targets.shape[-1]
    objs = [(b, n) for b, n_obj in enumerate(case.objects) for n in range(n_obj)]
    outs = []
    for t, k_t in enumerate(case.steps):
        masks, ious, scores = [], [], []
        for k in range(k_t):
            m = M if case.multi[t][k] else 1
            low = torch.stack([case.base[b, t, n, k, :m] for b, n in objs])  # [n_obj, m, h, w]
            masks.append(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))
            ious.append(torch.stack([case.ious_base[b, t, n, k, :m] for b, n in objs]))
            scores.append(torch.stack([case.scores[b, t, n, k : k + 1] for b, n in objs]))  # [n_obj, 1]
        outs.append(
            {
                "multistep_pred_multimasks_high_res": masks,
                "multistep_pred_ious": ious,
                "multistep_object_score_logits": scores,
            }
        )
    return outs


def _meta_targets(case: Case) -> torch.Tensor:
    """[T, n_obj, S, S], objects in the order of `_meta_outputs`."""
    objs = [(b, n) for b, n_obj in enumerate(case.objects) for n in range(n_obj)]
    return torch.stack(
        [torch.stack([case.targets[b, t, n] for b, n in objs]) for t in range(len(case.steps))]
    )


def _meta_loss(supervise_all_iou: bool, l1: bool) -> MultiStepMultiMasksAndIous:
    return MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=supervise_all_iou,
        iou_use_l1_loss=l1,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def _ours(case: Case, loss: SAM2OfficialLoss | None = None, **kwargs):
    loss = loss or SAM2OfficialLoss()
    return loss(case.logits, case.ious, case.scores, case.valid, case.targets, **kwargs)


def _grads(total: torch.Tensor, case: Case) -> list[torch.Tensor]:
    return torch.autograd.grad(total, [case.base, case.ious_base, case.scores])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize(
    ("supervise_all_iou", "iou_loss", "seed", "chunk_pixels"),
    [(True, "l1", 0, None), (False, "l1", 1, None), (True, "mse", 2, 1), (False, "mse", 3, 1)],
)
def test_parity_with_meta(supervise_all_iou: bool, iou_loss: str, seed: int, chunk_pixels: int | None):
    case = _case(seed=seed)
    meta = _meta_loss(supervise_all_iou, iou_loss == "l1")(_meta_outputs(case), _meta_targets(case))
    ours = SAM2OfficialLoss(iou_loss=iou_loss, supervise_all_iou=supervise_all_iou)
    if chunk_pixels is not None:
        ours.chunk_pixels = chunk_pixels  # one row per chunk: several checkpointed chunks
    total, comps = _ours(case, ours)

    assert torch.isfinite(total)
    assert _rel(total, meta["core_loss"]) <= 1e-5
    for key in KEYS:
        assert comps[key].dtype == torch.float32
        assert _rel(comps[key], meta[META_KEYS[key]]) <= 1e-5, key
    for mine, theirs in zip(_grads(total, case), _grads(meta["core_loss"], case), strict=True):
        assert torch.isfinite(mine).all()
        assert _rel(mine, theirs) <= 1e-4


def test_parity_case_is_not_degenerate():
    """The parity case exercises what it claims: absent objects, several steps, varied best candidates."""
    case = _case(seed=0)
    present = case.targets.flatten(3).amax(3) > 0
    real = case.valid.any(3)
    assert (real & ~present).any() and (real & present).any()
    assert max(case.steps) > 1 and any(not m for row in case.multi for m in row)
    size = case.targets.shape[-1]
    up = F.interpolate(case.base.detach().flatten(0, 3), size=(size, size), mode="bilinear")
    target = case.targets.unsqueeze(3).expand(*case.base.shape[:4], size, size).flatten(0, 3).unsqueeze(1)
    best = focal_per_mask(up, target.expand_as(up)).argmin(1)[(case.valid & present.unsqueeze(-1)).flatten()]
    assert len(best.unique()) > 1


def test_single_mask_repeated_equals_single_candidate():
    """A single-mask step stored repeated M times gives the loss of that one mask (Meta's [n, 1] case)."""
    case = _case(objects=(1,), steps=(1,), seed=4, absent=0.0)
    one = SAM2OfficialLoss()
    rep = case.logits[..., :1, :, :].expand_as(case.logits)
    ious_rep = case.ious[..., :1].expand_as(case.ious)
    total_rep, _ = one(rep, ious_rep, case.scores, case.valid, case.targets)
    total_one, _ = one(case.logits[..., :1, :, :], case.ious[..., :1], case.scores, case.valid, case.targets)
    torch.testing.assert_close(total_rep, total_one)


def test_mask_gradient_reaches_only_selected_candidate():
    size = 32
    target = torch.zeros(1, 1, 1, size, size)
    target[..., 8:24, 8:24] = 1
    good = (target * 2 - 1) * 8  # candidate 1 matches the target
    logits = torch.stack([torch.randn(size, size), good[0, 0, 0], -good[0, 0, 0]]).view(
        1, 1, 1, 1, M, size, size
    )
    logits.requires_grad_(True)
    ious = torch.full((1, 1, 1, 1, M), 0.5, requires_grad=True)
    scores = torch.zeros(1, 1, 1, 1, requires_grad=True)
    valid = torch.ones(1, 1, 1, 1, dtype=torch.bool)

    for supervise_all in (True, False):
        _, comps = SAM2OfficialLoss(supervise_all_iou=supervise_all)(logits, ious, scores, valid, target)
        g_logits, g_ious = torch.autograd.grad(comps["mask"] + comps["dice"] + comps["iou"], [logits, ious])
        per_candidate = g_logits.abs().flatten(0, 4).flatten(1).sum(1)
        assert per_candidate[1] > 0 and per_candidate[0] == 0 and per_candidate[2] == 0
        if supervise_all:
            assert (g_ious != 0).all()
        else:
            assert g_ious[..., 1] != 0 and (g_ious[..., [0, 2]] == 0).all()


@pytest.mark.parametrize("pad", [float("inf"), -1024.0, float("nan")])
def test_padded_objects_and_invalid_steps_contribute_nothing(pad: float):
    case = _case(objects=(2, 3), steps=(1, 3), seed=5, pad=pad)
    total, comps = _ours(case)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in comps.values())
    g_logits, g_ious, g_scores = torch.autograd.grad(total, [case.logits, case.ious, case.scores])
    invalid = ~case.valid
    assert (g_logits[invalid] == 0).all() and (g_ious[invalid] == 0).all() and (g_scores[invalid] == 0).all()
    assert (g_logits[case.valid] != 0).any()
    # same value as the batch whose padded slots hold ordinary numbers
    clean = _case(objects=(2, 3), steps=(1, 3), seed=5, pad=0.0)
    torch.testing.assert_close(total, _ours(clean)[0])
    # and as clip 0 alone plus clip 1 alone, each normalised by the objects of the whole batch
    parts = [
        SAM2OfficialLoss()(
            clean.logits[b : b + 1],
            clean.ious[b : b + 1],
            clean.scores[b : b + 1],
            clean.valid[b : b + 1],
            clean.targets[b : b + 1],
            num_objects=5,
        )[0]
        for b in range(2)
    ]
    torch.testing.assert_close(total, parts[0] + parts[1])


def test_no_valid_step_gives_attached_zeros():
    case = _case(objects=(2,), steps=(2,), seed=6)
    valid = torch.zeros_like(case.valid)
    total, comps = SAM2OfficialLoss()(case.logits, case.ious, case.scores, valid, case.targets)
    assert total.item() == 0 and all(v.item() == 0 for v in comps.values())
    g_logits, g_scores = torch.autograd.grad(total, [case.logits, case.scores])
    assert (g_logits == 0).all() and (g_scores == 0).all()


def test_ignore_mask_excludes_pixels():
    size = 32
    g = torch.Generator().manual_seed(7)
    targets = _blobs((1, 2, 2), size, g)
    targets[..., 4:12, 4:12] = 1  # every object present outside the void region
    logits = torch.randn(1, 2, 2, 1, M, size, size, generator=g) * 3  # full-res: pixels map one to one
    ious = torch.rand(1, 2, 2, 1, M, generator=g)
    scores = torch.randn(1, 2, 2, 1, generator=g)
    valid = torch.ones(1, 2, 2, 1, dtype=torch.bool)
    ignore = torch.zeros(1, 2, size, size, dtype=torch.bool)
    ignore[..., :, 20:] = True
    loss = SAM2OfficialLoss()

    logits.requires_grad_(True)
    total, comps = loss(logits, ious, scores, valid, targets, ignore_mask=ignore)
    (g_logits,) = torch.autograd.grad(total, [logits])
    void = ignore[:, :, None, None, None].expand_as(g_logits)
    assert (g_logits[void] == 0).all() and (g_logits[~void] != 0).any()

    # anything in the void pixels, prediction or target, leaves every term unchanged
    other_logits = torch.where(void, torch.randn_like(logits) * 5, logits.detach())
    other_targets = torch.where(ignore[:, :, None], 1 - targets, targets)
    _, other = loss(other_logits, ious, scores, valid, other_targets, ignore_mask=ignore)
    for key in KEYS:
        torch.testing.assert_close(other[key], comps[key])
    _, unmasked = loss(logits, ious, scores, valid, targets)
    assert not torch.allclose(unmasked["mask"], comps["mask"])
    assert not torch.allclose(unmasked["iou"], comps["iou"])


def test_low_precision_inputs_compute_in_float32():
    case = _case(objects=(2,), steps=(2,), seed=8, pad=0.0)
    bf = [x.detach().bfloat16() for x in (case.logits, case.ious, case.scores)]
    total, comps = SAM2OfficialLoss()(*bf, case.valid, case.targets.bool())
    ref, ref_comps = SAM2OfficialLoss()(*(x.float() for x in bf), case.valid, case.targets)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in comps.values())
    torch.testing.assert_close(total, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = SAM2OfficialLoss()(*bf, case.valid, case.targets)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)


def test_num_objects_default_explicit_and_distributed(monkeypatch: pytest.MonkeyPatch):
    case = _case(objects=(2, 3), steps=(1, 2), seed=9, pad=0.0)
    total, _ = _ours(case)
    total_10, _ = _ours(case, num_objects=10)
    torch.testing.assert_close(total * 5 / 10, total_10)  # default: the 5 real objects

    # another rank with 7 objects: the normaliser is the mean over ranks, (5 + 7) / 2
    monkeypatch.setattr(losses_sam2.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses_sam2.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(losses_sam2.dist, "all_reduce", lambda t: t.add_(7))
    total_dist, _ = _ours(case)
    torch.testing.assert_close(total * 5 / 6, total_dist)


def test_weights_and_config():
    case = _case(objects=(2,), steps=(2,), seed=10, pad=0.0)
    cfg = Sam2LossConfig(mask_weight=3.0, dice_weight=0.5, iou_weight=2.0, class_weight=0.0, iou_loss="mse")
    loss = SAM2OfficialLoss.from_config(cfg)
    assert loss.iou_loss == "mse" and loss.supervise_all_iou
    total, comps = _ours(case, loss)
    torch.testing.assert_close(total, 3.0 * comps["mask"] + 0.5 * comps["dice"] + 2.0 * comps["iou"])
    assert comps["class"] > 0
    # a term with weight 0 is left out of the total, as in Meta's reduce_loss: a NaN there does not spread
    nan_scores = torch.full_like(case.scores, float("nan"))
    total_nan, comps_nan = loss(case.logits, case.ious, nan_scores, case.valid, case.targets)
    assert comps_nan["class"].isnan() and torch.isfinite(total_nan)
    torch.testing.assert_close(total_nan, total)
    with pytest.raises(ValueError, match="iou_loss"):
        SAM2OfficialLoss(iou_loss="huber")
    with pytest.raises(ValueError, match="step_valid"):
        SAM2OfficialLoss()(case.logits, case.ious, case.scores, case.valid[..., :1], case.targets)


def test_high_res_tensors_are_not_kept_for_backward():
    """Chunks run under checkpointing: what autograd keeps is about the inputs, not the S x S candidates."""
    case = _case(objects=(3,), steps=(2, 2, 2), size=64, low=16, seed=11, pad=0.0)
    loss = SAM2OfficialLoss()
    loss.chunk_pixels = M * 64 * 64  # one row per chunk
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = _ours(case, loss)
    one_copy_high_res = int(case.valid.sum()) * M * 64 * 64 * 4
    inputs = case.logits.nbytes + case.targets.nbytes
    assert sum(saved.values()) <= 2 * inputs < one_copy_high_res
    assert torch.isfinite(torch.autograd.grad(total, [case.base])[0]).all()
