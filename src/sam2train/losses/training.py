"""The spec's training loss `SAM2TrainingLoss` (`loss.type: sam2train`), the module that weighs the pure terms of
`terms.py`.

Shapes: B clips, T frames, N objects (padded), H x W pixels. Every term is first reduced to one value per mask
[B, T, N] (a mean or ratio over the pixels that are not void), then averaged over the valid (b, t, n) entries, so
the loss is a mean over valid objects and frames: its scale does not change with clip length or object count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from sam2train.losses.base import LossOutput, VideoLoss
from sam2train.losses.terms import (
    bce_per_mask,
    dice_per_mask,
    iou_per_mask,
    temporal_per_mask,
    valid_mean,
)

if TYPE_CHECKING:
    from sam2train.batch import VideoBatch
    from sam2train.model.video import VideoOutput

__all__ = ["SAM2TrainingLoss"]

MASK_TERMS = ("bce", "dice", "iou", "temporal")
"""The spec's four terms, always reported."""


class SAM2TrainingLoss(VideoLoss):
    """Weighted sum of BCE, soft dice, soft IoU and temporal consistency, each a mean over valid masks.

    total = bce_weight * bce + dice_weight * dice + iou_weight * iou + temporal_weight * temporal
            (+ object_score_weight * object_score when object-score logits are given)

    Computed in float32 whatever the input dtype (bf16/fp16 logits are cast up and autocast is disabled inside),
    with BCE from `F.binary_cross_entropy_with_logits` (stable for large logits). The defaults are those of the
    config's `loss` section.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        iou_weight: float = 0.5,
        temporal_weight: float = 0.1,
        smooth: float = 1e-6,
        object_score_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        self.temporal_weight = temporal_weight
        self.smooth = smooth
        self.object_score_weight = object_score_weight

    def extra_repr(self) -> str:
        return (
            f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, iou_weight={self.iou_weight}, "
            f"temporal_weight={self.temporal_weight}, smooth={self.smooth}, "
            f"object_score_weight={self.object_score_weight}"
        )

    @property
    def term_names(self) -> tuple[str, ...]:
        """bce, dice, iou, temporal; and object_score when its weight is not 0."""
        return (*MASK_TERMS, "object_score") if self.object_score_weight > 0 else MASK_TERMS

    def normalisers(self, batch: VideoBatch, active: Tensor) -> dict[str, Tensor]:
        """The number of valid masks ("masks") and of valid pairs of consecutive masks ("pairs")."""
        valid = batch.valid & active.to(batch.valid.device)
        return {"masks": valid.sum().float(), "pairs": (valid[:, 1:] & valid[:, :-1]).sum().float()}

    def video_loss(
        self, out: VideoOutput, batch: VideoBatch, norms: dict[str, Tensor] | None = None
    ) -> LossOutput:
        """The loss of the kept masks `out.mask_logits` on the valid entries that have a prediction; the
        object-score term only when its weight is not 0. `norms`: see `VideoLoss.video_loss`."""
        total, terms = self(
            out.mask_logits,
            batch.masks,
            batch.valid & out.active,
            return_components=True,
            ignore_mask=batch.ignore,
            object_score_logits=out.object_score_logits if self.object_score_weight > 0 else None,
            counts=norms,
        )
        return LossOutput(total, terms)

    def forward(
        self,
        pred_masks: Tensor,
        target_masks: Tensor,
        valid_masks: Tensor | None = None,
        return_components: bool = False,
        ignore_mask: Tensor | None = None,
        object_score_logits: Tensor | None = None,
        counts: dict[str, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Loss of a batch of clips.

        pred_masks:   [B, T, N, H, W] logits (any float dtype)
        target_masks: [B, T, N, H, W] 0/1 (float, bool or int)
        valid_masks:  [B, T, N] bool, False for padded objects / unsupervised frames (None: all valid)
        ignore_mask:  [B, T, H, W] bool, True on void pixels, which leave every sum and mean (a pair of frames
                      in the temporal term drops a pixel void in either); a mask with every pixel void
                      contributes 0 to each term while still counting as valid.
        object_score_logits: [B, T, N] SAM 2's object-presence logits; with them, the term `object_score` (BCE
                      against "the target mask is non-empty", mean over valid entries) is added with
                      `object_score_weight`. SAM 2 replaces the mask of an object scored absent by -1024 logits,
                      which carry no gradient: without this term a model whose scores start negative never
                      learns (seen training from random weights).
        counts:       {"masks", "pairs"} (`normalisers`): the divisors of the means instead of this call's own
                      valid masks and pairs, for a part of a larger batch.
        Returns the 0-dim total, or `(total, components)` with components {"bce", "dice", "iou", "temporal"}
        (plus "object_score" when object_score_logits are given):
        0-dim float32 tensors, unweighted and still attached to the graph (detach them to log).
        With no valid mask every term is 0 (finite, zero gradient); with T = 1 the temporal term is 0.
        """
        self._check_shapes(pred_masks, target_masks, valid_masks, ignore_mask)
        b, t, n = pred_masks.shape[:3]
        if valid_masks is None:
            valid_masks = torch.ones(b, t, n, dtype=torch.bool, device=pred_masks.device)
        valid = valid_masks.to(device=pred_masks.device, dtype=torch.bool)

        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            logits = pred_masks.float()
            targets = target_masks.to(device=pred_masks.device, dtype=torch.float32)
            keep = None
            if ignore_mask is not None:
                keep = (~ignore_mask.to(device=pred_masks.device, dtype=torch.bool)).float().unsqueeze(2)
            counts = counts or {}
            components = self._mask_terms(logits, targets, valid, keep, counts)
            total = (
                self.bce_weight * components["bce"]
                + self.dice_weight * components["dice"]
                + self.iou_weight * components["iou"]
                + self.temporal_weight * components["temporal"]
            )
            if object_score_logits is not None:
                components["object_score"] = _object_score_term(
                    object_score_logits, targets, valid, counts.get("masks")
                )
                total = total + self.object_score_weight * components["object_score"]
        if return_components:
            return total, components
        return total

    def _mask_terms(
        self, logits: Tensor, targets: Tensor, valid: Tensor, keep: Tensor | None, counts: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The four unweighted terms (0-dim each) from float32 logits and targets [B, T, N, H, W], valid
        [B, T, N] bool and keep [B, T, 1, H, W] (or None); `counts` may give the divisors (see `forward`)."""
        probs = torch.sigmoid(logits)
        masks = counts.get("masks")
        terms = {
            "bce": valid_mean(bce_per_mask(logits, targets, keep), valid, masks),
            "dice": valid_mean(dice_per_mask(probs, targets, keep, self.smooth), valid, masks),
            "iou": valid_mean(iou_per_mask(probs, targets, keep, self.smooth), valid, masks),
        }
        if logits.shape[1] > 1:
            pair_valid = valid[:, 1:] & valid[:, :-1]
            pairs = counts.get("pairs")
            terms["temporal"] = valid_mean(temporal_per_mask(probs, targets, keep), pair_valid, pairs)
        else:
            terms["temporal"] = logits.new_zeros(())
        return terms

    @staticmethod
    def _check_shapes(pred: Tensor, target: Tensor, valid: Tensor | None, ignore: Tensor | None) -> None:
        if pred.dim() != 5:
            raise ValueError(f"pred_masks must be [B, T, N, H, W], got shape {tuple(pred.shape)}")
        if target.shape != pred.shape:
            raise ValueError(
                f"target_masks shape {tuple(target.shape)} differs from pred_masks shape {tuple(pred.shape)}"
            )
        if valid is not None and valid.shape != pred.shape[:3]:
            raise ValueError(
                f"valid_masks must be [B, T, N] = {tuple(pred.shape[:3])}, got {tuple(valid.shape)}"
            )
        expected_ignore = (*pred.shape[:2], *pred.shape[3:])
        if ignore is not None and ignore.shape != expected_ignore:
            raise ValueError(
                f"ignore_mask must be [B, T, H, W] = {expected_ignore}, got {tuple(ignore.shape)}"
            )


def _object_score_term(scores: Tensor, targets: Tensor, valid: Tensor, count: Tensor | None) -> Tensor:
    """BCE of the object-presence logits [B, T, N] against "the target [B, T, N, H, W] is non-empty", a mean
    over the valid [B, T, N] entries (0-dim float32; divided by `count` when given)."""
    present = targets.flatten(3).amax(dim=3)  # [B, T, N]: the object is in the frame
    scores = scores.to(device=targets.device, dtype=torch.float32)
    per = F.binary_cross_entropy_with_logits(scores, present, reduction="none")
    return valid_mean(per, valid, count)
