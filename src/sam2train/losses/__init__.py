"""Losses: the pure per-mask terms (`terms.py`), the spec's `SAM2TrainingLoss` (`loss.type: sam2train`) and Meta's
`SAM2OfficialLoss` (`loss.type: sam2`), both behind one interface: `video_loss(VideoOutput, VideoBatch) ->
LossOutput` and the `term_names` it reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sam2train.losses.base import LossOutput, VideoLoss
from sam2train.losses.official import SAM2OfficialLoss
from sam2train.losses.training import SAM2TrainingLoss

if TYPE_CHECKING:
    from sam2train.config import Config

__all__ = ["LossOutput", "SAM2OfficialLoss", "SAM2TrainingLoss", "VideoLoss", "build_loss"]


def build_loss(config: Config) -> VideoLoss:
    """The loss `loss.type` names: the spec's `SAM2TrainingLoss` (the `loss` keys) or Meta's `SAM2OfficialLoss`
    (`loss.sam2`)."""
    if config.loss.type == "sam2":
        return SAM2OfficialLoss.from_config(config.loss.sam2)
    return SAM2TrainingLoss.from_config(config.loss)
