"""Video data: sources (one reader per format), clip sampling, transforms, prompts, batches, the datamodule."""

from .batch import Prompts, VideoBatch, VideoSample, collate_videos
from .source_base import DataError

__all__ = ["DataError", "Prompts", "SAM2LightningDataModule", "VideoBatch", "VideoSample", "collate_videos"]


def __getattr__(name: str):
    # the datamodule pulls in Lightning; import it only when asked for
    if name == "SAM2LightningDataModule":
        from .datamodule import SAM2LightningDataModule

        return SAM2LightningDataModule
    raise AttributeError(name)
