"""The non-finite step guard: an optimizer step whose loss or gradient is NaN/Inf is skipped and counted
(`train/skipped_steps`); `trainer.max_bad_steps` in a row stop the run with `NonFiniteLossError`."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from sam2train.errors import NonFiniteLossError
from sam2train.train.resume import RESUME_KEY

log = logging.getLogger("sam2train")

__all__ = ["NonFiniteGuard", "updating_weights"]


class NonFiniteGuard(L.Callback):
    """Skips the update when a step's loss or gradient is NaN/Inf: the gradients are dropped, so the optimizer
    leaves the weights and its state as they are (the LR schedule still advances, as with GradScaler).

    Every micro-batch's loss is checked when its backward starts (no device sync there); the verdict is taken
    once per (accumulated) optimizer step, reduced over ranks so that every rank skips, counts and stops
    together. Under 16-mixed, GradScaler owns infinite gradients (it skips the step and lowers the scale); only
    a non-finite loss counts there. The counts travel in the checkpoint (`state_dict`), so a resumed run goes on
    counting where it stopped. Register it after any gradient-clipping callback: it judges the gradients as the
    optimizer would see them.
    """

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.skipped_steps = 0
        """Optimizer steps skipped so far (logged as train/skipped_steps)."""
        self.bad_streak = 0
        """Skipped steps in a row up to now."""
        self.updating_weights = False
        """True from the optimizer's update to the end of the batch: an interrupt then leaves no clean state."""
        self._bad_loss: torch.Tensor | None = None  # any non-finite loss since the last optimizer step

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "bad_streak": self.bad_streak}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps, self.bad_streak = state_dict["skipped_steps"], state_dict["bad_streak"]

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # checkpoints written before the guard was a callback kept the counts beside the RNG states
        legacy = checkpoint.get(RESUME_KEY) or {}
        if "skipped_steps" in legacy:
            self.load_state_dict(legacy)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._step_is_bad(trainer, pl_module, optimizer):
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.bad_streak += 1
            self._check_bad_streak(trainer)
        else:
            self.bad_streak = 0
            self.updating_weights = True
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.updating_weights = False

    def _step_is_bad(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> bool:
        """Whether this step's losses (since the last step) or, without GradScaler, its gradients are not
        finite, on any rank."""
        bad = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool)
        self._bad_loss = None
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            if grads:
                bad = bad.to(grads[0].device) | ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        if trainer.world_size > 1:  # every rank skips, counts and stops together
            bad = trainer.strategy.reduce(bad.float().to(pl_module.device), reduce_op="max") > 0
        return bool(bad)

    def _check_bad_streak(self, trainer: L.Trainer) -> None:
        limit = self.max_bad_steps
        step = trainer.global_step
        if self.bad_streak >= limit:
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"config key 'trainer.max_bad_steps': {limit} optimizer steps in a row (up to step {step}) had a "
                f"NaN/Inf loss or gradient and were skipped; stopped. Last checkpoint (good weights): {ckpt}. "
                "Try a lower optimizer.lr, trainer.precision=32 (or bf16-mixed instead of 16-mixed), "
                "or trainer.gradient_clip_val"
            )
        if trainer.is_global_zero:
            log.warning(
                "step %d: non-finite loss or gradient, optimizer step skipped (%d in a row; "
                "trainer.max_bad_steps=%d stops the run)",
                step,
                self.bad_streak,
                limit,
            )


def updating_weights(trainer: L.Trainer) -> bool:
    """Whether the trainer's `NonFiniteGuard` saw this batch's weight update start (and the batch not end)."""
    return any(isinstance(cb, NonFiniteGuard) and cb.updating_weights for cb in trainer.callbacks)
