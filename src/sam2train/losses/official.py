"""Meta's SAM 2 training loss (`loss.type: sam2`): `SAM2OfficialLoss` weighs the per-mask terms of `terms.py`.

Matches `training.loss_fns.MultiStepMultiMasksAndIous` of the SAM 2 repository. Shapes: B clips, T frames,
N objects (padded), K prompting steps per frame (step 0 is the frame's first SAM call, then correction clicks),
M multimask candidates, h x w low-res logits, S x S model input size. For every valid (frame, object, step):

- focal (mean over pixels) and dice of each candidate; the candidate with the lowest
  `mask_weight * focal + dice_weight * dice` is the one whose focal and dice count (SAM's multimask training);
- IoU term: L1 or MSE between the predicted IoU and the true IoU of the thresholded mask, averaged over the
  candidates (`supervise_all_iou`) or taken on the selected one;
- these three only when the object is present in the target; the object-score focal loss always.

Unlike `training.py` (means over valid masks), every term is summed over frames, steps and objects and divided by
the number of objects, as Meta does: a clip with more frames or more correction clicks weighs more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sam2train.losses.base import LossOutput, VideoLoss
from sam2train.losses.terms import (
    dice_per_mask,
    focal_per_mask,
    mask_iou,
    sigmoid_focal,
    upsample_logits,
)

if TYPE_CHECKING:
    from sam2train.batch import VideoBatch
    from sam2train.model.video import VideoOutput

__all__ = ["SAM2OfficialLoss"]

COMPONENTS = ("mask", "dice", "iou", "class")
META_DICE_SMOOTH = 1.0
"""Meta's dice adds 1 to numerator and denominator (not a small epsilon)."""


