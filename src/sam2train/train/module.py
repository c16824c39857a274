"""SAM2LightningModule: builds SAM 2 at setup, runs the video pass, weighs the loss, logs, and optimises.

The module stays thin: the temporal unroll lives in `model/video.py`, the loss in `losses.py`.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import replace
from typing import Any

import lightning as L
import numpy as np
import torch

from sam2train.batch import Prompts, VideoBatch, as_video_batch
from sam2train.config import Config, config_from_dict, to_dict
from sam2train.errors import NonFiniteLossError
from sam2train.losses.official import SAM2OfficialLoss
from sam2train.losses.training import SAM2TrainingLoss
from sam2train.train.optim import build_optimizer, build_scheduler, needs_steps_per_epoch

log = logging.getLogger("sam2train")

CONFIG_KEY = "sam2train_config"
"""Where a Lightning checkpoint carries its resolved config (also in hyper_parameters['config'])."""
RESUME_KEY = "sam2train_resume"
"""Where a checkpoint carries what a resumed run needs beyond Lightning's state: RNG states, the step guard."""


class SAM2LightningModule(L.LightningModule):
    """Fine-tunes SAM 2 on video clips. The network is at `self.model` (a `SAM2Base`), so checkpoint keys are
    `model.<official key>`."""

    def __init__(self, config: Config | dict) -> None:
        super().__init__()
        self.config = config if isinstance(config, Config) else config_from_dict(config)
        self.save_hyperparameters({"config": to_dict(self.config)})
        self.criterion = build_criterion(self.config)
        self.model: torch.nn.Module | None = None
        self.param_report: dict[str, tuple[int, int]] = {}
        self.best_score: float | None = None
        self.val_history: list[dict[str, float]] = []
        """Validation metrics of each validation run, in order (the first is before training with
        trainer.validate_first)."""
        self._fit_start = 0.0
        self._cached_encoder = (
            None  # model.cache_features: the frozen encoder's feature cache, set at fit start
        )
        self._val_acc: dict[str, float] = {}
        self._reported = False
        self.skipped_steps = 0
        """Optimizer steps skipped for a non-finite loss or gradient (logged as train/skipped_steps)."""
        self._bad_streak = 0
        self._bad_loss: torch.Tensor | None = None  # any non-finite loss since the last optimizer step
        self.updating_weights = False
        """True from the optimizer's update to the end of the batch: an interrupt then leaves no clean state."""

    # ---- model ---------------------------------------------------------------------------------------------
    def build(self, load_weights: bool = True) -> None:
        """Build SAM 2 from the config (and its checkpoint when `load_weights`), freeze what is not trainable,
        and report the parameter counts."""
        from sam2train.model.build import (
            apply_trainable,
            build_model,
            format_parameter_report,
            parameter_report,
        )

        model_cfg = self.config.model
        if load_weights:
            self.model = build_model(model_cfg, device="cpu")
        else:
            with warnings.catch_warnings():  # weights follow from the Lightning checkpoint: not a random init
                warnings.simplefilter("ignore")
                self.model = build_model(replace(model_cfg, checkpoint=None), device="cpu")
        apply_trainable(self.model, self.config.model.trainable_modules)
        if model_cfg.activation_checkpointing:
            from sam2train.model.memory_saving import enable_activation_checkpointing

            enable_activation_checkpointing(self.model)
        self.param_report = parameter_report(self.model)
        log.info(
            "SAM 2 parameters (device: %s):\n%s", self.device, format_parameter_report(self.param_report)
        )

    def setup(self, stage: str) -> None:
        from sam2train.model.feature_cache import check_cache_allowed

        check_cache_allowed(self.config)  # before building: a refused cache must not cost a model load
        if self.model is None:
            self.build()
        if self.config.model.compile_image_encoder and self.trainer is not None:
            from sam2train.model.memory_saving import compile_image_encoder, image_encoder_compiled

            if not image_encoder_compiled(self.model):
                compile_image_encoder(self.model, device=self.trainer.strategy.root_device)
        if self.trainer is not None and self.trainer.is_global_zero and not self._reported:
            self._reported = True
            total = sum(t for t, _ in self.param_report.values())
            trainable = sum(tr for _, tr in self.param_report.values())
            print(
                f"sam2train: {total:,} parameters, {trainable:,} trainable, device {self.trainer.strategy.root_device}"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # weights come from the checkpoint itself: build the network without reading model.checkpoint
        if self.model is None:
            self.build(load_weights=False)
        resume = checkpoint.get(RESUME_KEY)
        if resume is not None and self._trainer is not None and self._trainer.state.fn == "fit":
            self.skipped_steps, self._bad_streak = resume["skipped_steps"], resume["bad_streak"]
            _set_rng_states(resume["rng"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = to_dict(self.config)
        # the RNG states make a resumed run draw the same dropout as an uninterrupted one
        checkpoint[RESUME_KEY] = {
            "skipped_steps": self.skipped_steps,
            "bad_streak": self._bad_streak,
            "rng": _rng_states(),
        }

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, images: Any, masks: torch.Tensor | None = None, prompts: Prompts | None = None):
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

    def _loss(self, out, batch: VideoBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured loss on the entries that have a prediction (objects from their prompt frame on)."""
        if isinstance(self.criterion, SAM2OfficialLoss):
            return self.criterion(
                out.step_multimask_logits,
                out.step_iou_pred,
                out.step_object_score_logits,
                out.step_valid & batch.valid[..., None],
                batch.masks,
                ignore_mask=batch.ignore,
            )
        return self.criterion(
            out.mask_logits,
            batch.masks,
            batch.valid & out.active,
            return_components=True,
            ignore_mask=batch.ignore,
            object_score_logits=out.object_score_logits if self.criterion.object_score_weight > 0 else None,
        )

    def training_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        total, parts = self._loss(self(batch), batch)
        opts = {"on_step": True, "on_epoch": False, "batch_size": batch.shape[0]}
        self.log("train/total", total.detach(), prog_bar=True, **opts)
        for name, value in parts.items():
            self.log(f"train/{name}", value.detach(), **opts)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, **opts)
        # checked in on_before_optimizer_step, once per (accumulated) step: no device sync here
        bad = ~torch.isfinite(total.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when this step's loss or gradient is NaN/Inf: the gradients are dropped, so the
        optimizer leaves weights and its state as they are (the LR schedule still advances, as with GradScaler).
        Under 16-mixed, GradScaler owns infinite gradients (it skips the step and lowers the scale); only a
        non-finite loss counts there."""
        bad = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool)
        self._bad_loss = None
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            if grads:
                bad = bad.to(grads[0].device) | ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        if self.trainer.world_size > 1:  # every rank skips, counts and stops together
            bad = self.trainer.strategy.reduce(bad.float().to(self.device), reduce_op="max") > 0
        if bool(bad):
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self._bad_streak += 1
            self._check_bad_streak()
        else:
            self._bad_streak = 0
            self.updating_weights = True
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def _check_bad_streak(self) -> None:
        limit = self.config.trainer.max_bad_steps
        step = self.trainer.global_step
        if self._bad_streak >= limit:
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"config key 'trainer.max_bad_steps': {limit} optimizer steps in a row (up to step {step}) had a "
                f"NaN/Inf loss or gradient and were skipped; stopped. Last checkpoint (good weights): {ckpt}. "
                "Try a lower optimizer.lr, trainer.precision=32 (or bf16-mixed instead of 16-mixed), "
                "or trainer.gradient_clip_val"
            )
        if self.trainer.is_global_zero:
            log.warning(
                "step %d: non-finite loss or gradient, optimizer step skipped (%d in a row; "
                "trainer.max_bad_steps=%d stops the run)",
                step,
                self._bad_streak,
                limit,
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.updating_weights = False

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> torch.Tensor:
        """Each validation video (or window) is tracked from its prompted first frame, streaming a few frames
        through the encoder at a time; the loss terms and per-object J and F are accumulated for the epoch."""
        from sam2train.model.video import run_video

        assert self.model is not None
        out = run_video(
            self.model,
            batch,
            bptt=False,
            mask_prompt_passthrough=self.config.model.mask_prompt_passthrough,
            chunk=self.config.model.eval_chunk_frames,
        )
        total, parts = self._loss(out, batch)
        bsz = batch.shape[0]
        acc = self._val_acc
        for name, value in {"total": total, **parts}.items():
            acc[name] = acc.get(name, 0.0) + float(value) * bsz
        acc["clips"] = acc.get("clips", 0.0) + bsz
        j_sum, f_sum, objects = video_jf(out.mask_logits > 0, batch.masks > 0.5, batch.valid & out.active)
        acc["J"] = acc.get("J", 0.0) + j_sum
        acc["F"] = acc.get("F", 0.0) + f_sum
        acc["objects"] = acc.get("objects", 0.0) + objects
        return total

    def on_validation_epoch_start(self) -> None:
        self._val_acc: dict[str, float] = {}

    def on_validation_epoch_end(self) -> None:
        """Aggregate the epoch's validation metrics over batches and ranks, log them, and remember the best score
        of `checkpoint.monitor` (the ModelCheckpoint callback keeps the best checkpoint file).

        Losses are means over clips; J and F are means over objects of each object's mean over its frames, and
        J&F = (J + F) / 2, as the DAVIS evaluators compute them (at the model's input resolution here)."""
        keys = ["total", *LOSS_TERMS, "clips", "J", "F", "objects"]
        sums = torch.tensor(
            [self._val_acc.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device
        )
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        acc = dict(zip(keys, sums.tolist()))
        if acc["clips"] == 0:
            return
        terms = [k for k in ("total", *LOSS_TERMS) if k in self._val_acc]
        metrics = {f"val/{k}": acc[k] / acc["clips"] for k in terms}
        if acc["objects"] > 0:
            j, f = acc["J"] / acc["objects"], acc["F"] / acc["objects"]
            metrics.update({"val/J": j, "val/F": f, "val/J&F": (j + f) / 2})
        shown = "val/J&F" if "val/J&F" in metrics else "val/total"
        self.log(shown, metrics[shown], prog_bar=True, sync_dist=False)
        self.log_dict({k: v for k, v in metrics.items() if k != shown}, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        self.val_history.append(metrics)
        ck = self.config.checkpoint
        value = metrics.get(ck.monitor)
        if value is None:
            return
        if self.best_score is None or (
            value < self.best_score if ck.mode == "min" else value > self.best_score
        ):
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
    def configure_optimizers(self) -> Any:
        """AdamW/Adam over the parameter groups of `optim.param_groups` (encoder lr, Hiera layer decay, no weight
        decay on biases and norms) and the warmup + cosine/step schedule of `optim.build_scheduler`."""
        assert self.model is not None, "call setup() or build() first"
        sch_cfg = self.config.scheduler
        optimizer = build_optimizer(self.model, self.config.optimizer)
        # the trainer's epoch length is read only when epoch lengths must become steps (it may load data)
        steps_per_epoch = self._steps_per_epoch() if needs_steps_per_epoch(sch_cfg) else 1
        scheduler = build_scheduler(optimizer, sch_cfg, steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _steps_per_epoch(self) -> int:
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and math.isfinite(total):
            return max(1, int(total // trainer.max_epochs))
        return max(1, int(total))


LOSS_TERMS = ("bce", "dice", "iou", "temporal", "object_score", "mask", "class")
"""Every term either loss reports (`sam2train`: bce ... object_score; `sam2`: mask, dice, iou, class)."""


def build_criterion(config: Config) -> torch.nn.Module:
    """The loss `loss.type` names: the spec's SAM2TrainingLoss, or Meta's (`SAM2OfficialLoss`, loss.sam2)."""
    loss = config.loss
    if loss.type == "sam2":
        return SAM2OfficialLoss.from_config(loss.sam2)
    return SAM2TrainingLoss(
        bce_weight=loss.bce_weight,
        dice_weight=loss.dice_weight,
        iou_weight=loss.iou_weight,
        temporal_weight=loss.temporal_weight,
        smooth=loss.smooth,
        object_score_weight=loss.object_score_weight,
    )


def video_jf(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, int]:
    """Sums over the scored objects of each object's mean J and mean F, and the number of objects.

    pred, gt: [B, T, N, H, W] bool; valid: [B, T, N], True from each object's prompt frame on (an object
    appearing later is scored from there). As the DAVIS / YouTube-VOS evaluators do, an object's prompt frame is
    not scored, nor the clip's last frame when another frame is left; an object prompted on the last frame has no
    frame to score and is not counted.
    """
    from sam2train.metrics import sequence_scores

    j_sum = f_sum = 0.0
    count = 0
    t = pred.shape[1]
    for b in range(pred.shape[0]):
        for n in valid[b].any(dim=0).nonzero().flatten().tolist():
            first = int(valid[b, :, n].nonzero()[0]) + 1
            last = t - 1 if t - first >= 2 else t
            if last <= first:
                continue
            frames = slice(first, last)
            scores = sequence_scores(
                pred[b, frames, n : n + 1], gt[b, frames, n : n + 1], skip_first_last=False
            )
            j_sum += float(scores["J"].mean())
            f_sum += float(scores["F"].mean())
            count += 1
    return j_sum, f_sum, count


def _rng_states() -> dict[str, Any]:
    """The global RNG states, as types a `weights_only` checkpoint load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
