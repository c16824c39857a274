"""The one interface of a training loss: `video_loss(VideoOutput, VideoBatch) -> LossOutput`, and the names of
the terms it reports, so the training loop logs and aggregates any loss without knowing which one it is."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from sam2train.batch import VideoBatch
    from sam2train.model.video import VideoOutput

__all__ = ["LossOutput", "VideoLoss"]


@dataclass
class LossOutput:
    """A loss value and its named terms.

    total: 0-dim float32, the weighted sum that is optimised.
    terms: name -> 0-dim float32, each unweighted and still attached to the graph (detach them to log); the
           keys are the loss's `term_names`, in that order.
    """

    total: Tensor
    terms: dict[str, Tensor]


class VideoLoss(nn.Module, ABC):
    """A loss over the video pass: both `SAM2TrainingLoss` and `SAM2OfficialLoss` implement it."""

    @classmethod
    def from_config(cls, section: Any) -> VideoLoss:
        """The loss of a config section whose fields are named as the constructor's arguments (the config is
        the one place that sets them; `tests/test_losses.py` checks both have the same defaults)."""
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        return cls(**{name: getattr(section, name) for name in names})

    @property
    @abstractmethod
    def term_names(self) -> tuple[str, ...]:
        """The keys of `LossOutput.terms` this loss (with its weights) reports."""

    @abstractmethod
    def normalisers(self, batch: VideoBatch, active: Tensor) -> dict[str, Tensor]:
        """The counts this loss divides its sums by (0-dim float32 each), for the whole `batch` whose entries
        `active` [B, T, N] bool have a prediction. Computed once per step (a collective under DDP when the loss
        averages its count over ranks: every rank calls it once)."""

    @abstractmethod
    def video_loss(
        self, out: VideoOutput, batch: VideoBatch, norms: dict[str, Tensor] | None = None
    ) -> LossOutput:
        """The loss of the video pass `out` against `batch`, on the entries that have a prediction and a
        target (objects from their prompt frame on, valid frames).

        `norms` (from `normalisers` of the whole batch) when `out` tracked only some of the batch's objects: the
        result is then their share of the whole batch's loss, and the shares of disjoint groups of objects sum to
        the loss of all of them (object-chunked training, `model.object_chunk`)."""