class SAM2OfficialLoss(VideoLoss):
    """Meta's multi-step multimask loss: focal + dice on the best candidate, IoU regression, object score.

    total = (mask_weight * mask + dice_weight * dice + iou_weight * iou + class_weight * class), each term
    summed over valid (frame, object, step) and divided by the number of objects. A term with weight 0 is left
    out of the total (as Meta's `reduce_loss`). Computed in float32 with autocast disabled.

    Memory: the valid steps are processed in chunks of about `chunk_pixels` high-res pixels, each under
    activation checkpointing, so the S x S tensors of one chunk at a time are alive, in forward and backward.
    """

    chunk_pixels: int = 1 << 24
    """Upper bound on rows * M * S * S per chunk (16M floats = 64 MB per intermediate tensor)."""

    def __init__(
        self,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        class_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_focal_alpha: float = -1.0,
        class_focal_gamma: float = 0.0,
        iou_loss: str = "l1",
        supervise_all_iou: bool = True,
    ) -> None:
        super().__init__()
        if iou_loss not in ("l1", "mse"):
            raise ValueError(f"iou_loss must be 'l1' or 'mse', got {iou_loss!r}")
        self.weights = {"mask": mask_weight, "dice": dice_weight, "iou": iou_weight, "class": class_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_focal_alpha = class_focal_alpha
        self.class_focal_gamma = class_focal_gamma
        self.iou_loss = iou_loss
        self.supervise_all_iou = supervise_all_iou

    def extra_repr(self) -> str:
        weights = ", ".join(f"{k}_weight={v}" for k, v in self.weights.items())
        return (
            f"{weights}, focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"class_focal_alpha={self.class_focal_alpha}, class_focal_gamma={self.class_focal_gamma}, "
            f"iou_loss={self.iou_loss}, supervise_all_iou={self.supervise_all_iou}"
        )

    @property
    def term_names(self) -> tuple[str, ...]:
        """mask, dice, iou, class (each reported, even with weight 0)."""
        return COMPONENTS

    def normalisers(self, batch: VideoBatch, active: Tensor) -> dict[str, Tensor]:
        """Meta's count of objects ("objects"): those with a valid frame that has a prediction (every such frame
        has a valid first step), averaged over ranks (a collective, see `forward`)."""
        valid = batch.valid & active.to(batch.valid.device)
        return {"objects": self._num_objects(valid[..., None], None)}

    def video_loss(
        self, out: VideoOutput, batch: VideoBatch, norms: dict[str, Tensor] | None = None
    ) -> LossOutput:
        """The loss of every prompting step of the video pass, on the valid frames and objects. `norms`: see
        `VideoLoss.video_loss`."""
        total, terms = self(
            out.step_multimask_logits,
            out.step_iou_pred,
            out.step_object_score_logits,
            out.step_valid & batch.valid[..., None],
            batch.masks,
            ignore_mask=batch.ignore,
            num_objects=None if norms is None else norms["objects"],
        )
        return LossOutput(total, terms)

    def forward(
        self,
        step_logits: Tensor,
        step_iou_pred: Tensor,
        step_object_score_logits: Tensor,
        step_valid: Tensor,
        target_masks: Tensor,
        ignore_mask: Tensor | None = None,
        num_objects: float | Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a batch of clips.

        step_logits:  [B, T, N, K, M, h, w] low-res multimask logits of every prompting step (a single-mask
                      output stored repeated M times); upsampled to S x S before the loss, as SAM 2 does.
        step_iou_pred: [B, T, N, K, M]; step_object_score_logits: [B, T, N, K] (any float dtype).
        step_valid:   [B, T, N, K] bool, which (frame, object, step) exist and are supervised. Other slots are
                      never read into the loss (any value there, inf included, gives zero gradient).
        target_masks: [B, T, N, S, S] 0/1. The object counts as present when any target pixel is > 0.
        ignore_mask:  [B, T, S, S] bool, True on void pixels: they leave the focal mean, the dice sums and the
                      true IoU (None: none, exactly Meta's loss).
        num_objects:  the normaliser; None = objects with any valid step in the batch, averaged over ranks
                      when torch.distributed is initialised (a collective: call on every rank), clamped >= 1.
        Returns `(total, components)`, components {"mask", "dice", "iou", "class"}: 0-dim float32 tensors,
        unweighted, divided by num_objects and still attached to the graph (detach them to log).
        """
        self._check_shapes(
            step_logits, step_iou_pred, step_object_score_logits, step_valid, target_masks, ignore_mask
        )
        device = step_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            valid = step_valid.to(device=device, dtype=torch.bool)
            norm = self._num_objects(valid, num_objects)
            # valid rows in frame-major order: one host sync here, none per chunk
            t_idx, b_idx, n_idx, k_idx = valid.permute(1, 0, 2, 3).nonzero(as_tuple=True)
            logits = step_logits[b_idx, t_idx, n_idx, k_idx]  # [V, M, h, w]
            ious = step_iou_pred[b_idx, t_idx, n_idx, k_idx]  # [V, M]
            scores = step_object_score_logits[b_idx, t_idx, n_idx, k_idx]  # [V]
            if logits.shape[0] == 0:
                # no supervised step: zeros that are still attached to the graph
                zero = logits.float().sum() + ious.float().sum() + scores.float().sum()
                sums = dict.fromkeys(COMPONENTS, zero)
            else:
                targets = target_masks.to(device)
                ignore = None if ignore_mask is None else ignore_mask.to(device=device, dtype=torch.bool)
                sums = self._summed_terms(targets, ignore, logits, ious, scores, (b_idx, t_idx, n_idx))
            components = {key: sums[key] / norm for key in COMPONENTS}
            total = sum(
                (self.weights[key] * components[key] for key in COMPONENTS if self.weights[key] != 0),
                start=components["mask"].new_zeros(()),
            )
        return total, components

    def _summed_terms(
        self,
        targets: Tensor,
        ignore: Tensor | None,
        logits: Tensor,
        ious: Tensor,
        scores: Tensor,
        where: tuple[Tensor, Tensor, Tensor],
    ) -> dict[str, Tensor]:
        """The four terms summed over the V valid rows (logits [V, M, h, w], ious [V, M], scores [V], `where` the
        rows' (b, t, n) indices [V] each), in chunks of about `chunk_pixels` high-res pixels."""
        size = targets.shape[-1]
        rows = max(1, self.chunk_pixels // (logits.shape[1] * size * size))
        b_idx, t_idx, n_idx = where
        chunks = zip(
            logits.split(rows),
            ious.split(rows),
            scores.split(rows),
            b_idx.split(rows),
            t_idx.split(rows),
            n_idx.split(rows),
            strict=True,
        )
        per_chunk = [self._chunk(targets, ignore, *chunk) for chunk in chunks]
        return {key: torch.stack([c[i] for c in per_chunk]).sum() for i, key in enumerate(COMPONENTS)}

    def _chunk(
        self,
        targets: Tensor,
        ignore: Tensor | None,
        logits: Tensor,
        ious: Tensor,
        scores: Tensor,
        b: Tensor,
        t: Tensor,
        n: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Summed (mask, dice, iou, class) terms of a chunk of R valid rows, checkpointed when training."""
        if torch.is_grad_enabled():
            return checkpoint(
                self._chunk_terms, targets, ignore, logits, ious, scores, b, t, n, use_reentrant=False
            )
        return self._chunk_terms(targets, ignore, logits, ious, scores, b, t, n)

    def _chunk_terms(
        self,
        targets: Tensor,
        ignore: Tensor | None,
        logits: Tensor,
        ious: Tensor,
        scores: Tensor,
        b: Tensor,
        t: Tensor,
        n: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """logits [R, M, h, w], ious [R, M], scores [R]; (b, t, n) [R] index targets [B, T, N, S, S] and
        ignore [B, T, S, S]. Returns the four terms summed over the R rows (0-dim each)."""
        high_res = upsample_logits(logits.float(), targets.shape[-1])  # [R, M, S, S]
        target = targets[b, t, n].float().unsqueeze(1).expand_as(high_res)  # [R, M, S, S], a view
        keep = None if ignore is None else ~ignore[b, t].unsqueeze(1)
        present = target[:, 0].flatten(1).amax(dim=1) > 0  # [R]

        focal = focal_per_mask(high_res, target, keep, self.focal_alpha, self.focal_gamma)  # [R, M]
        dice = dice_per_mask(torch.sigmoid(high_res), target, keep, META_DICE_SMOOTH)  # [R, M]
        iou_err = ious.float() - mask_iou(high_res, target, keep)
        iou_term = iou_err.abs() if self.iou_loss == "l1" else iou_err.square()  # [R, M]

        # ties (a single-mask step stored repeated) resolve to the first candidate, as torch.argmin does
        best = torch.argmin(self.weights["mask"] * focal + self.weights["dice"] * dice, dim=1, keepdim=True)
        focal, dice = focal.gather(1, best).squeeze(1), dice.gather(1, best).squeeze(1)
        iou_term = iou_term.mean(dim=1) if self.supervise_all_iou else iou_term.gather(1, best).squeeze(1)

        cls = sigmoid_focal(scores.float(), present.float(), self.class_focal_alpha, self.class_focal_gamma)
        return (
            torch.where(present, focal, 0.0).sum(),
            torch.where(present, dice, 0.0).sum(),
            torch.where(present, iou_term, 0.0).sum(),
            cls.sum(),
        )

    @staticmethod
    def _num_objects(valid: Tensor, num_objects: float | Tensor | None) -> Tensor:
        """Meta's normaliser as a 0-dim float32 tensor on valid's device (see `forward`)."""
        if num_objects is not None:
            return torch.as_tensor(num_objects, dtype=torch.float32, device=valid.device)
        count = valid.any(dim=3).any(dim=1).sum().float()  # objects (b, n) with any valid step
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1)

    @staticmethod
    def _check_shapes(
        logits: Tensor,
        iou_pred: Tensor,
        scores: Tensor,
        valid: Tensor,
        targets: Tensor,
        ignore: Tensor | None,
    ) -> None:
        if logits.dim() != 7:
            raise ValueError(f"step_logits must be [B, T, N, K, M, h, w], got shape {tuple(logits.shape)}")
        btnk, m = tuple(logits.shape[:4]), logits.shape[4]
        expected = {
            "step_iou_pred": (iou_pred, (*btnk, m)),
            "step_object_score_logits": (scores, btnk),
            "step_valid": (valid, btnk),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} (from step_logits), got {tuple(tensor.shape)}"
                )
        if (
            targets.dim() != 5
            or tuple(targets.shape[:3]) != btnk[:3]
            or targets.shape[-1] != targets.shape[-2]
        ):
            raise ValueError(
                f"target_masks must be [B, T, N, S, S] with [B, T, N] = {btnk[:3]}, got {tuple(targets.shape)}"
            )
        if ignore is not None and tuple(ignore.shape) != (*btnk[:2], *targets.shape[-2:]):
            raise ValueError(
                f"ignore_mask must be [B, T, S, S] = {(*btnk[:2], *targets.shape[-2:])}, got {tuple(ignore.shape)}"
            )
