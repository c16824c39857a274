"""The video pass: shapes and padding, gradients (trainable set, BPTT), streaming, and parity with Meta's predictor."""

from __future__ import annotations

import copy
import warnings
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import HIERA_T
from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts, VideoBatch
from sam2train.model import (
    NO_OBJ_LOGIT,
    VideoTracker,
    apply_trainable,
    encode_frames,
    group_parameters,
    run_video,
    set_eval_postprocessing,
)

MEMORY = ("memory_attention", "memory_encoder")
MIXED = [["mask", "box", "points"], ["point"]]  # clip 1 has a padded object
PROMPT_KINDS = {"mask": PROMPT_MASK, "box": PROMPT_BOX, "point": PROMPT_POINT, "points": PROMPT_POINT}


def bias_heads(model: torch.nn.Module, object_score: float = 5.0, best_multimask: int | None = None) -> None:
    """Make random weights usable: objects always present; optionally one multimask output always ranked first."""
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.pred_obj_score_head.layers[-1].bias += object_score
        if best_multimask is not None:  # token 0 is the single-mask output; multimask outputs are tokens 1..3
            decoder.iou_prediction_head.layers[-1].bias[1 + best_multimask] += 10.0


def toy_loss(out, batch: VideoBatch) -> torch.Tensor:
    """Mask BCE on tracked objects plus an object-present term (so the loss has gradient at any object score)."""
    keep = out.tracked[:, None, :].expand_as(batch.valid) & batch.valid
    bce = F.binary_cross_entropy_with_logits(out.mask_logits[keep], batch.masks[keep])
    present = F.binary_cross_entropy_with_logits(
        out.object_score_logits[keep], torch.ones_like(bce).expand(keep.sum())
    )
    return bce + present


def grad_norms(model: torch.nn.Module, group: str) -> list[float | None]:
    params = group_parameters(model)[group]
    return [None if p.grad is None else float(p.grad.norm()) for _, p in params]


def test_shapes_and_padding(fresh_tiny_sam2, make_video_batch):
    model = fresh_tiny_sam2.eval()
    batch = make_video_batch(MIXED, t=2)
    with torch.no_grad():
        out = run_video(model, batch)
    b, t, n, s, h = 2, 2, 3, 128, 32
    assert out.mask_logits.shape == (b, t, n, s, s) and out.low_res_logits.shape == (b, t, n, h, h)
    assert out.multimask_logits.shape == (b, t, n, 3, h, h) and out.iou_pred.shape == (b, t, n, 3)
    assert out.is_multimask.shape == out.object_score_logits.shape == (b, t, n)
    assert out.tracked.tolist() == [[True, True, True], [True, False, False]]
    for pad in (out.mask_logits[1, :, 1:], out.multimask_logits[1, :, 1:], out.object_score_logits[1, :, 1:]):
        assert (pad == NO_OBJ_LOGIT).all()
    assert (out.iou_pred[1, :, 1:] == 0).all()
    # Multimask: one click on the prompted frame and every tracking frame; not for masks, boxes, two clicks.
    assert out.is_multimask[:, 0].tolist() == [[False, False, False], [True, False, False]]
    assert out.is_multimask[:, 1:].eq(out.tracked[:, None]).all()
    up = F.interpolate(out.low_res_logits.flatten(0, 2)[:, None], size=(s, s), mode="bilinear")
    assert torch.equal(out.mask_logits, up.view(b, t, n, s, s))
    # A mask prompt is passed through: the prompted frame shows the prompt, object present (+10).
    shown, given = out.mask_logits[0, 0, 0] > 0, batch.prompts.masks[0, 0].bool()
    assert (shown & given).sum() / (shown | given).sum() > 0.9
    assert out.object_score_logits[0, 0, 0] == 10.0 and (out.iou_pred[0, 0, 0] == 1).all()


