"""What the image readers share (`coco_images`, `sa1b`, `image_folder`): each usable image is a `VideoInfo` of one
annotated frame (the source's `still_images` is True, and `data.image_clip` makes it a clip), its masks can be read
for the tracked objects only (an SA-1B image holds about a hundred), and the images left out are listed once.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2train.data.problems import ProblemSink
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoInfo
from sam2train.data.sources.files import MAX_SHOWN, ImageFileSource, plural
from sam2train.errors import DataError


class StillImageSource(ImageFileSource):
    """A dataset of annotated images: `videos` holds one single-frame VideoInfo per usable image (its name is the
    image's), `skipped` the images left out and why."""

    still_images = True

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Every object of the image (pos must be 0)."""
        self._annotated_frame(video, pos)
        return self.load_objects(video, video.object_ids)

    @abstractmethod
    def load_objects(self, video: VideoInfo, ids: Sequence[int]) -> FrameMasks:
        """The masks of objects `ids` of the image ([K, H, W] bool at the image's size) and its void pixels."""


def image_info(name: str, path: Path, size: tuple[int, int], ids: Sequence[int]) -> VideoInfo:
    """The one-frame VideoInfo of an annotated image with objects `ids`."""
    return VideoInfo(name=name, frames=[FrameRef(0, path, True)], size=size, object_ids=sorted(ids))


def finish_images(
    found: list[VideoInfo], skipped: dict[str, str], path: Path, sink: ProblemSink
) -> list[VideoInfo]:
    """Loading: one warning listing the skipped images by reason; DataError when no image is usable. Checking
    leaves both to `check-data` (one warning per skipped image)."""
    if sink.record:
        return found
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    listing = "; ".join(
        f"{plural(len(names), 'image')} {reason}: {', '.join(names[:MAX_SHOWN])}"
        + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")
        for reason, names in by_reason.items()
    )
    if not found:
        raise DataError(f"{path}: no usable image" + (f" ({listing})" if listing else ""))
    if skipped:
        warnings.warn(f"{path}: skipped {listing}", UserWarning, stacklevel=3)
    return found


def no_masks(size: tuple[int, int]) -> FrameMasks:
    """FrameMasks without objects or void."""
    return FrameMasks(np.zeros(0, np.int64), np.zeros((0, *size), bool), np.zeros(size, bool))
