"""SAM2LightningModule: forward (the video pass of `model/video.py`) -> loss (`losses/`) -> log, and the optimiser.

Around it: the non-finite step guard is a callback (`train/guards.py`), the RNG states of a resume are in
`train/resume.py`, validation sums are `train/validation.py` (J&F per batch: `metrics.video_jf`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from sam2train.batch import Prompts, VideoBatch, as_video_batch
from sam2train.config import Config, config_from_dict, to_dict
from sam2train.losses import LossOutput, build_loss
from sam2train.metrics import video_jf
from sam2train.model.checkpoints import CONFIG_KEY
from sam2train.train.gpu import use_fused_optimizer
from sam2train.train.optim import (
    build_optimizer,
    build_scheduler,
    needs_steps_per_epoch,
    param_groups,
    trainer_steps_per_epoch,
)
from sam2train.train.resume import restore_resume_state, save_resume_state
from sam2train.train.validation import ValidationScores
from sam2train.train.versions import check_format, check_optimizer_groups, stamp_checkpoint

if TYPE_CHECKING:
    from sam2train.model.video import VideoOutput

log = logging.getLogger("sam2train")


class SAM2LightningModule(L.LightningModule):
    """Fine-tunes SAM 2 on video clips. The network is at `self.model` (a `SAM2Base`), so checkpoint keys are
    `model.<official key>`."""

    def __init__(self, config: Config | dict) -> None:
        super().__init__()
        self.config = config if isinstance(config, Config) else config_from_dict(config)
        self.save_hyperparameters({"config": to_dict(self.config)})
        self.criterion = build_loss(self.config)
        self.model: torch.nn.Module | None = None
        self.param_report: dict[str, tuple[int, int]] = {}
        self.best_score: float | None = None
        self.val_history: list[dict[str, float]] = []
        """Validation metrics of each validation run, in order (the first is before training with
        trainer.validate_first)."""
        self._fit_start = 0.0
        # model.cache_features: the frozen encoder's feature cache, opened at fit start
        self._cached_encoder = None
        self._val_scores = ValidationScores(self.criterion.term_names)
        self.last_val_prediction: torch.Tensor | None = None
        """[1, T, N, S, S] bool: clip 0 of the last validation batch, predicted (mask logits > 0)."""
        self._reported = False

    # ---- model ---------------------------------------------------------------------------------------------
    def build(self, load_weights: bool = True) -> None:
        """Build SAM 2 from the config (and its checkpoint when `load_weights`), freeze what is not trainable,
        and report the parameter counts."""
        from sam2train.model.build import build_for_training, format_parameter_report

        self.model, self.param_report = build_for_training(self.config.model, load_weights)
        log.info(
            "SAM 2 parameters (device: %s):\n%s", self.device, format_parameter_report(self.param_report)
        )

    def setup(self, stage: str) -> None:
        from sam2train.model.feature_cache import check_cache_allowed
        from sam2train.train.chunked import check_object_chunk

        check_object_chunk(self.config)
        check_cache_allowed(self.config)  # before building: a refused cache must not cost a model load
        if self.model is None:
            self.build()
        if self.config.model.compile_image_encoder and self.trainer is not None:
            from sam2train.model.memory_saving import compile_image_encoder, image_encoder_compiled

            if not image_encoder_compiled(self.model):
                compile_image_encoder(self.model, device=self.trainer.strategy.root_device)
        if self.config.model.compile_memory_attention and self.trainer is not None:
            from sam2train.model.memory_saving import compile_memory_attention, memory_attention_compiled

            if not memory_attention_compiled(self.model):
                compile_memory_attention(self.model, device=self.trainer.strategy.root_device)
        if self.trainer is not None and self.trainer.is_global_zero and not self._reported:
            self._reported = True
            total = sum(t for t, _ in self.param_report.values())
            trainable = sum(tr for _, tr in self.param_report.values())
            device = self.trainer.strategy.root_device
            print(f"sam2train: {total:,} parameters, {trainable:,} trainable, device {device}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # weights come from the checkpoint itself: build the network without reading model.checkpoint
        if self.model is None:
            self.build(load_weights=False)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        source = f"--ckpt {self._trainer.ckpt_path}" if self._trainer is not None else "checkpoint"
        check_format(checkpoint, source)
        if fitting:  # before Lightning restores the optimizer, which fails with a stack trace or not at all
            check_optimizer_groups(checkpoint, param_groups(self.model, self.config.optimizer), source)
        resumed = restore_resume_state(checkpoint, fitting=fitting)
        if resumed is not None and fitting:  # the summary and final metrics cover the whole run
            self.val_history = list(resumed.get("val_history", []))
            self.best_score = resumed.get("best_score")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.config)
        save_resume_state(checkpoint, self.val_history, self.best_score)
        stamp_checkpoint(checkpoint)

    # ---- forward -> loss -> log ----------------------------------------------------------------------------
    def forward(
        self, images: Any, masks: torch.Tensor | None = None, prompts: Prompts | None = None
    ) -> VideoOutput:
        """Run the video pass.

        Accepts a VideoBatch, Meta's `BatchedVideoDatapoint`, or the spec's `(images [B,T,3,H,W],
        masks [B,T,N,H,W], prompts)` where prompts default to the first-frame masks. Returns a VideoOutput
        (mask logits [B,T,N,H,W] at the input resolution, IoU predictions, object-score logits).
        """
        from sam2train.model.video import run_video

        batch = as_video_batch(images, masks, prompts)
        assert self.model is not None, "call setup() or build() first"
        return run_video(
            self.model,
            batch,
            bptt=self.config.model.bptt,
            mask_prompt_passthrough=self.config.model.mask_prompt_passthrough,
            prompts_cfg=self.config.prompts if self.training else None,
            encoder=self._cached_encoder,
        )

    def compute_loss(self, out: VideoOutput, batch: VideoBatch) -> LossOutput:
        """The configured loss (`loss.type`) on the entries that have a prediction."""
        return self.criterion.video_loss(out, batch)

    def training_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        if self.config.model.object_chunk is not None:
            return self._object_chunked_step(batch, batch_idx)
        loss = self.compute_loss(self(batch), batch)
        self._log_train(loss, batch)
        return loss.total

    def _object_chunked_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        """`model.object_chunk`: the groups' backward passes run here (`train/chunked.py`); the returned loss has
        the batch's total as value and a backward that only reduces the gradients (and lets the guard see it).
        The gradients are zeroed here, before those passes, instead of between the step and its backward (see
        `optimizer_zero_grad`)."""
        from sam2train.train.chunked import loss_with_every_parameter, object_chunked_backward

        assert self.model is not None
        if batch_idx % self.trainer.accumulate_grad_batches == 0:  # an optimizer step's first micro-batch
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)
        batch = as_video_batch(batch)
        loss = object_chunked_backward(
            self.model, self.criterion, batch, self.config, self._trainer, self._cached_encoder
        )
        self._log_train(loss, batch)
        return loss_with_every_parameter(loss.total, self.model.parameters())

    def _log_train(self, loss: LossOutput, batch: VideoBatch) -> None:
        opts = {"on_step": True, "on_epoch": False, "batch_size": batch.shape[0]}
        self.log("train/total", loss.total.detach(), prog_bar=True, **opts)
        for name, value in loss.terms.items():
            self.log(f"train/{name}", value.detach(), **opts)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, **opts)

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        """Each validation video (or window) is tracked from its prompted first frame, streaming a few frames
        through the encoder at a time; the loss terms and per-object J and F are summed for the epoch."""
        from sam2train.model.video import run_video

        assert self.model is not None
        out = run_video(
            self.model,
            batch,
            bptt=False,
            mask_prompt_passthrough=self.config.model.mask_prompt_passthrough,
            chunk=self.config.model.eval_chunk_frames,
            object_chunk=self.config.model.object_chunk,
        )
        loss = self.compute_loss(out, batch)
        predicted = out.mask_logits > 0
        jf = video_jf(predicted, batch.masks > 0.5, batch.valid & out.active)
        self._val_scores.add(loss, jf, clips=batch.shape[0])
        self.last_val_prediction = predicted[:1]  # clip 0, for the validation pictures (no second pass)
        return loss.total

    def on_validation_epoch_start(self) -> None:
        self._val_scores = ValidationScores(self.criterion.term_names)

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation metrics, summed over batches and ranks (`ValidationScores`), and remember
        the best score of `checkpoint.monitor` (the ModelCheckpoint callback keeps the best checkpoint file)."""
        metrics = self._val_scores.compute(self.trainer.strategy, self.device)
        if not metrics:
            return
        shown = "val/J&F" if "val/J&F" in metrics else "val/total"
        self.log(shown, metrics[shown], prog_bar=True, sync_dist=False)
        self.log_dict({k: v for k, v in metrics.items() if k != shown}, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_history.append(metrics)
            self._update_best(metrics.get(self.config.checkpoint.monitor))

    def _update_best(self, value: float | None) -> None:
        """Remember `value` of `checkpoint.monitor` when it beats the best so far (by `checkpoint.mode`)."""
        if value is None:
            return
        better = self.best_score is None or (
            value < self.best_score if self.config.checkpoint.mode == "min" else value > self.best_score
        )
        if better:
            self.best_score = value

    def on_fit_start(self) -> None:
        self._fit_start = time.time()
        if self.config.model.cache_features:
            from sam2train.model.feature_cache import open_cached_encoder

            # keyed by the encoder's weights: opened once they are final (after a resume's checkpoint load)
            self._cached_encoder = open_cached_encoder(self.model, self.config)

    def on_train_end(self) -> None:
        from sam2train.train.callbacks import write_final_metrics

        if self.trainer.is_global_zero:
            write_final_metrics(self.trainer, self, wall_time=time.time() - self._fit_start)

    # ---- optimisation --------------------------------------------------------------------------------------
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Lightning zeroes the gradients after the training step, before its backward; with
        `model.object_chunk` the step has already added its groups' gradients, and zeroed them before
        (`_object_chunked_step`)."""
        if self.config.model.object_chunk is None:
            optimizer.zero_grad()

    def configure_optimizers(self) -> Any:
        """AdamW/Adam over the parameter groups of `optim.param_groups` (encoder lr, Hiera layer decay, no weight
        decay on biases and norms) and the warmup + cosine/step schedule of `optim.build_scheduler`."""
        assert self.model is not None, "call setup() or build() first"
        sch_cfg = self.config.scheduler
        device = next((p.device.type for p in self.model.parameters() if p.requires_grad), "cpu")
        fused = use_fused_optimizer(self.config, device)  # optimizer.fused: null = on CUDA
        optimizer = build_optimizer(self.model, self.config.optimizer, fused=fused)
        # the trainer's epoch length is read only when epoch lengths must become steps (it may load data)
        steps_per_epoch = trainer_steps_per_epoch(self.trainer) if needs_steps_per_epoch(sch_cfg) else 1
        scheduler = build_scheduler(optimizer, sch_cfg, steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
