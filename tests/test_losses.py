"""SAM2TrainingLoss against plain-Python formulas on tiny tensors; both losses behind one interface, with the
config's defaults."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sam2train.config import LossConfig, Sam2LossConfig, load_config
from sam2train.losses import LossOutput, SAM2OfficialLoss, SAM2TrainingLoss, VideoLoss, build_loss

KEYS = {"bce", "dice", "iou", "temporal"}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _reference(x, y, valid=None, ignore=None, s=1e-6):
    """The loss definition written out with loops over numpy arrays: x, y [B,T,N,H,W], valid [B,T,N],
    ignore [B,T,H,W]. Returns the four unweighted components as floats."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    b_, t_, n_, h_, w_ = x.shape
    valid = np.ones((b_, t_, n_), bool) if valid is None else np.asarray(valid)
    keep = np.ones((b_, t_, h_, w_), bool) if ignore is None else ~np.asarray(ignore)
    sums = {"bce": 0.0, "dice": 0.0, "iou": 0.0}
    count = 0
    temporal, pairs = 0.0, 0
    for b in range(b_):
        for t in range(t_):
            for n in range(n_):
                px = [(i, j) for i in range(h_) for j in range(w_) if keep[b, t, i, j]]
                if valid[b, t, n]:
                    count += 1
                    bce = [
                        max(x[b, t, n, i, j], 0)
                        - x[b, t, n, i, j] * y[b, t, n, i, j]
                        + math.log1p(math.exp(-abs(x[b, t, n, i, j])))
                        for i, j in px
                    ]
                    sums["bce"] += sum(bce) / len(px) if px else 0.0
                    p = {(i, j): _sigmoid(x[b, t, n, i, j]) for i, j in px}
                    inter = sum(p[k] * y[b, t, n][k] for k in px)
                    sp, sy = sum(p.values()), sum(y[b, t, n][k] for k in px)
                    sums["dice"] += 1 - (2 * inter + s) / (sp + sy + s)
                    sums["iou"] += 1 - (inter + s) / (sp + sy - inter + s)
                if t >= 1 and valid[b, t, n] and valid[b, t - 1, n]:
                    pairs += 1
                    both = [(i, j) for i, j in px if keep[b, t - 1, i, j]]
                    d = [
                        (
                            (_sigmoid(x[b, t, n, i, j]) - _sigmoid(x[b, t - 1, n, i, j]))
                            - (y[b, t, n, i, j] - y[b, t - 1, n, i, j])
                        )
                        ** 2
                        for i, j in both
                    ]
                    temporal += sum(d) / len(d) if d else 0.0
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["temporal"] = temporal / max(pairs, 1)
    return out


def _random_case(b=2, t=3, n=2, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, n, h, w, generator=g) * 3
    y = (torch.rand(b, t, n, h, w, generator=g) > 0.5).float()
    return x, y


def test_hand_computed_single_pixel_pair():
    # one object, two frames of 1x2 pixels; every number below by hand
    x = torch.tensor([0.0, 2.0, -1.0, 1.0]).reshape(1, 2, 1, 1, 2)
    y = torch.tensor([0.0, 1.0, 1.0, 1.0]).reshape(1, 2, 1, 1, 2)
    s = 1e-6
    p = [0.5, _sigmoid(2.0), _sigmoid(-1.0), _sigmoid(1.0)]
    bce = [math.log(2), math.log1p(math.exp(-2)), math.log1p(math.exp(1)), math.log1p(math.exp(-1))]
    exp_bce = ((bce[0] + bce[1]) / 2 + (bce[2] + bce[3]) / 2) / 2
    d0 = 1 - (2 * p[1] + s) / (p[0] + p[1] + 1 + s)
    d1 = 1 - (2 * (p[2] + p[3]) + s) / (p[2] + p[3] + 2 + s)
    i0 = 1 - (p[1] + s) / (p[0] + p[1] + 1 - p[1] + s)
    i1 = 1 - (p[2] + p[3] + s) / (p[2] + p[3] + 2 - (p[2] + p[3]) + s)
    temporal = (((p[2] - p[0]) - 1) ** 2 + ((p[3] - p[1]) - 0) ** 2) / 2
    total, comp = SAM2TrainingLoss()(x, y, return_components=True)
    assert set(comp) == KEYS
    assert comp["bce"].item() == pytest.approx(exp_bce, rel=1e-6)
    assert comp["dice"].item() == pytest.approx((d0 + d1) / 2, rel=1e-6)
    assert comp["iou"].item() == pytest.approx((i0 + i1) / 2, rel=1e-6)
    assert comp["temporal"].item() == pytest.approx(temporal, rel=1e-6)
    expected = exp_bce + (d0 + d1) / 2 + 0.5 * (i0 + i1) / 2 + 0.1 * temporal
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert total.dim() == 0 and all(v.dim() == 0 for v in comp.values())