def test_mask_prompt_through_the_decoder(fresh_tiny_sam2, make_video_batch):
    model = fresh_tiny_sam2
    bias_heads(model)  # an absent object's logits are a constant, with no gradient to check
    apply_trainable(model, ["sam_mask_decoder"])
    batch = make_video_batch([["mask", "box"]], t=1)
    out = run_video(model, batch, mask_prompt_passthrough=False)
    assert out.is_multimask[0, 0].tolist() == [True, False]  # no clicks: multimask, as SAM 2 decides
    assert out.object_score_logits[0, 0, 0] != 10.0
    out.mask_logits[0, 0, 0].mean().backward()
    assert any(grad_norms(model, "sam_mask_decoder"))


def test_batched_objects_match_objects_alone(fresh_tiny_sam2, make_video_batch):
    """Flattening objects of several clips on one axis, grouped by prompt shape, changes nothing per object."""
    model = fresh_tiny_sam2.eval()
    batch = make_video_batch(MIXED, t=2)
    with torch.no_grad():
        out = run_video(model, batch)
        for bi, ni in out.tracked.nonzero().tolist():
            alone = _select_object(batch, bi, ni)
            single = run_video(model, alone)
            torch.testing.assert_close(
                single.low_res_logits[0, :, 0], out.low_res_logits[bi, :, ni], atol=1e-5, rtol=0
            )
            assert torch.equal(single.is_multimask[0, :, 0], out.is_multimask[bi, :, ni])


def test_chunked_encoding_matches_the_whole_clip(fresh_tiny_sam2, make_video_batch):
    """Validation and predict encode a few frames at a time; the result is the same as one encoder call."""
    model = fresh_tiny_sam2.eval()
    batch = make_video_batch(MIXED, t=5)
    with torch.no_grad():
        whole = run_video(model, batch)
        for chunk in (1, 2):
            parts = run_video(model, batch, chunk=chunk)
            torch.testing.assert_close(parts.mask_logits, whole.mask_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                parts.object_score_logits, whole.object_score_logits, atol=1e-5, rtol=0
            )


def _select_object(batch: VideoBatch, b: int, n: int) -> VideoBatch:
    def pick(x: torch.Tensor, obj_dim: int | None) -> torch.Tensor:
        x = x[b : b + 1]
        return x if obj_dim is None else x.narrow(obj_dim, n, 1)

    prompts = Prompts(**{f.name: pick(getattr(batch.prompts, f.name), 1) for f in fields(Prompts)})
    return VideoBatch(
        images=pick(batch.images, None), masks=pick(batch.masks, 2), valid=pick(batch.valid, 2),
        ignore=pick(batch.ignore, None), prompts=prompts, video_names=[batch.video_names[b]],
        frame_indices=pick(batch.frame_indices, None), object_ids=pick(batch.object_ids, 1),
        orig_sizes=pick(batch.orig_sizes, None), num_video_frames=pick(batch.num_video_frames, None),
    )  # fmt: skip


def test_one_step_changes_only_trainable_groups(fresh_tiny_sam2, make_video_batch):
    model = fresh_tiny_sam2
    apply_trainable(model, list(MEMORY))
    batch = make_video_batch([["mask", "point"]], t=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    out = run_video(model, batch)
    toy_loss(out, batch).backward()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0
    )
    optimizer.step()
    for group, params in group_parameters(model).items():
        changed = [not torch.equal(p, before[name]) for name, p in params]
        if group in MEMORY:
            assert any(changed), f"{group} did not change"
            assert any(g for g in grad_norms(model, group)), f"{group} got no gradient"
        else:
            assert not any(changed), f"{group} changed although frozen"
            assert all(p.grad is None for _, p in params)


