"""Validation metrics of an epoch: sums over batches, reduced over ranks once at the end.

Losses are means over clips; J and F are means over objects of each object's mean over its frames, and
J&F = (J + F) / 2, as the DAVIS evaluators compute them (at the model's input resolution here). `MonitorCheck`
makes sure at setup that the monitored metric will be logged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sam2train.config.sections import closest
from sam2train.errors import ConfigError, DataError
from sam2train.losses import LossOutput


class ValidationScores:
    """Per-epoch sums of the loss terms (weighted by clips) and of per-object J and F."""

    def __init__(self, term_names: tuple[str, ...]) -> None:
        self.terms = ("total", *term_names)
        self.keys = (*self.terms, "clips", "J", "F", "objects")
        self.sums = dict.fromkeys(self.keys, 0.0)

    def add(self, loss: LossOutput, jf: tuple[float, float, int], clips: int) -> None:
        """One validation batch of `clips` clips: its loss (a mean over them) and `metrics.video_jf`'s
        (J sum, F sum, objects)."""
        values = {"total": loss.total, **loss.terms}
        for name in self.terms:
            self.sums[name] += float(values[name]) * clips
        j_sum, f_sum, objects = jf
        self.sums["clips"] += clips
        self.sums["J"] += j_sum
        self.sums["F"] += f_sum
        self.sums["objects"] += objects

    def compute(self, strategy: Any, device: torch.device) -> dict[str, float]:
        """`val/<term>`, and `val/J`, `val/F`, `val/J&F` when an object was scored, over every rank's batches
        (`strategy.reduce` sums them); {} when no clip was validated."""
        sums = torch.tensor([self.sums[k] for k in self.keys], dtype=torch.float64, device=device)
        acc = dict(zip(self.keys, strategy.reduce(sums, reduce_op="sum").tolist()))
        if acc["clips"] == 0:
            return {}
        metrics = {f"val/{k}": acc[k] / acc["clips"] for k in self.terms}
        if acc["objects"] > 0:
            j, f = acc["J"] / acc["objects"], acc["F"] / acc["objects"]
            metrics.update({"val/J": j, "val/F": f, "val/J&F": (j + f) / 2})
        return metrics


SCORED = ("val/J", "val/F", "val/J&F")
"""The metrics only a validated frame after an object's prompt frame gives."""


def logged_metrics(term_names: tuple[str, ...]) -> list[str]:
    """Every metric a fit logs: the validation loss terms, J, F and J&F, the training terms and `lr`."""
    terms = ("total", *term_names)
    return [*(f"val/{t}" for t in terms), *SCORED, *(f"train/{t}" for t in terms), "lr", *LOOP_COUNTERS]


LOOP_COUNTERS = ("step", "epoch")
"""Monitors Lightning's ModelCheckpoint supplies itself (a save every N steps keeps them all)."""


def scorable_clips(val_set: Any) -> int:
    """Validation clips with a frame after their first (prompt) frame, where J and F can be scored."""
    return sum(ref.length >= 2 for ref in getattr(val_set, "index", []))


class MonitorCheck(L.Callback):
    """When fit sets up: a monitor (`checkpoint.monitor`, `early_stopping.monitor`) that is never logged is a
    ConfigError, and a J/F monitor over validation clips that have no frame after their prompt frame is a DataError,
    one line each, before any training; were a validation still to log no monitored value (e.g.
    `trainer.limit_val_batches` kept only such clips), a DataError names it instead of Lightning's stack trace."""

    def __init__(self, monitors: dict[str, str]) -> None:
        self.monitors = monitors
        """Config key -> the metric it names."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        known = logged_metrics(getattr(getattr(pl_module, "criterion", None), "term_names", ()))
        for key, name in self.monitors.items():
            if name not in known:
                raise ConfigError(
                    f"config key '{key}': '{name}' is never logged; one of {', '.join(known)}.{closest(name, known)}"
                )
        val_set = getattr(trainer.datamodule, "val_set", None) if trainer.datamodule is not None else None
        needs_scores = [key for key, name in self.monitors.items() if name in SCORED]
        if val_set is not None and needs_scores and scorable_clips(val_set) == 0:
            raise DataError(no_frame_to_score(needs_scores[0], self.monitors[needs_scores[0]]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        for key, name in self.monitors.items():
            if name not in trainer.callback_metrics and name not in LOOP_COUNTERS:
                raise DataError(
                    f"config key '{key}': validation logged no '{name}': "
                    f"{no_frame_to_score(key, name) if name in SCORED else 'no validation clip was scored'}"
                )


def no_frame_to_score(key: str, name: str) -> str:
    """The message of a validation set where J and F have no frame to score."""
    return (
        f"no validation clip has an annotated frame after its prompt frame, so '{name}' ({key}) cannot be "
        "scored: annotate later frames of the validation videos (a prompt-only set cannot be scored), "
        "or monitor val/total"
    )
