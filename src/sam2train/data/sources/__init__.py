"""The storage formats: one reader per format behind THE registry, `READERS`, and `open_source`.

Adding a format is one module (a `VideoSource` whose constructor takes `(path, videos=..., sink=...)`, plus
`images_root` and `data` for JSON formats) and one entry in `READERS`; `detect_format` says when a path is in it.
Every reader reports problems to a `ProblemSink`: loading raises the first as DataError, checking records them all
(`sam2train.data.check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam2train.data.problems import LOADING, ProblemSink, SourceAbandoned
from sam2train.data.sources.base import VideoSource
from sam2train.data.sources.coco_video import CocoVideoSource
from sam2train.data.sources.davis import DavisSource
from sam2train.data.sources.json_rle import read_json
from sam2train.data.sources.sav import SavSource
from sam2train.data.sources.youtube_vos import YouTubeVosSource
from sam2train.errors import DataError

READERS: dict[str, type[VideoSource]] = {
    "davis": DavisSource,
    "coco_video": CocoVideoSource,
    "sav": SavSource,
    "youtube_vos": YouTubeVosSource,
}
"""Format name -> reader class."""
FORMATS = tuple(READERS)
JSON_FORMATS = ("coco_video", "sav")
"""Formats whose frames are found through `images_root` and whose parsed JSON the reader can take as `data`."""


def detect_format(path: Path) -> tuple[str, Any]:
    """(format, parsed JSON or None) for an existing dataset path: a folder with `meta.json` beside JPEGImages/
    and Annotations/ -> youtube_vos; a folder of `*_manual.json` / `*_auto.json` without JPEGImages -> sav;
    another folder -> davis; a JSON -> by its keys."""
    if path.is_dir():
        has_folders = (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir()
        if has_folders and (path / "meta.json").is_file():
            return "youtube_vos", None
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
        raise DataError(f"{path}: looks like COCO but images[0] has no 'video_id'; a video dataset needs one")
    keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise DataError(
        f"{path}: unknown JSON layout (top level: {keys}); expected COCO-video ('images', 'annotations' with "
        "'video_id') or SA-V ('masklet')"
    )


def resolve_format(path: Path, format: str | None, images_root: str | Path | None) -> tuple[str, Any]:
    """(format, parsed JSON or None): `format` checked, or detected when None; DataError when the path is
    missing, the format unknown, or `images_root` is given to a folder format."""
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    data = None
    if format is None:
        format, data = detect_format(path)
    if format not in READERS:
        raise DataError(f"{path}: unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    if format not in JSON_FORMATS and images_root is not None:
        raise DataError(
            f"{path}: images_root applies to JSON formats only; {format} frames are in JPEGImages"
        )
    return format, data


def open_source(
    path: str | Path,
    format: str | None = None,
    images_root: str | Path | None = None,
    videos: Sequence[str] | None = None,
) -> VideoSource:
    """The reader for `path`, loading: a DAVIS-layout folder, a YouTube-VOS folder, a COCO-video JSON, or an
    SA-V JSON / folder of JSONs; DataError naming the file on the first problem.

    format: davis | coco_video | sav | youtube_vos, detected when None (see `detect_format`). images_root: where
    JSON formats find frames (default: the JSON's folder). videos: keep only these videos (an unknown name is a
    DataError).
    """
    path = Path(path)
    format, data = resolve_format(path, format, images_root)
    source = read_source(path, format, data, images_root, videos, LOADING)
    assert source is not None  # loading raises instead
    return source


def read_source(
    path: Path,
    format: str,
    data: Any,
    images_root: str | Path | None,
    videos: Sequence[str] | None,
    sink: ProblemSink,
) -> VideoSource | None:
    """Run the reader of `format` (see `resolve_format`) on `path`, reporting to `sink`. A recording sink keeps
    every problem; one the reader cannot go past ends the scan, and None is returned."""
    options: dict[str, Any] = {"videos": videos, "sink": sink}
    if format in JSON_FORMATS:
        options.update(images_root=images_root, data=data)
    try:
        return READERS[format](path, **options)
    except SourceAbandoned:
        return None
    except DataError as exc:
        if not sink.record:
            raise
        sink.error(str(exc).removeprefix(f"{path}: "), path, loading=str(exc))
        return None
