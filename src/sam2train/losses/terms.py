"""Pure per-mask loss terms shared by both losses: each reduces the pixels of a mask to one value.

Shapes: `[..., H, W]` in, `[...]` out (one value per mask); `keep` marks the pixels that count (void pixels are
left out of every sum and mean). Nothing here holds state or weights: `training.py` and `official.py` weigh them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_per_mask",
    "dice_per_mask",
    "focal_per_mask",
    "iou_per_mask",
    "mask_iou",
    "pixel_mean",
    "sigmoid_focal",
    "temporal_per_mask",
    "upsample_logits",
    "valid_mean",
]


def pixel_mean(values: Tensor, keep: Tensor | None) -> Tensor:
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
    return pixel_mean(per_pixel, keep)


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
    return pixel_mean(diff.square(), pair_keep)


def valid_mean(values: Tensor, valid: Tensor, count: Tensor | None = None) -> Tensor:
    """sum(valid * values) / max(sum(valid), 1): a 0-dim mean over the valid entries, 0 when there are none.

    values: [...] float; valid: [...] bool (or 0/1) of the same shape. Invalid entries are selected out with
    `torch.where`, not multiplied by 0, so a non-finite value in a padded slot (e.g. from a -inf logit) cannot
    turn the result into NaN. `count` (0-dim) replaces sum(valid) as the divisor: the valid entries of a larger
    whole, of which these are a part (object-chunked training sums such parts to the whole's mean).
    """
    valid = valid.bool()
    picked = torch.where(valid, values, torch.zeros_like(values))
    return picked.sum() / (valid.sum() if count is None else count).clamp(min=1)


def sigmoid_focal(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise sigmoid focal loss (RetinaNet): BCE * (1 - p_t)^gamma, times alpha_t when alpha >= 0.

    logits, targets: [...] float (targets 0/1). Returns [...]. alpha = -1, gamma = 0 is plain BCE.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        prob = torch.sigmoid(logits)
        p_t = prob * targets + (1 - prob) * (1 - targets)
        loss = loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def focal_per_mask(
    logits: Tensor, targets: Tensor, keep: Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """`sigmoid_focal` averaged over the kept pixels of each mask.

    logits, targets: [..., H, W]; keep: bool broadcastable to them, True = pixel counts (None: all).
    Returns [...]; 0 for a mask with no kept pixel.
    """
    per_pixel = sigmoid_focal(logits, targets, alpha, gamma)
    if keep is None:
        return per_pixel.mean(dim=(-2, -1))
    count = keep.expand_as(per_pixel).sum(dim=(-2, -1)).clamp(min=1)
    # selected with where, not multiplied: a bool keep, and no NaN from an inf logit on a void pixel
    return torch.where(keep, per_pixel, 0.0).sum(dim=(-2, -1)) / count


def mask_iou(logits: Tensor, targets: Tensor, keep: Tensor | None = None) -> Tensor:
    """True IoU of the thresholded masks `logits > 0` and `targets > 0` over the kept pixels (no gradient).

    logits, targets: [..., H, W]; keep as in `focal_per_mask`. Returns [...] float32; 0 when the union is empty.
    """
    pred, gt = logits > 0, targets > 0
    if keep is not None:
        pred, gt = pred & keep, gt & keep
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return inter / union.clamp(min=1)


def upsample_logits(logits: Tensor, size: int) -> Tensor:
    """[R, M, h, w] low-res logits -> [R, M, size, size], bilinear as SAM 2's `_forward_sam_heads`."""
    if logits.shape[-2:] == (size, size):
        return logits
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
