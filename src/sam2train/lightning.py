"""SAM2LightningModule: builds SAM 2 at setup, runs the video pass, weighs the loss, logs, and optimises.

The module stays thin: the temporal unroll lives in `model/video.py`, the loss in `losses.py`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from .config import Config, config_from_dict, to_dict
from .data.batch import PROMPT_MASK, Prompts, VideoBatch
from .losses import SAM2TrainingLoss

log = logging.getLogger("sam2train")

CONFIG_KEY = "sam2train_config"
"""Where a Lightning checkpoint carries its resolved config (also in hyper_parameters['config'])."""


class SAM2LightningModule(L.LightningModule):
    """Fine-tunes SAM 2 on video clips. The network is at `self.model` (a `SAM2Base`), so checkpoint keys are
    `model.<official key>`."""

    def __init__(self, config: Config | dict) -> None:
        super().__init__()
        self.config = config if isinstance(config, Config) else config_from_dict(config)
        self.save_hyperparameters({"config": to_dict(self.config)})
        loss = self.config.loss
        self.criterion = SAM2TrainingLoss(
            bce_weight=loss.bce_weight,
            dice_weight=loss.dice_weight,
            iou_weight=loss.iou_weight,
            temporal_weight=loss.temporal_weight,
            smooth=loss.smooth,
        )
        self.model: torch.nn.Module | None = None
        self.param_report: dict[str, tuple[int, int]] = {}
        self.best_score: float | None = None
        self._fit_start = 0.0

    # ---- model ---------------------------------------------------------------------------------------------
    def build(self, load_weights: bool = True) -> None:
        """Build SAM 2 from the config (and its checkpoint when `load_weights`), freeze what is not trainable,
        and report the parameter counts."""
        from .model.build import apply_trainable, build_model, format_parameter_report, parameter_report

        model_cfg = self.config.model
        if load_weights:
            self.model = build_model(model_cfg, device="cpu")
        else:
            with warnings.catch_warnings():  # weights follow from the Lightning checkpoint: not a random init
                warnings.simplefilter("ignore")
                self.model = build_model(replace(model_cfg, checkpoint=None), device="cpu")
        apply_trainable(self.model, self.config.model.trainable_modules)
        self.param_report = parameter_report(self.model)
        log.info(
            "SAM 2 parameters (device: %s):\n%s", self.device, format_parameter_report(self.param_report)
        )

    def setup(self, stage: str) -> None:
        if self.model is None:
            self.build()
        if self.trainer is not None and self.trainer.is_global_zero:
            total = sum(t for t, _ in self.param_report.values())
            trainable = sum(tr for _, tr in self.param_report.values())
            print(
                f"sam2train: {total:,} parameters, {trainable:,} trainable, device {self.trainer.strategy.root_device}"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # weights come from the checkpoint itself: build the network without reading model.checkpoint
        if self.model is None:
            self.build(load_weights=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.config)

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, images: Any, masks: torch.Tensor | None = None, prompts: Prompts | None = None):
        """Run the video pass.

        Accepts a VideoBatch, Meta's `BatchedVideoDatapoint`, or the spec's `(images [B,T,3,H,W],
        masks [B,T,N,H,W], prompts)` where prompts default to the first-frame masks. Returns a VideoOutput
        (mask logits [B,T,N,H,W] at the input resolution, IoU predictions, object-score logits).
        """
        from .model.video import run_video

        batch = as_video_batch(images, masks, prompts)
        assert self.model is not None, "call setup() or build() first"
        return run_video(
            self.model,
            batch,
            bptt=self.config.model.bptt,
            mask_prompt_passthrough=self.config.model.mask_prompt_passthrough,
        )

    def _step(self, batch: VideoBatch, stage: str) -> torch.Tensor:
        out = self(batch)
        total, parts = self.criterion(
            out.mask_logits, batch.masks, batch.valid, return_components=True, ignore_mask=batch.ignore
        )
        # training: per step; validation: the epoch's mean over batches (synchronised across ranks)
        train = stage == "train"
        opts = {"on_step": train, "on_epoch": not train, "batch_size": batch.shape[0], "sync_dist": not train}
        self.log(f"{stage}/total", total.detach(), prog_bar=True, **opts)
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value.detach(), **opts)
        return total

    def training_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, prog_bar=True)
        return loss

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Aggregate the epoch's validation metrics and remember the best score of `checkpoint.monitor` (the
        ModelCheckpoint callback keeps the best checkpoint file)."""
        if self.trainer.sanity_checking:
            return
        ck = self.config.checkpoint
        value = self.trainer.callback_metrics.get(ck.monitor)
        if value is None:
            return
        value = float(value)
        better = self.best_score is None or (
            value < self.best_score if ck.mode == "min" else value > self.best_score
        )
        if better:
            self.best_score = value
        self.log(f"best/{ck.monitor}", self.best_score, sync_dist=False, rank_zero_only=True)

    def on_fit_start(self) -> None:
        self._fit_start = time.time()

    def on_train_end(self) -> None:
        from .callbacks import write_final_metrics

        if self.trainer.is_global_zero:
            write_final_metrics(self.trainer, self, wall_time=time.time() - self._fit_start)

    # ---- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_cfg, sch_cfg = self.config.optimizer, self.config.scheduler
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model.trainable_modules leaves no trainable parameter")
        cls = torch.optim.AdamW if opt_cfg.type == "AdamW" else torch.optim.Adam
        optimizer = cls(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, betas=tuple(opt_cfg.betas))
        if not sch_cfg.enabled:
            return optimizer
        per_step = sch_cfg.interval == "step" or sch_cfg.warmup_steps > 0
        # With warmup the whole schedule runs per optimizer step; epoch lengths are converted to steps.
        unit = self._steps_per_epoch() if sch_cfg.interval == "epoch" and per_step else 1
        scheduler = _main_scheduler(optimizer, sch_cfg, unit)
        if sch_cfg.warmup_steps > 0:
            warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=sch_cfg.warmup_steps)
            scheduler = SequentialLR(optimizer, [warmup, scheduler], milestones=[sch_cfg.warmup_steps])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step" if per_step else "epoch"},
        }

    def _steps_per_epoch(self) -> int:
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and math.isfinite(total):
            return max(1, int(total // trainer.max_epochs))
        return max(1, int(total))


def _main_scheduler(optimizer: torch.optim.Optimizer, cfg, unit: int) -> LRScheduler:
    if cfg.type == "CosineAnnealingLR":
        return CosineAnnealingLR(optimizer, T_max=cfg.T_max * unit, eta_min=cfg.eta_min)
    return StepLR(optimizer, step_size=cfg.step_size * unit, gamma=cfg.gamma)


def as_video_batch(
    images: Any, masks: torch.Tensor | None = None, prompts: Prompts | None = None
) -> VideoBatch:
    """A VideoBatch from a VideoBatch, Meta's BatchedVideoDatapoint, or (images, masks, prompts) tensors."""
    if isinstance(images, VideoBatch):
        return images
    if hasattr(images, "obj_to_frame_idx") and hasattr(images, "img_batch"):
        return from_meta_batch(images)
    if masks is None:
        raise ValueError(
            "forward(images, masks, prompts): masks [B,T,N,H,W] are required with a tensor input"
        )
    b, t, n = masks.shape[:3]
    h, w = masks.shape[-2:]
    if prompts is None:
        first = masks[:, 0].float()
        prompts = Prompts(
            kind=torch.full((b, n), PROMPT_MASK, dtype=torch.long, device=masks.device),
            point_coords=masks.new_zeros(b, n, 0, 2),
            point_labels=torch.zeros(b, n, 0, dtype=torch.long, device=masks.device),
            boxes=masks.new_zeros(b, n, 4),
            masks=first,
        )
    dev = masks.device
    return VideoBatch(
        images=images,
        masks=masks.float(),
        valid=torch.ones(b, t, n, dtype=torch.bool, device=dev),
        ignore=torch.zeros(b, t, h, w, dtype=torch.bool, device=dev),
        prompts=prompts,
        video_names=[f"video_{i}" for i in range(b)],
        frame_indices=torch.arange(t, device=dev).expand(b, t),
        object_ids=torch.arange(1, n + 1, device=dev).expand(b, n),
        orig_sizes=torch.tensor([[h, w]] * b, device=dev),
        num_video_frames=torch.full((b,), t, dtype=torch.long, device=dev),
    )


def from_meta_batch(batch: Any) -> VideoBatch:
    """Convert Meta's `BatchedVideoDatapoint` (img_batch [T,B,3,H,W], masks [T,O,H,W], obj_to_frame_idx [T,O,2]
    holding (frame, video) per object) into a VideoBatch prompted with first-frame masks."""
    images = batch.img_batch.transpose(0, 1)  # [B,T,3,H,W]
    b, t = images.shape[:2]
    video_of_obj = batch.obj_to_frame_idx[0, :, 1].long()
    n = int(torch.bincount(video_of_obj, minlength=b).max())
    h, w = batch.masks.shape[-2:]
    masks = batch.masks.new_zeros(b, t, n, h, w, dtype=torch.float)
    valid = torch.zeros(b, t, n, dtype=torch.bool, device=images.device)
    slot = torch.zeros(b, dtype=torch.long)
    for o, v in enumerate(video_of_obj.tolist()):
        masks[v, :, slot[v]] = batch.masks[:, o].float()
        valid[v, :, slot[v]] = True
        slot[v] += 1
    out = as_video_batch(images, masks)
    out.valid = valid
    out.prompts.kind[~valid[:, 0]] = -1
    return out
