"""Callbacks specific to SAM 2 fine-tuning: config beside the checkpoints, final metrics, curves at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from .config import Config, to_yaml


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the first logger's log_dir (all loggers share it), else the trainer's root dir."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


class SaveConfig(L.Callback):
    """Writes the resolved config as `config.yaml` in the run folder and beside the checkpoints when fit starts."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after ModelCheckpoint's setup, which warns about a non-empty checkpoint folder
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            _ = logger.experiment  # let each logger create its folder before we write into it
        text = to_yaml(self.config)
        folders = {run_dir(trainer)}
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            folders.add(Path(ckpt.dirpath))
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(text)


class CurvesAtEnd(L.Callback):
    """Draws the loss (and J&F where logged) curves from the CSV log to `curves.png` when fit ends."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from .viz import plot_curves

        for logger in trainer.loggers:
            metrics = Path(getattr(logger, "log_dir", "") or "") / "metrics.csv"
            if type(logger).__name__ == "CSVLogger":
                logger.save()
                if metrics.is_file():
                    plot_curves(metrics, run_dir(trainer) / "curves.png")
                return


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def write_final_metrics(trainer: L.Trainer, module: Any, wall_time: float) -> Path:
    """`final_metrics.json` in the run folder: best score and checkpoint, epochs, steps, wall time, parameter
    counts per group, and the last logged value of every metric."""
    ckpt = trainer.checkpoint_callback
    best = {}
    if isinstance(ckpt, ModelCheckpoint):
        best = {
            "monitor": ckpt.monitor,
            "best_score": _plain(ckpt.best_model_score),
            "best_model_path": ckpt.best_model_path or None,
            "last_model_path": ckpt.last_model_path or None,
        }
    report = getattr(module, "param_report", {}) or {}
    payload = {
        **best,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "wall_time_s": round(wall_time, 3),
        "parameters": {
            "total": sum(t for t, _ in report.values()),
            "trainable": sum(tr for _, tr in report.values()),
            "per_group": {k: {"total": t, "trainable": tr} for k, (t, tr) in report.items()},
        },
        "metrics": {k: _plain(v) for k, v in trainer.callback_metrics.items()},
        "validation_history": getattr(module, "val_history", []),
    }
    out = run_dir(trainer) / "final_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return out
