"""The one interface every storage format implements (the readers are the other modules of this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sam2train.errors import ConfigError

if TYPE_CHECKING:
    from sam2train.config import Config


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


@dataclass
class VideoCheck:
    """What a reader learned about one listed video, for the checks every format shares (`check-data`)."""

    name: str
    folder: Path
    """Where whole-video problems point: the frames folder, or the JSON."""
    frames: int = 0
    annotated: list[set[int]] = field(default_factory=list)
    """Object ids on each annotated frame, in frame order."""
    skip: str | None = None
    """Why the reader leaves the video out."""
    broken: bool = False
    """Its errors are listed already; the shared checks leave it alone."""
    binary: bool = False
    """Label PNGs holding only 0 and 255 (DAVIS-2016): 255 is object 1."""
    void_masks: int = 0
    """Masks with void (255) pixels."""


class VideoSource(ABC):
    """A dataset in one storage format. Construction lists and validates every video, reporting each problem
    to its sink (by default raising DataError that names the file); `load_image` / `load_masks` read one frame
    and are safe to call from data workers. `checked`: one VideoCheck per listed video, usable or not."""

    path: Path
    videos: list[VideoInfo]
    checked: list[VideoCheck]
    still_images = False
    """True for image datasets: each `VideoInfo` is one annotated image, made into a clip by `data.image_clip`."""

    @abstractmethod
    def load_image(self, video: VideoInfo, pos: int) -> np.ndarray:
        """Frame at position `pos` of `video` as [H, W, 3] uint8 RGB."""

    @abstractmethod
    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at position `pos`, resized to the frame's size with nearest-neighbour when
        they are off by at most 2 px (with a warning), DataError otherwise."""


@dataclass(frozen=True)
class SourceSpec:
    """One configured source: `data.train_path`, an entry of `data.train`, or `data.val_path`."""

    path: str
    format: str | None
    images_root: str | None
    videos: tuple[str, ...] | None
    weight: float
    name: str
    """Label in logs and errors: the entry's `name`, else the path's last part."""
    key: str
    """The config key that sets it: data.train_path, data.train[i] or data.val_path."""

    @property
    def where(self) -> str:
        """How messages name the source: `data.train[1] (ytvos)`, or the key alone for a single path."""
        return f"{self.key} ({self.name})" if self.key.startswith("data.train[") else self.key


def configured_sources(cfg: Config, train: bool) -> list[SourceSpec]:
    """The sources of the train (or val) split: every entry of `data.train` when it is set, else
    `data.train_path` with `data.train_videos`, `data.format` and `data.images_root` (val: `data.val_path`);
    empty when the split is not configured. Setting both `data.train` and `data.train_path` is an error, as are
    two entries with one name."""
    data = cfg.data
    if not train:
        if data.val_path is None:
            return []
        videos = tuple(data.val_videos) if data.val_videos is not None else None
        return [
            SourceSpec(
                str(data.val_path),
                data.format,
                data.images_root,
                videos,
                1.0,
                Path(data.val_path).name,
                "data.val_path",
            )
        ]
    if not data.train:
        if data.train_path is None:
            return []
        videos = tuple(data.train_videos) if data.train_videos is not None else None
        name = Path(data.train_path).name
        return [
            SourceSpec(
                str(data.train_path), data.format, data.images_root, videos, 1.0, name, "data.train_path"
            )
        ]
    if data.train_path is not None or data.train_videos is not None:
        raise ConfigError(
            "config keys 'data.train' and 'data.train_path'/'data.train_videos' are both set: data.train lists "
            "every training source, so set data.train_path and data.train_videos to null"
        )
    specs: list[SourceSpec] = []
    for i, entry in enumerate(data.train):
        name = entry.name or Path(entry.path).name
        videos = tuple(entry.videos) if entry.videos is not None else None
        spec = SourceSpec(
            str(entry.path),
            entry.format,
            entry.images_root,
            videos,
            float(entry.weight),
            name,
            f"data.train[{i}]",
        )
        twin = next((s for s in specs if s.name == name), None)
        if twin is not None:
            raise ConfigError(
                f"config keys '{twin.key}' and '{spec.key}' are both named '{name}': give one a distinct 'name'"
            )
        specs.append(spec)
    return specs