def test_matches_reference_with_valid_and_void():
    x, y = _random_case()
    g = torch.Generator().manual_seed(1)
    valid = torch.rand(2, 3, 2, generator=g) > 0.3
    ignore = torch.rand(2, 3, 4, 5, generator=g) > 0.7
    ignore[1, 2] = True  # one frame entirely void: contributes 0 to bce/dice/iou and its pairs
    _, comp = SAM2TrainingLoss()(x, y, valid, return_components=True, ignore_mask=ignore)
    ref = _reference(x.numpy(), y.numpy(), valid.numpy(), ignore.numpy())
    for k in KEYS:
        assert comp[k].item() == pytest.approx(ref[k], rel=1e-5, abs=1e-7), k


def test_invalid_and_void_excluded_exactly():
    x, y = _random_case(b=1, t=2, n=2)
    loss = SAM2TrainingLoss()
    valid = torch.tensor([[[True, False], [True, False]]])
    # an invalid object changes nothing, whatever its logits (even inf / nan)
    x_bad = x.clone()
    x_bad[:, :, 1] = float("nan")
    a = loss(x_bad, y, valid)
    b = loss(x[:, :, :1], y[:, :, :1])
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-6)
    # a void column equals cropping it away
    ignore = torch.zeros(1, 2, 4, 5, dtype=torch.bool)
    ignore[..., -1] = True
    c = loss(x, y, ignore_mask=ignore)
    d = loss(x[..., :-1], y[..., :-1])
    assert c.item() == pytest.approx(d.item(), rel=1e-6)


def test_single_frame_has_zero_temporal():
    x, y = _random_case(t=1)
    _, comp = SAM2TrainingLoss()(x, y, return_components=True)
    assert comp["temporal"].item() == 0.0


def test_all_invalid_gives_finite_zeros_and_zero_gradient():
    x, y = _random_case()
    x.requires_grad_(True)
    total, comp = SAM2TrainingLoss()(x, y, torch.zeros(2, 3, 2, dtype=torch.bool), return_components=True)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in comp.values())
    total.backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_all_void_gives_zero_terms():
    x, y = _random_case()
    ignore = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    x.requires_grad_(True)
    total, comp = SAM2TrainingLoss()(x, y, return_components=True, ignore_mask=ignore)
    assert all(v.item() == 0.0 for v in comp.values())
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_weights_are_applied():
    x, y = _random_case()
    w = {"bce_weight": 2.0, "dice_weight": 0.3, "iou_weight": 1.7, "temporal_weight": 5.0}
    total, comp = SAM2TrainingLoss(**w)(x, y, return_components=True)
    expected = sum(w[f"{k}_weight"] * comp[k].item() for k in KEYS)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    only_dice = SAM2TrainingLoss(0, 1, 0, 0)(x, y)
    assert only_dice.item() == pytest.approx(comp["dice"].item(), rel=1e-6)


def test_invariant_to_clip_length_and_object_count():
    x, y = _random_case(b=2, t=2, n=2)
    loss = SAM2TrainingLoss()
    _, base = loss(x, y, return_components=True)
    # T = 2 clip repeated along T: the new pair (t1 -> t0) has the same squared change as (t0 -> t1)
    _, longer = loss(torch.cat([x, x], 1), torch.cat([y, y], 1), return_components=True)
    _, wider = loss(torch.cat([x, x], 2), torch.cat([y, y], 2), return_components=True)
    for k in KEYS:
        assert longer[k].item() == pytest.approx(base[k].item(), rel=1e-6), k
        assert wider[k].item() == pytest.approx(base[k].item(), rel=1e-6), k


def test_low_precision_inputs_compute_in_float32():
    x, y = _random_case()
    ref = SAM2TrainingLoss()(x.bfloat16().float(), y)
    for dtype in (torch.bfloat16, torch.float16):
        out = SAM2TrainingLoss()(x.to(dtype), y.to(dtype))
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(ref.item(), rel=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SAM2TrainingLoss()(x, y)
    assert out.dtype == torch.float32


def test_gradient_finite_for_extreme_logits():
    x, y = _random_case()
    x = (x.sign() * 1e4).requires_grad_(True)
    total = SAM2TrainingLoss()(x, y, ignore_mask=torch.rand(2, 3, 4, 5) > 0.5)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(x.grad).all()


def test_bool_targets_and_default_valid():
    x, y = _random_case()
    loss = SAM2TrainingLoss()
    assert loss(x, y.bool()).item() == pytest.approx(loss(x, y, torch.ones(2, 3, 2, dtype=torch.bool)).item())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_masks": torch.zeros(2, 3, 2, 4, 4)},
        {"valid_masks": torch.ones(2, 3, dtype=torch.bool)},
        {"ignore_mask": torch.zeros(2, 3, 2, 4, 5, dtype=torch.bool)},
    ],
)
def test_shape_errors(kwargs):
    x, y = _random_case()
    args = {"pred_masks": x, "target_masks": y, **kwargs}
    with pytest.raises(ValueError, match="must be|differs"):
        SAM2TrainingLoss()(**args)


