"""Meta's training recipe, reproduced: our video pass with multi-frame conditioning and correction clicks equals
Meta's `SAM2Train` on the same batch and weights, with the random choices forced to be the same.

Forced: the conditioning frames (0 and 2), the frames to correct (0, 2 and 3), and every click (both sides draw
their clicks through one deterministic function: the first error pixel in raster order). Dropout is off on both
sides. What stays free is all of the tracking logic: processing order, memory of conditioning and corrected
frames, the iterative clicks feeding the previous logits back, multimask decisions, object pointers.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import HIERA_T, no_dropout
from sam2train.batch import PROMPT_POINT, Prompts
from sam2train.config import PromptsConfig
from sam2train.model import corrections
from sam2train.model.video import run_video

pytestmark = pytest.mark.slow  # parity with Meta's code, on the official hiera-t

T, SIZE, CLICKS = 4, 128, 3
COND, CORRECT = [0, 2], [0, 2, 3]


def first_error_pixel(gt: torch.Tensor, pred: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The forced click: the first pixel (raster order) of the error region, else of the background."""
    gt = gt.bool().cpu()
    pred = torch.zeros_like(gt) if pred is None else pred.bool().cpu()
    error = gt ^ pred
    if not bool(error.any()):
        error = ~gt
    y, x = (int(v) for v in torch.nonzero(error)[0])
    return torch.tensor([float(x), float(y)]), int(gt[y, x])


def meta_get_next_point(gt_masks, pred_masks, method):
    """Meta's `get_next_point` ([B, 1, H, W] masks) with the forced click."""
    points, labels = [], []
    for i in range(gt_masks.shape[0]):
        xy, label = first_error_pixel(gt_masks[i, 0], None if pred_masks is None else pred_masks[i, 0])
        points.append(xy)
        labels.append(label)
    dev = gt_masks.device
    return torch.stack(points)[:, None].to(dev), torch.tensor(labels, dtype=torch.int32, device=dev)[:, None]


def build_sam2train(ours: torch.nn.Module) -> torch.nn.Module:
    """SAM2Train with our model's config and weights, the MOSE recipe's correction settings."""
    from hydra.utils import instantiate
    from training.model.sam2 import SAM2Train

    from sam2train.model.build import load_model_config

    cfg = load_model_config(HIERA_T, SIZE)
    cfg._target_ = f"{SAM2Train.__module__}.{SAM2Train.__qualname__}"
    cfg.prob_to_use_pt_input_for_train = 1.0
    cfg.prob_to_use_box_input_for_train = 0.0
    cfg.num_init_cond_frames_for_train = 2
    cfg.rand_init_cond_frames_for_train = False
    cfg.num_frames_to_correct_for_train = 3
    cfg.rand_frames_to_correct_for_train = False
    cfg.add_all_frames_to_correct_as_cond = True
    cfg.num_correction_pt_per_frame = CLICKS
    cfg.prob_to_sample_from_gt_for_train = 0.0
    meta = instantiate(cfg, _recursive_=True)
    meta.load_state_dict(ours.state_dict(), strict=True)
    return no_dropout(meta).train()


def meta_forward(meta: torch.nn.Module, batch) -> list[dict]:
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    _, t, n = batch.shape
    frame = torch.arange(t, dtype=torch.int)[:, None].expand(t, n)
    data = BatchedVideoDatapoint(
        img_batch=batch.images.transpose(0, 1),
        obj_to_frame_idx=torch.stack([frame, torch.zeros_like(frame)], dim=-1),
        masks=batch.masks[0] > 0.5,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(t, n, 3, dtype=torch.long),
            frame_orig_size=torch.full((t, n, 2), SIZE, dtype=torch.long),
        ),
        dict_key="all",
        batch_size=[t],
    )
    backbone_out = meta.prepare_prompt_inputs(meta.forward_image(data.flat_img_batch), data)
    assert backbone_out["use_pt_input"]
    # force the frames (Meta draws the second conditioning frame and the extra corrected frame at random)
    backbone_out["init_cond_frames"] = COND
    backbone_out["frames_not_in_init_cond"] = [f for f in range(t) if f not in COND]
    gt = backbone_out["gt_masks_per_frame"]
    backbone_out["point_inputs_per_frame"] = {}
    for f in COND:
        points, labels = meta_get_next_point(gt[f], None, "uniform")
        backbone_out["point_inputs_per_frame"][f] = {"point_coords": points, "point_labels": labels}
    backbone_out["frames_to_add_correction_pt"] = CORRECT
    return meta.forward_tracking(backbone_out, data), data


