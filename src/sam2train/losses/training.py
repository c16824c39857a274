"""Training losses: pure per-mask terms plus `SAM2TrainingLoss`, the module that weighs them.

Shapes: B clips, T frames, N objects (padded), H x W pixels. Every term is first reduced to one value per mask
[B, T, N] (a mean or ratio over the pixels that are not void), then averaged over the valid (b, t, n) entries, so
the loss is a mean over valid objects and frames: its scale does not change with clip length or object count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SAM2TrainingLoss",
    "bce_per_mask",
    "dice_per_mask",
    "iou_per_mask",
    "temporal_per_mask",
    "valid_mean",
]


def _pixel_mean(values: Tensor, keep: Tensor | None) -> Tensor:
    """Mean over the last two axes of `values` [..., H, W], over the pixels where `keep` (broadcastable) is 1.

    A mask whose pixels are all excluded gives 0 (the count is clamped to 1, so no 0/0 and no NaN gradient).
    """
    if keep is None:
        return values.mean(dim=(-2, -1))
    count = keep.expand_as(values).sum(dim=(-2, -1)).clamp(min=1)
    return (values * keep).sum(dim=(-2, -1)) / count


def bce_per_mask(logits: Tensor, targets: Tensor, keep: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over the kept pixels of each mask.

    logits, targets: [..., H, W] float (targets 0/1); keep: broadcastable to them, 1 = pixel counts (None: all).
    Returns [...]; 0 for a mask with no kept pixel.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _pixel_mean(per_pixel, keep)


def _soft_sums(probs: Tensor, targets: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """sum(p*y), sum(p), sum(y) over the kept pixels of each mask: three [...] tensors."""
    if keep is not None:
        probs, targets = probs * keep, targets * keep
    return (probs * targets).sum(dim=(-2, -1)), probs.sum(dim=(-2, -1)), targets.sum(dim=(-2, -1))


def dice_per_mask(probs: Tensor, targets: Tensor, keep: Tensor | None = None, smooth: float = 1e-6) -> Tensor:
    """Soft dice loss 1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s) per mask.

    probs, targets: [..., H, W] in [0, 1]; keep as in `bce_per_mask`. Returns [...] (0 when no pixel is kept).
    """
    inter, sum_p, sum_y = _soft_sums(probs, targets, keep)
    return 1 - (2 * inter + smooth) / (sum_p + sum_y + smooth)


def iou_per_mask(probs: Tensor, targets: Tensor, keep: Tensor | None = None, smooth: float = 1e-6) -> Tensor:
    """Soft IoU (Jaccard) loss 1 - (sum(p y) + s) / (sum(p) + sum(y) - sum(p y) + s) per mask.

    probs, targets: [..., H, W] in [0, 1]; keep as in `bce_per_mask`. Returns [...] (0 when no pixel is kept).
    """
    inter, sum_p, sum_y = _soft_sums(probs, targets, keep)
    return 1 - (inter + smooth) / (sum_p + sum_y - inter + smooth)


def temporal_per_mask(probs: Tensor, targets: Tensor, keep: Tensor | None = None) -> Tensor:
    """Temporal consistency: mean over kept pixels of ((p[t] - p[t-1]) - (y[t] - y[t-1]))^2, for t >= 1.

    The predicted change between consecutive frames is pushed towards the true change, so a mask that flickers
    where the object does not move costs, and one that follows the motion does not.
    probs, targets: [B, T, N, H, W]; keep: [B, T, 1, H, W] (or None), a pixel counts for the pair (t-1, t) only
    when it is kept in both frames. Returns [B, T-1, N] (empty along T when T = 1).
    """
    diff = (probs[:, 1:] - probs[:, :-1]) - (targets[:, 1:] - targets[:, :-1])
    pair_keep = None if keep is None else keep[:, 1:] * keep[:, :-1]
    return _pixel_mean(diff.square(), pair_keep)


def valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """sum(valid * values) / max(sum(valid), 1): a 0-dim mean over the valid entries, 0 when there are none.

    values: [...] float; valid: [...] bool (or 0/1) of the same shape. Invalid entries are selected out with
    `torch.where`, not multiplied by 0, so a non-finite value in a padded slot (e.g. from a -inf logit) cannot
    turn the result into NaN.
    """
    valid = valid.bool()
    picked = torch.where(valid, values, torch.zeros_like(values))
    return picked.sum() / valid.sum().clamp(min=1)


class SAM2TrainingLoss(nn.Module):
    """Weighted sum of BCE, soft dice, soft IoU and temporal consistency, each a mean over valid masks.

    total = bce_weight * bce + dice_weight * dice + iou_weight * iou + temporal_weight * temporal

    Computed in float32 whatever the input dtype (bf16/fp16 logits are cast up and autocast is disabled inside),
    with BCE from `F.binary_cross_entropy_with_logits` (stable for large logits).
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        iou_weight: float = 0.5,
        temporal_weight: float = 0.1,
        smooth: float = 1e-6,
        object_score_weight: float = 0.0,
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

    def forward(
        self,
        pred_masks: Tensor,
        target_masks: Tensor,
        valid_masks: Tensor | None = None,
        return_components: bool = False,
        ignore_mask: Tensor | None = None,
        object_score_logits: Tensor | None = None,
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
                      learns (REFERENCE.md, training from random weights).
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
            probs = torch.sigmoid(logits)

            components = {
                "bce": valid_mean(bce_per_mask(logits, targets, keep), valid),
                "dice": valid_mean(dice_per_mask(probs, targets, keep, self.smooth), valid),
                "iou": valid_mean(iou_per_mask(probs, targets, keep, self.smooth), valid),
            }
            if t > 1:
                components["temporal"] = valid_mean(
                    temporal_per_mask(probs, targets, keep), valid[:, 1:] & valid[:, :-1]
                )
            else:
                components["temporal"] = logits.new_zeros(())
            total = (
                self.bce_weight * components["bce"]
                + self.dice_weight * components["dice"]
                + self.iou_weight * components["iou"]
                + self.temporal_weight * components["temporal"]
            )
            if object_score_logits is not None:
                present = targets.flatten(3).amax(dim=3)  # [B, T, N]: the object is in the frame
                scores = object_score_logits.to(device=pred_masks.device, dtype=torch.float32)
                per = F.binary_cross_entropy_with_logits(scores, present, reduction="none")
                components["object_score"] = valid_mean(per, valid)
                total = total + self.object_score_weight * components["object_score"]
        if return_components:
            return total, components
        return total

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
