"""Validation metrics of an epoch: sums over batches, reduced over ranks once at the end.

Losses are means over clips; J and F are means over objects of each object's mean over its frames, and
J&F = (J + F) / 2, as the DAVIS evaluators compute them (at the model's input resolution here).
"""

from __future__ import annotations

from typing import Any

import torch

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