@pytest.fixture
def forced_clicks(monkeypatch):
    import training.model.sam2 as meta_sam2

    monkeypatch.setattr(meta_sam2, "get_next_point", meta_get_next_point)
    monkeypatch.setattr(corrections, "sample_click", lambda gt, pred, g: first_error_pixel(gt, pred))


def our_batch(make_video_batch):
    batch = make_video_batch(kinds=[["point", "point"]], t=T, size=SIZE, seed=3)
    n = batch.shape[2]
    coords, labels = zip(*(first_error_pixel(batch.masks[0, 0, i] > 0.5, None) for i in range(n)))
    batch.prompts = Prompts(
        kind=torch.full((1, n), PROMPT_POINT),
        point_coords=torch.stack(coords)[None, :, None],
        point_labels=torch.tensor(labels)[None, :, None],
        boxes=torch.zeros(1, n, 4),
        masks=batch.prompts.masks,
    )
    batch.cond_frames = torch.tensor([[COND[1]]])
    batch.correct_frames = torch.tensor([CORRECT])
    batch.seeds = torch.tensor([0])
    return batch


def test_forward_and_steps_equal_sam2train(hiera_t_sam2, make_video_batch, forced_clicks):
    ours = no_dropout(copy.deepcopy(hiera_t_sam2)).train()
    meta = build_sam2train(ours)
    batch = our_batch(make_video_batch)
    cfg = PromptsConfig(num_correction_points=CLICKS, frames_to_correct=3, max_cond_frames=2)
    out = run_video(ours, batch, prompts_cfg=cfg, memory_from_low_res=False)
    meta_outs, _ = meta_forward(meta, batch)

    worst = 0.0
    for f in range(T):
        steps = meta_outs[f]["multistep_pred_multimasks"]
        expected_steps = 1 + CLICKS if f in CORRECT else 1
        assert len(steps) == expected_steps
        assert out.step_valid[0, f].sum(dim=-1).tolist() == [expected_steps] * 2
        for k, multimasks in enumerate(steps):
            mine = out.step_multimask_logits[0, f, :, k, : multimasks.shape[1]]
            worst = max(worst, float((mine - multimasks).abs().max().detach()))
            ious = meta_outs[f]["multistep_pred_ious"][k]
            torch.testing.assert_close(
                out.step_iou_pred[0, f, :, k, : ious.shape[1]], ious, atol=1e-4, rtol=0
            )
            scores = meta_outs[f]["multistep_object_score_logits"][k]
            torch.testing.assert_close(
                out.step_object_score_logits[0, f, :, k], scores[:, 0], atol=1e-4, rtol=0
            )
        torch.testing.assert_close(
            out.low_res_logits[0, f], meta_outs[f]["pred_masks"][:, 0], atol=1e-4, rtol=0
        )
    assert worst < 1e-4, worst


def test_loss_equals_meta(hiera_t_sam2, make_video_batch, forced_clicks):
    from training.loss_fns import MultiStepMultiMasksAndIous

    from sam2train.losses.official import SAM2OfficialLoss

    ours = no_dropout(copy.deepcopy(hiera_t_sam2)).train()
    meta = build_sam2train(ours)
    batch = our_batch(make_video_batch)
    cfg = PromptsConfig(num_correction_points=CLICKS, frames_to_correct=3, max_cond_frames=2)
    out = run_video(ours, batch, prompts_cfg=cfg, memory_from_low_res=False)
    total, _ = SAM2OfficialLoss()(
        out.step_multimask_logits,
        out.step_iou_pred,
        out.step_object_score_logits,
        out.step_valid,
        batch.masks,
    )
    meta_outs, data = meta_forward(meta, batch)
    meta_loss = MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )
    from training.trainer import CORE_LOSS_KEY

    expected = meta_loss(meta_outs, data.masks)[CORE_LOSS_KEY]
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-4)
    # and the gradients that reach the weights agree
    total.backward()
    expected.backward()
    ours_grads = dict(ours.named_parameters())
    for name, p in meta.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(ours_grads[name].grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