def test_memory_encoder_learns_only_through_time(fresh_tiny_sam2, make_video_batch):
    """BPTT: the memory encoder's output only reaches later frames, so only undetached memory gives it a gradient."""
    model = fresh_tiny_sam2
    apply_trainable(model, list(MEMORY))
    batch = make_video_batch([["mask", "point"]], t=2)
    grads = {}
    for bptt in (False, True):
        model.zero_grad(set_to_none=True)
        out = run_video(model, batch, bptt=bptt)
        # The prompted frame does not depend on the memory modules: its outputs give them no gradient.
        first = out.mask_logits[:, 0].sum() + out.object_score_logits[:, 0].sum()
        params = [p for p in model.parameters() if p.requires_grad]
        assert all(
            g is None or not g.any()
            for g in torch.autograd.grad(first, params, retain_graph=True, allow_unused=True)
        )
        toy_loss(out, batch).backward()
        grads[bptt] = (grad_norms(model, "memory_encoder"), grad_norms(model, "memory_attention"))
    assert all(g is None or g == 0 for g in grads[False][0])
    assert any(grads[True][0]) and any(grads[False][1]) and any(grads[True][1])


def test_frozen_image_encoder_runs_without_graph(fresh_tiny_sam2):
    model = fresh_tiny_sam2
    images = torch.randn(1, 3, 128, 128)
    apply_trainable(model, ["sam_mask_decoder"])
    frames = encode_frames(model, images)
    assert not frames.feats[-1].requires_grad  # trunk + neck under no_grad
    assert frames.feats[0].requires_grad and frames.feats[1].requires_grad  # the decoder's conv_s0 / conv_s1
    apply_trainable(model, ["image_encoder"])
    assert encode_frames(model, images).feats[-1].requires_grad


def test_trains_after_an_inference_mode_pass(fresh_tiny_sam2, make_video_batch):
    """RoPE caches freqs_cis on first use; made under inference_mode it must not break a later backward."""
    model = fresh_tiny_sam2
    for module in model.modules():
        if hasattr(module, "freqs_cis"):
            module.freqs_cis = module.compute_cis(end_x=64, end_y=64)  # as built: recomputed on the next pass
    batch = make_video_batch([["mask"]], t=2)
    with torch.inference_mode():
        run_video(model.eval(), batch)
    assert any(m.freqs_cis.is_inference() for m in model.modules() if hasattr(m, "freqs_cis"))
    out = run_video(model.train(), batch)
    toy_loss(out, batch).backward()
    assert any(grad_norms(model, "memory_attention"))


def test_single_frame_clip(fresh_tiny_sam2, make_video_batch):
    batch = make_video_batch([["point", "box"]], t=1, num_video_frames=1)
    out = run_video(fresh_tiny_sam2, batch)
    assert out.mask_logits.shape == (1, 1, 2, 128, 128) and torch.isfinite(out.object_score_logits).all()


def test_tracking_keeps_the_best_predicted_iou(fresh_tiny_sam2, make_video_batch):
    model = fresh_tiny_sam2.eval()
    bias_heads(model, best_multimask=2)
    batch = make_video_batch([["mask", "box"]], t=3)
    with torch.no_grad():
        out = run_video(model, batch)
    tracking = out.multimask_logits[:, 1:]
    assert (out.iou_pred[:, 1:].argmax(-1) == 2).all()
    assert torch.equal(out.low_res_logits[:, 1:], tracking[:, :, :, 2])
    assert not torch.equal(out.low_res_logits[:, 1:], tracking[:, :, :, 0])


