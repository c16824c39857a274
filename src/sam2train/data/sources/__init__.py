"""The storage formats: one reader per format behind THE registry, `READERS`, and `open_source`.

Adding a format is one module (a `VideoSource` whose constructor takes `(path, videos=..., sink=...)`, plus
`images_root` and `data` for JSON formats) and one entry in `READERS`; `detect_format` says when a path is in it.
Every reader reports problems to a `ProblemSink`: loading raises the first as DataError, checking records them all
(`sam2train.data.check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam2train.data.problems import LOADING, ProblemSink, SourceAbandoned
from sam2train.data.sources.base import VideoSource
from sam2train.data.sources.coco_images import CocoImageSource
from sam2train.data.sources.coco_video import CocoVideoSource
from sam2train.data.sources.davis import DavisSource, layout_dirs
from sam2train.data.sources.files import IMAGE_EXTS
from sam2train.data.sources.image_folder import IMAGES_DIR, MASKS_DIR, ImageFolderSource
from sam2train.data.sources.json_rle import read_json
from sam2train.data.sources.sa1b import Sa1bSource
from sam2train.data.sources.sav import SavSource
from sam2train.data.sources.youtube_vos import YouTubeVosSource
from sam2train.errors import DataError

if TYPE_CHECKING:
    from sam2train.config import DataConfig

READERS: dict[str, type[VideoSource]] = {
    "davis": DavisSource,
    "coco_video": CocoVideoSource,
    "sav": SavSource,
    "youtube_vos": YouTubeVosSource,
    "coco_images": CocoImageSource,
    "sa1b": Sa1bSource,
    "image_folder": ImageFolderSource,
}
"""Format name -> reader class."""
FORMATS = tuple(READERS)
JSON_FORMATS = ("coco_video", "sav", "coco_images")
"""Formats whose frames are found through `images_root` and whose parsed JSON the reader can take as `data`."""
ROOTED_FORMATS = (*JSON_FORMATS, "sa1b")
"""Formats that take `images_root`."""
LAYOUT_FORMATS = ("davis", "image_folder")
"""Formats whose two folders `data.images_dir` / `data.masks_dir` name."""


@dataclass(frozen=True)
class ReadOptions:
    """Reader settings of the config that some formats take (the others ignore them)."""

    images_dir: str | None = None
    masks_dir: str | None = None
    min_predicted_iou: float = 0.0
    min_stability_score: float = 0.0
    max_area_fraction: float = 1.0

    @classmethod
    def from_config(cls, data: DataConfig) -> ReadOptions:
        """The options of `data.images_dir`, `data.masks_dir` and `data.sa1b`."""
        sa1b = data.sa1b
        return cls(
            data.images_dir,
            data.masks_dir,
            sa1b.min_predicted_iou,
            sa1b.min_stability_score,
            sa1b.max_area_fraction,
        )

    def for_format(self, format: str) -> dict[str, Any]:
        """The keyword arguments of the reader of `format`."""
        if format in LAYOUT_FORMATS:
            return {"images_dir": self.images_dir, "masks_dir": self.masks_dir}
        if format == "sa1b":
            return {
                "min_predicted_iou": self.min_predicted_iou,
                "min_stability_score": self.min_stability_score,
                "max_area_fraction": self.max_area_fraction,
            }
        return {}


NO_OPTIONS = ReadOptions()


def _is_image_folder(path: Path, options: ReadOptions) -> bool:
    """`<path>/<images>/` holds image files and no subfolder, beside a masks folder (names as configured, else
    `images` / `masks`, or the DAVIS names)."""
    for images, masks in (
        (options.images_dir or IMAGES_DIR, options.masks_dir or MASKS_DIR),
        layout_dirs(path, options.images_dir, options.masks_dir)[:2],
    ):
        folder = path / images
        if folder.is_dir() and (path / masks).is_dir():
            entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
            if any(p.suffix.lower() in IMAGE_EXTS for p in entries) and not any(p.is_dir() for p in entries):
                return True
    return False


def _is_sa1b(path: Path) -> bool:
    """A folder of `<name>.json` with `<name>.jpg` beside."""
    return any(p.with_suffix(".jpg").is_file() for p in path.glob("*.json"))


def detect_format(path: Path, options: ReadOptions = NO_OPTIONS) -> tuple[str, Any]:
    """(format, parsed JSON or None) for an existing dataset path: a folder with `meta.json` beside JPEGImages/
    and Annotations/ -> youtube_vos; a folder whose images folder holds image files (no video folders) beside a
    masks folder -> image_folder; a folder of `<name>.json` + `<name>.jpg` -> sa1b; a folder of `*_manual.json` /
    `*_auto.json` without JPEGImages -> sav; another folder -> davis; a JSON -> by its keys (COCO with `video_id`
    on its images -> coco_video, without -> coco_images)."""
    if path.is_dir():
        has_folders = (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir()
        if has_folders and (path / "meta.json").is_file():
            return "youtube_vos", None
        if _is_image_folder(path, options):
            return "image_folder", None
        if not (path / "JPEGImages").is_dir() and _is_sa1b(path):
            return "sa1b", None
        if not (path / "JPEGImages").is_dir() and (
            any(path.glob("*_manual.json")) or any(path.glob("*_auto.json"))
        ):
            return "sav", None
        return "davis", None
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: not a dataset folder or a .json file")
    data = read_json(path)
    if isinstance(data, dict) and "masklet" in data:
        return "sav", data
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        images = data["images"]
        if isinstance(images, list) and (
            not images or (isinstance(images[0], dict) and "video_id" in images[0])
        ):
            return "coco_video", data
        if isinstance(images, list) and isinstance(images[0], dict):
            return "coco_images", data
        raise DataError(f"{path}: looks like COCO but images[0] is not an object")
    keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise DataError(
        f"{path}: unknown JSON layout (top level: {keys}); expected COCO-video ('images', 'annotations' with "
        "'video_id'), COCO ('images', 'annotations') or SA-V ('masklet')"
    )


def resolve_format(
    path: Path, format: str | None, images_root: str | Path | None, options: ReadOptions = NO_OPTIONS
) -> tuple[str, Any]:
    """(format, parsed JSON or None): `format` checked, or detected when None; DataError when the path is
    missing, the format unknown, or `images_root` is given to a folder format."""
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    data = None
    if format is None:
        format, data = detect_format(path, options)
    if format not in READERS:
        raise DataError(f"{path}: unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    if format not in ROOTED_FORMATS and images_root is not None:
        raise DataError(
            f"{path}: images_root applies to JSON formats only; {format} frames are in JPEGImages"
        )
    return format, data


def open_source(
    path: str | Path,
    format: str | None = None,
    images_root: str | Path | None = None,
    videos: Sequence[str] | None = None,
    options: ReadOptions = NO_OPTIONS,
) -> VideoSource:
    """The reader for `path`, loading: a DAVIS-layout folder, a YouTube-VOS folder, a COCO-video JSON, an
    SA-V JSON / folder of JSONs, or images (a COCO JSON, an SA-1B folder, an image folder); DataError naming the
    file on the first problem.

    format: one of `FORMATS`, detected when None (see `detect_format`). images_root: where JSON formats and SA-1B
    find images (default: the JSON's folder). videos: keep only these videos or images (an unknown name is a
    DataError). options: folder names and SA-1B thresholds (`ReadOptions.from_config`).
    """
    path = Path(path)
    format, data = resolve_format(path, format, images_root, options)
    source = read_source(path, format, data, images_root, videos, LOADING, options)
    assert source is not None  # loading raises instead
    return source


def read_source(
    path: Path,
    format: str,
    data: Any,
    images_root: str | Path | None,
    videos: Sequence[str] | None,
    sink: ProblemSink,
    options: ReadOptions = NO_OPTIONS,
) -> VideoSource | None:
    """Run the reader of `format` (see `resolve_format`) on `path`, reporting to `sink`. A recording sink keeps
    every problem; one the reader cannot go past ends the scan, and None is returned."""
    kwargs: dict[str, Any] = {"videos": videos, "sink": sink, **options.for_format(format)}
    if format in ROOTED_FORMATS:
        kwargs["images_root"] = images_root
    if format in JSON_FORMATS:
        kwargs["data"] = data
    try:
        return READERS[format](path, **kwargs)
    except SourceAbandoned:
        return None
    except DataError as exc:
        if not sink.record:
            raise
        sink.error(str(exc).removeprefix(f"{path}: "), path, loading=str(exc))
        return None
