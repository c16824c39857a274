"""Prompt simulation in the forward pass: correction clicks land in the error region with the right label, extra
conditioning frames are prompted from their ground truth, and objects appearing later are prompted on their first
frame and scored from there."""

from __future__ import annotations

import copy

import torch

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT
from sam2train.config import PromptsConfig
from sam2train.metrics import video_jf
from sam2train.model.corrections import Clicker, prompts_from_ground_truth, sample_click
from sam2train.model.video import NO_OBJ_LOGIT, run_video


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_clicks_land_in_the_error_region_with_its_label() -> None:
    gt = _square(32, 4, 20, 4, 20)
    g = torch.Generator().manual_seed(0)
    # prediction misses the bottom half of the object: only false negatives -> positive clicks inside them
    missed = gt & ~_square(32, 12, 32, 0, 32)
    for _ in range(50):
        (x, y), label = sample_click(gt, missed, g)
        assert label == 1 and gt[int(y), int(x)] and not missed[int(y), int(x)]
    # prediction spills to the right: only false positives -> negative clicks there
    spill = gt | _square(32, 4, 20, 20, 30)
    for _ in range(50):
        (x, y), label = sample_click(gt, spill, g)
        assert label == 0 and spill[int(y), int(x)] and not gt[int(y), int(x)]
    # both kinds of error: both labels occur, each on its own kind of pixel
    both = (gt & ~_square(32, 12, 32, 0, 32)) | _square(32, 4, 20, 20, 30)
    labels = set()
    for _ in range(200):
        (x, y), label = sample_click(gt, both, g)
        labels.add(label)
        assert bool(gt[int(y), int(x)]) == bool(label) and bool(both[int(y), int(x)]) != bool(label)
    assert labels == {0, 1}
    # a perfect prediction: a negative click in the background; no prediction: a positive click inside
    (x, y), label = sample_click(gt, gt, g)
    assert label == 0 and not gt[int(y), int(x)]
    (x, y), label = sample_click(gt, None, g)
    assert label == 1 and gt[int(y), int(x)]


def test_clicker_is_reproducible_per_clip_and_can_sample_from_ground_truth() -> None:
    gt = torch.stack([_square(32, 4, 20, 4, 20)] * 2)
    logits = torch.full((2, 1, 32, 32), -5.0)
    logits[:, :, 4:20, 4:20] = 5.0  # perfect: error-region clicks are negative, ground-truth clicks positive

    def clicks(prob: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gens = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
        return Clicker(1, prob, gens).next_clicks(gt, logits)

    a, b = clicks(0.0, 3), clicks(0.0, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (2, 1, 2) and a[1].dtype == torch.int32
    assert (a[1] == 0).all()
    assert (clicks(1.0, 3)[1] == 1).all()


def test_extra_conditioning_prompts_follow_each_objects_kind() -> None:
    gt = torch.stack([_square(32, 4, 20, 4, 20), _square(32, 2, 10, 2, 10), _square(32, 8, 16, 8, 16)])
    gt_absent = gt.clone()
    gt_absent[1] = False
    kinds = torch.tensor([PROMPT_MASK, PROMPT_BOX, PROMPT_POINT])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    p = prompts_from_ground_truth(kinds, gt, gens, box_noise=0.0)
    assert p.kind.tolist() == [PROMPT_MASK, PROMPT_BOX, PROMPT_POINT]
    assert torch.equal(p.masks[0].bool(), gt[0])
    assert p.boxes[1].tolist() == [2.0, 2.0, 9.0, 9.0]
    x, y = p.point_coords[2, 0].long().tolist()
    assert p.point_labels[2, 0] == 1 and gt[2, y, x]
    # a box-prompted object absent from that frame gets one negative click in the background
    p = prompts_from_ground_truth(kinds, gt_absent, gens, box_noise=0.0)
    assert p.kind[1] == PROMPT_POINT and p.point_labels[1, 0] == 0
    x, y = p.point_coords[1, 0].long().tolist()
    assert not gt[1, y, x]


def test_object_appearing_later_is_prompted_on_its_first_frame(tiny_sam2, make_video_batch) -> None:
    model = copy.deepcopy(tiny_sam2).eval()
    batch = make_video_batch(kinds=[["mask", "mask"]], t=4, seed=5)
    batch.masks[0, :2, 1] = 0.0  # object 2 appears on frame 2
    batch.prompts.masks[0, 1] = batch.masks[0, 2, 1]
    batch.prompt_frames = torch.tensor([[0, 2]])
    with torch.no_grad():
        out = run_video(model, batch, chunk=2)
        alone = run_video(model, _first_object(batch), chunk=2)
    assert out.active[0, :, 0].all() and out.active[0, :, 1].tolist() == [False, False, True, True]
    assert (out.low_res_logits[0, :2, 1] == NO_OBJ_LOGIT).all()
    # the prompted frame outputs the prompt mask (passthrough), and object 1 is tracked as if alone
    shown, prompt = out.mask_logits[0, 2, 1] > 0, batch.masks[0, 2, 1] > 0.5
    assert (shown & prompt).sum() / (shown | prompt).sum() > 0.9
    torch.testing.assert_close(out.low_res_logits[0, :, 0], alone.low_res_logits[0, :, 0])
    # J&F counts the later object from the frame after its prompt frame: a wrong frame 2 changes nothing
    pred = batch.masks > 0.5
    gt = batch.masks > 0.5
    full = video_jf(pred, gt, batch.valid & out.active)
    spoiled = pred.clone()
    spoiled[0, 2, 1] = ~spoiled[0, 2, 1]
    assert video_jf(spoiled, gt, batch.valid & out.active) == full
    spoiled[0, 3, 1] = False
    assert video_jf(spoiled, gt, batch.valid & out.active)[0] < full[0]


def test_training_with_corrections_supervises_every_click(tiny_sam2, make_video_batch) -> None:
    model = copy.deepcopy(tiny_sam2).train()
    batch = make_video_batch(kinds=[["point", "mask"]], t=3, seed=2)
    batch.cond_frames = torch.tensor([[2]])
    batch.correct_frames = torch.tensor([[0, 1]])
    batch.seeds = torch.tensor([7])
    cfg = PromptsConfig(num_correction_points=3, frames_to_correct=2, max_cond_frames=2)
    out = run_video(model, batch, prompts_cfg=cfg)
    steps = out.step_valid[0].sum(dim=-1)  # [T, N]
    # the point-prompted object: 1 + 3 steps on the corrected frames 0 and 1; the mask one is never corrected
    assert steps[:, 0].tolist() == [4, 4, 1] and steps[:, 1].tolist() == [1, 1, 1]
    assert out.step_multimask_logits.shape[3] == 4
    # the kept result of a corrected frame is its last step
    torch.testing.assert_close(out.iou_pred[0, 0, 0], out.step_iou_pred[0, 0, 0, 3])


def _first_object(batch):
    from dataclasses import fields, replace

    from sam2train.batch import Prompts

    prompts = Prompts(**{f.name: getattr(batch.prompts, f.name)[:, :1] for f in fields(Prompts)})
    return replace(
        batch,
        masks=batch.masks[:, :, :1],
        valid=batch.valid[:, :, :1],
        prompts=prompts,
        object_ids=batch.object_ids[:, :1],
        prompt_frames=None,
    )