def test_streaming_matches_the_clip_pass_with_bounded_memory(fresh_tiny_sam2, make_video_batch, monkeypatch):
    model = fresh_tiny_sam2.eval()
    t = 10
    batch = make_video_batch([["mask", "points"]], t=t, num_video_frames=40)
    prompts = Prompts(**{f.name: getattr(batch.prompts, f.name)[0] for f in fields(Prompts)})
    with torch.no_grad():
        tracker = VideoTracker(model, num_frames=40)
        outs = [tracker.prompt(0, encode_frames(model, batch.images[0, :1]), prompts)]
        for i in range(1, t):
            outs.append(tracker.step(i, encode_frames(model, batch.images[0, i : i + 1])))
        stored = tracker.memory["non_cond_frame_outputs"]
        assert [i for i, e in stored.items() if e["maskmem_features"] is not None] == list(range(t - 7, t))
        assert sorted(stored) == list(range(1, t))  # pointers: 15 frames back are still used
        monkeypatch.setattr(VideoTracker, "_forget", lambda self, frame_idx: None)
        unbounded = run_video(model, batch)
    streamed = torch.stack([o.low_res_logits for o in outs])
    torch.testing.assert_close(streamed, unbounded.low_res_logits[0], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------- parity with Meta


PARITY_SIZE, PARITY_FRAMES, SEQUENCE = 256, 4, "blackswan"
MEAN, STD = (
    torch.tensor([0.485, 0.456, 0.406])[:, None, None],
    torch.tensor([0.229, 0.224, 0.225])[:, None, None],
)


@pytest.fixture(scope="module")
def davis_clip(shared_data):
    """The first frames of a DAVIS-2016 sequence prepared as the predictor prepares them, and its first mask."""
    root = shared_data / "davis2016"
    frames_dir = root / "JPEGImages" / "480p" / SEQUENCE
    if not frames_dir.is_dir():
        pytest.skip(f"{frames_dir} not found")
    paths = sorted(frames_dir.glob("*.jpg"))
    images = []
    for path in paths[:PARITY_FRAMES]:
        image = Image.open(path).convert("RGB")
        width, height = image.size
        pixels = np.array(image.resize((PARITY_SIZE, PARITY_SIZE)))  # Pillow's default: bicubic
        images.append((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0 - MEAN) / STD)
    gt = torch.from_numpy(np.array(Image.open(root / "Annotations" / "480p" / SEQUENCE / "00000.png")) > 0)
    return {
        "dir": str(frames_dir),
        "images": torch.stack(images),
        "gt": gt,
        "size": (height, width),
        "length": len(paths),
    }


def _predictor_like(model: torch.nn.Module, postprocessing: bool) -> torch.nn.Module:
    """Meta's SAM2VideoPredictor with `model`'s weights, built as its documentation says."""
    from sam2.build_sam import build_sam2_video_predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = build_sam2_video_predictor(
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            None,
            device="cpu",
            hydra_overrides_extra=[f"++model.image_size={PARITY_SIZE}"],
            apply_postprocessing=postprocessing,
        )
    predictor.load_state_dict(model.state_dict())
    return predictor


@pytest.fixture(scope="module")
def parity_models(sam2_factory):
    """Our random hiera-t at 256 px (objects always present) and Meta's predictor with the same weights."""
    model = sam2_factory(HIERA_T, image_size=PARITY_SIZE)
    bias_heads(model)
    return model.eval(), _predictor_like(model, postprocessing=False)


def _prompt_inputs(clip) -> dict:
    """Pixel prompts in video coordinates from the first mask: tight box, a positive click, a negative click."""
    gt = clip["gt"]
    ys, xs = gt.nonzero(as_tuple=True)
    box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    inside = torch.stack([xs[len(xs) // 2], ys[len(ys) // 2]]).float()
    outside = torch.flip((~gt).nonzero()[0], [0]).float()
    return {"box": box, "points": torch.stack([inside, outside]), "labels": torch.tensor([1, 0])}


def _parity_batch(clip, kinds: list[str]) -> VideoBatch:
    """A VideoBatch for the clip with one object per prompt kind, prompts mapped to the model input like the
    predictor maps them (mask: bilinear + antialias, >= 0.5; coordinates: * S / (W, H))."""
    height, width = clip["size"]
    s, t, n = PARITY_SIZE, PARITY_FRAMES, len(kinds)
    gt = clip["gt"].float()[None, None]
    mask = F.interpolate(gt, size=(s, s), mode="bilinear", antialias=True)[0, 0] >= 0.5
    raw, scale = _prompt_inputs(clip), torch.tensor([width, height])
    coords, labels = raw["points"] / scale * s, raw["labels"]
    prompts = Prompts(
        kind=torch.tensor([PROMPT_KINDS[kind] for kind in kinds]),
        point_coords=coords.expand(n, 2, 2).clone(),
        point_labels=torch.stack([labels if kind == "points" else torch.tensor([1, -1]) for kind in kinds]),
        boxes=(raw["box"].view(2, 2) / scale * s).view(4).expand(n, 4),
        masks=mask.float().expand(n, s, s),
    )
    return VideoBatch(
        images=clip["images"][None], masks=torch.zeros(1, t, n, s, s), valid=torch.ones(1, t, n, dtype=torch.bool),
        ignore=torch.zeros(1, t, s, s, dtype=torch.bool), prompts=Prompts(**{f.name: getattr(prompts, f.name)[None]
        for f in fields(Prompts)}), video_names=[SEQUENCE], frame_indices=torch.arange(t)[None],
        object_ids=torch.arange(1, n + 1)[None], orig_sizes=torch.tensor([list(clip["size"])]),
        num_video_frames=torch.tensor([clip["length"]]),
    )  # fmt: skip


def _run_predictor(predictor, clip, kinds: list[str]) -> list[torch.Tensor]:
    """Meta's SAM2VideoPredictor on the clip: per frame, video-size logits [N, 1, H, W]."""
    raw = _prompt_inputs(clip)
    state = predictor.init_state(clip["dir"])
    for obj, kind in enumerate(kinds):
        if kind == "mask":
            predictor.add_new_mask(state, 0, obj, clip["gt"])
        elif kind == "box":
            predictor.add_new_points_or_box(state, 0, obj, box=raw["box"])
        else:
            k = 1 if kind == "point" else 2
            predictor.add_new_points_or_box(state, 0, obj, points=raw["points"][:k], labels=raw["labels"][:k])
    frames = predictor.propagate_in_video(state, max_frame_num_to_track=PARITY_FRAMES - 1)
    return [logits for _, _, logits in frames]


def _check_parity(model, predictor, clip, kinds: list[str]) -> None:
    with torch.no_grad():
        ours = run_video(model, _parity_batch(clip, kinds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling without the compiled sam2._C extension
        theirs = _run_predictor(predictor, clip, kinds)
    assert len(theirs) == PARITY_FRAMES
    for t, reference in enumerate(theirs):
        logits = F.interpolate(ours.low_res_logits[0, t][:, None], size=clip["size"], mode="bilinear")
        pred, ref = logits > 0, reference > 0
        iou = (pred & ref).flatten(1).sum(1) / (pred | ref).flatten(1).sum(1)
        assert (iou >= 0.99).all(), f"frame {t}: IoU {iou.tolist()}"
        # Tight: a wrong num_frames (1.6e-5), bf16-less memory (1e-5) or exact-mask memory (4e-4) fail here.
        assert (logits - reference).abs().max() <= 5e-6, f"frame {t}"
        foreground = ref.flatten(1).float().mean(1)
        assert ((foreground > 0.01) & (foreground < 0.99)).all(), "trivial masks make parity meaningless"


@pytest.mark.slow
@pytest.mark.parametrize("kinds", [["mask"], ["box"], ["points"], ["mask", "box", "point", "points"]])
def test_parity_with_meta_predictor(parity_models, davis_clip, kinds):
    _check_parity(*parity_models, davis_clip, kinds)


@pytest.mark.slow
def test_parity_when_another_multimask_ranks_first(parity_models, davis_clip):
    """With random weights mask 0 always ranks first; bias the IoU head so the choice is actually tested."""
    model, predictor = (copy.deepcopy(m) for m in parity_models)
    for m in (model, predictor):
        bias_heads(m, object_score=0.0, best_multimask=1)
    _check_parity(model, predictor, davis_clip, ["mask", "point"])


@pytest.mark.slow
def test_parity_with_the_builders_default_postprocessing(parity_models, davis_clip):
    """`set_eval_postprocessing` reproduces apply_postprocessing=True (dynamic multimask for the box, binarised
    prompted memory for the click); hole filling needs sam2._C, absent here as on most machines."""
    model = copy.deepcopy(parity_models[0])
    set_eval_postprocessing(model)
    _check_parity(model, _predictor_like(model, postprocessing=True), davis_clip, ["box", "point"])
