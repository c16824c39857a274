"""What the tracker gives per frame: `FrameOutput` for the tracked objects (merged across prompt groups, padded
to a common number of prompting steps), and `NO_OBJ_LOGIT`, the logit of an absent or padded object."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sam2train.batch import map_fields

NO_OBJ_LOGIT = -1024.0
"""Logit of padded objects (and of SAM 2's masks when the object score says 'absent')."""


@dataclass
class FrameOutput:
    """One frame's result for n tracked objects (h = w = image_size / 4; M multimask outputs, 3 in SAM 2).

    low_res_logits:      [n, h, w] the mask SAM 2 keeps (best predicted IoU among multimask outputs)
    multimask_logits:    [n, M, h, w] all candidates; a single-mask output is repeated M times
    iou_pred:            [n, M] predicted IoU of each candidate (repeated likewise)
    is_multimask:        [n] bool, whether the frame produced M distinct candidates
    object_score_logits: [n] > 0 means the object is present
    Every prompting step of the frame (K = 1 + correction clicks; the last step is the kept result), for the
    official loss, which supervises them all:
    step_multimask_logits: [n, K, M, h, w]; step_iou_pred: [n, K, M]; step_object_score_logits: [n, K];
    step_valid: [n, K] bool (False where a merged object made fewer steps)
    """

    low_res_logits: torch.Tensor
    multimask_logits: torch.Tensor
    iou_pred: torch.Tensor
    is_multimask: torch.Tensor
    object_score_logits: torch.Tensor
    step_multimask_logits: torch.Tensor
    step_iou_pred: torch.Tensor
    step_object_score_logits: torch.Tensor
    step_valid: torch.Tensor

    @staticmethod
    def merge(parts: list[FrameOutput], order: torch.Tensor) -> FrameOutput:
        """Concatenate per-group outputs (objects `order`, concatenated) back into object order; step axes are
        padded to the longest."""
        if len(parts) == 1:
            inverse = torch.argsort(order).to(parts[0].low_res_logits.device)
            return map_fields(lambda x: x[inverse], parts[0])
        k = max(p.step_valid.shape[1] for p in parts)
        parts = [p.pad_steps(k) for p in parts]
        inverse = torch.argsort(order).to(parts[0].low_res_logits.device)
        return map_fields(lambda *xs: torch.cat(xs)[inverse], *parts)

    def pad_steps(self, k: int) -> FrameOutput:
        """The same output with K padded to k (padding: NO_OBJ_LOGIT logits, IoU 0, step_valid False)."""
        extra = k - self.step_valid.shape[1]
        if extra <= 0:
            return self

        def pad(x: torch.Tensor, value: float | bool) -> torch.Tensor:
            shape = list(x.shape)
            shape[1] = extra
            return torch.cat([x, x.new_full(shape, value)], dim=1)

        return replace(
            self,
            step_multimask_logits=pad(self.step_multimask_logits, NO_OBJ_LOGIT),
            step_iou_pred=pad(self.step_iou_pred, 0.0),
            step_object_score_logits=pad(self.step_object_score_logits, NO_OBJ_LOGIT),
            step_valid=pad(self.step_valid, False),
        )

    @staticmethod
    def stack_steps(steps: list[FrameOutput]) -> FrameOutput:
        """The last step's result with the step axes of all `steps` (single-step outputs) concatenated."""
        last = steps[-1]
        return replace(
            last,
            step_multimask_logits=torch.cat([s.step_multimask_logits for s in steps], dim=1),
            step_iou_pred=torch.cat([s.step_iou_pred for s in steps], dim=1),
            step_object_score_logits=torch.cat([s.step_object_score_logits for s in steps], dim=1),
            step_valid=torch.cat([s.step_valid for s in steps], dim=1),
        )
