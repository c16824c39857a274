"""The one interface every storage format implements (see sources.py for the readers)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import UserError


class DataError(UserError):
    """A problem with the user's data; the message names the file, video or key."""


@dataclass(frozen=True)
class FrameRef:
    """One frame of a video: its index in the video, its image file, and whether it carries masks."""

    index: int
    image: Path
    annotated: bool


@dataclass
class VideoInfo:
    """A video as listed at setup: frames sorted by index (every frame with an image, annotated or not)."""

    name: str
    frames: list[FrameRef]
    size: tuple[int, int]
    """(height, width) of the frames, read from the first frame's header."""
    object_ids: list[int] = field(default_factory=list)
    """Every object id annotated somewhere in the video (sorted)."""

    @property
    def annotated(self) -> list[int]:
        """Positions (into `frames`) of the annotated frames, in order."""
        return [i for i, f in enumerate(self.frames) if f.annotated]

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class FrameMasks:
    """The masks of one annotated frame.

    ids:   [K] int64, object ids (sorted, no 0 and no void id)
    masks: [K, H, W] bool, one binary mask per object, at the frame's size
    void:  [H, W] bool, pixels excluded from the loss (DAVIS 255), all False when the format has none
    """

    ids: np.ndarray
    masks: np.ndarray
    void: np.ndarray

    def get(self, obj_id: int) -> np.ndarray:
        """The object's mask, empty when it is not in this frame."""
        hit = np.nonzero(self.ids == obj_id)[0]
        if len(hit) == 0:
            return np.zeros(self.void.shape, dtype=bool)
        return self.masks[hit[0]]


class VideoSource(ABC):
    """A dataset in one storage format. Construction lists and validates every video (raising DataError that
    names the file); `load_image` / `load_masks` read one frame and are safe to call from data workers."""

    path: Path
    videos: list[VideoInfo]

    @abstractmethod
    def load_image(self, video: VideoInfo, pos: int) -> np.ndarray:
        """Frame at position `pos` of `video` as [H, W, 3] uint8 RGB."""

    @abstractmethod
    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at position `pos`, resized to the frame's size with nearest-neighbour when
        they are off by at most 2 px (with a warning), DataError otherwise."""