def test_object_score_term_is_bce_against_presence_and_off_with_weight_0() -> None:
    logits = torch.zeros(1, 2, 2, 4, 4)
    target = torch.zeros(1, 2, 2, 4, 4)
    target[0, 0, 0, 1, 1] = 1.0  # object 0 present in frame 0 only; object 1 never present
    valid = torch.tensor([[[True, True], [True, False]]])
    scores = torch.tensor([[[2.0, -1.0], [0.5, 9.0]]], requires_grad=True)
    plain = SAM2TrainingLoss(object_score_weight=0.0)
    base = plain(logits, target, valid)
    assert torch.equal(plain(logits, target, valid, object_score_logits=scores), base)  # weight 0: spec loss
    loss = SAM2TrainingLoss(object_score_weight=2.0)
    total, parts = loss(logits, target, valid, return_components=True, object_score_logits=scores)
    expected = (
        torch.nn.functional.softplus(torch.tensor(-2.0))  # present, logit 2
        + torch.nn.functional.softplus(torch.tensor(-1.0))  # absent, logit -1
        + torch.nn.functional.softplus(torch.tensor(0.5))  # absent, logit 0.5 (frame 1, object 0)
    ) / 3  # the padded entry (logit 9) is left out
    torch.testing.assert_close(parts["object_score"], expected)
    torch.testing.assert_close(total, base + 2.0 * expected)
    total.backward()
    assert scores.grad[0, 1, 1] == 0 and scores.grad[0, 0, 0] < 0 < scores.grad[0, 0, 1]


@pytest.mark.parametrize(
    ("loss", "config"), [(SAM2TrainingLoss, LossConfig), (SAM2OfficialLoss, Sam2LossConfig)]
)
def test_every_loss_default_equals_the_config_default(loss: type[VideoLoss], config: type) -> None:
    params = dict(inspect.signature(loss.__init__).parameters)
    params.pop("self")
    keys = {f.name for f in fields(config)} - {"type", "sam2"}  # the loss choice and Meta's own section
    assert set(params) == keys
    defaults = config()
    for name, param in params.items():
        assert param.default == getattr(defaults, name), name


def _fake_pass(b: int = 2, t: int = 3, n: int = 2, size: int = 8, k: int = 2, m: int = 3):
    """A video pass and a batch with just the fields the losses read (random logits, blob targets)."""
    g = torch.Generator().manual_seed(4)
    masks = (torch.rand(b, t, n, size, size, generator=g) > 0.6).float()
    valid = torch.ones(b, t, n, dtype=torch.bool)
    valid[1, :, 1] = False
    active = torch.ones(b, t, n, dtype=torch.bool)
    active[0, 0, 0] = False
    out = SimpleNamespace(
        mask_logits=torch.randn(b, t, n, size, size, generator=g),
        object_score_logits=torch.randn(b, t, n, generator=g),
        step_multimask_logits=torch.randn(b, t, n, k, m, size // 4, size // 4, generator=g),
        step_iou_pred=torch.rand(b, t, n, k, m, generator=g),
        step_object_score_logits=torch.randn(b, t, n, k, generator=g),
        step_valid=active[..., None].expand(b, t, n, k).clone(),
        active=active,
    )
    batch = SimpleNamespace(masks=masks, valid=valid, ignore=torch.rand(b, t, size, size, generator=g) > 0.9)
    return out, batch


@pytest.mark.parametrize("kind", ["sam2train", "sam2"])
@pytest.mark.parametrize("object_score_weight", [0.0, 1.0])
def test_build_loss_and_one_video_loss_interface(kind: str, object_score_weight: float) -> None:
    cfg = load_config(None, [f"loss.type={kind}", f"loss.object_score_weight={object_score_weight}"])
    loss = build_loss(cfg)
    assert type(loss) is {"sam2train": SAM2TrainingLoss, "sam2": SAM2OfficialLoss}[kind]
    assert isinstance(loss, VideoLoss)
    out, batch = _fake_pass()
    result = loss.video_loss(out, batch)
    assert isinstance(result, LossOutput) and result.total.shape == ()
    assert tuple(result.terms) == loss.term_names
    if kind == "sam2":
        total, terms = loss(
            out.step_multimask_logits,
            out.step_iou_pred,
            out.step_object_score_logits,
            out.step_valid & batch.valid[..., None],
            batch.masks,
            ignore_mask=batch.ignore,
        )
    else:
        assert ("object_score" in loss.term_names) == (object_score_weight > 0)
        scores = out.object_score_logits if object_score_weight > 0 else None
        total, terms = loss(
            out.mask_logits,
            batch.masks,
            batch.valid & out.active,
            return_components=True,
            ignore_mask=batch.ignore,
            object_score_logits=scores,
        )
    torch.testing.assert_close(result.total, total, rtol=0, atol=0)
    assert result.terms.keys() == terms.keys()


def test_spec_signature_is_kept() -> None:
    """The spec's constructor and call: positional weights, `forward(pred, target, valid, return_components)`."""
    loss = SAM2TrainingLoss(bce_weight=1.0, dice_weight=1.0, iou_weight=0.5, temporal_weight=0.1, smooth=1e-6)
    x, y = torch.randn(1, 2, 1, 4, 4), (torch.rand(1, 2, 1, 4, 4) > 0.5).float()
    total = loss(x, y)
    total2, parts = loss(x, y, None, True)
    assert total.shape == () and torch.equal(total, total2) and set(parts) == KEYS
