"""What a run shows and writes as it goes: the CSV log that a resumed run appends to, a training-log interval that
fits a short run, and progress bars with sensible fields (the learning rate readable, no `v_num`, the last epoch the
run will reach)."""

from __future__ import annotations

import csv
import logging
import math
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger("sam2train")

__all__ = [
    "LogInterval",
    "ResumableCSVLogger",
    "RunRichProgressBar",
    "RunTQDMProgressBar",
    "bar_metrics",
    "epoch_description",
]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, which deletes an existing `metrics.csv` with a warning, kept for a resumed run: the
    rows logged before the checkpoint's step stay (later ones, from after the checkpoint, are dropped) and new rows
    are appended. A new run in a folder that has a `metrics.csv` replaces it with one line saying so."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self._keep_before = keep_before  # read by _check_log_dir_exists, which the parent's __init__ calls
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self._keep_before is None:
            log.warning("%s: a new run in this run folder: its metrics.csv is replaced", self.log_dir)
            os.remove(path)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = sorted(reader.fieldnames or [])  # Lightning's order: new rows go under the same columns
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self._keep_before]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose run folder a resumed run shares: `resume_step` (the checkpoint's global step) keeps the
    rows logged before it; None starts the log afresh, without Lightning's "will be deleted" warning."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._resume_step)
        return self._experiment


class LogInterval(L.Callback):
    """Training rows for every run: `trainer.log_every_n_steps` is lowered to half the batches the run trains in
    an epoch (or in all, when `max_steps` ends it sooner), so a short run logs at least two rows."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        if trainer.max_steps > 0:
            batches = min(batches, trainer.max_steps * trainer.accumulate_grad_batches)
        if math.isfinite(batches) and trainer.log_every_n_steps > 0:
            trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, int(batches) // 2))


def bar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The progress bar's fields: without Lightning's `v_num` (the run folder is printed), the learning rate in
    scientific notation (`1.0e-04`, where the bar's 3 decimals show 0.000)."""
    shown = {k: v for k, v in metrics.items() if k != "v_num"}
    if "lr" in shown:
        lr = shown["lr"]
        shown["lr"] = f"{float(lr.item() if hasattr(lr, 'item') else lr):.1e}"
    return shown


def epoch_description(trainer: Any, epoch: int) -> str:
    """`Epoch 1/4`: the epoch and the last one the run reaches, by `max_epochs` or, sooner, by `max_steps`."""
    last = trainer.max_epochs - 1 if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    batches = trainer.num_training_batches
    if trainer.max_steps > 0 and math.isfinite(batches) and batches > 0:
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        by_steps = math.ceil(trainer.max_steps / steps_per_epoch) - 1
        last = by_steps if last is None else min(last, by_steps)
    return f"Epoch {epoch}" if last is None else f"Epoch {epoch}/{last}"


class RunRichProgressBar(RichProgressBar):
    """Lightning's rich bar with `bar_metrics` fields and `epoch_description`."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return bar_metrics(super().get_metrics(trainer, pl_module))

    def _get_train_description(self, current_epoch: int) -> str:
        text = epoch_description(self.trainer, current_epoch)
        return f"{text:{len(self.validation_description)}}"  # as Lightning pads it: no flicker


class RunTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with `bar_metrics` fields and `epoch_description`."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return bar_metrics(super().get_metrics(trainer, pl_module))

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_description(trainer, trainer.current_epoch))
