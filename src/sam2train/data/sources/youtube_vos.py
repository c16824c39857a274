"""YouTube-VOS reader: DAVIS palette folders (davis.py reads them) checked against `meta.json`.

Layout (the train split):
    <root>/JPEGImages/<video>/<frame>.jpg      frames (every 5th frame, or all of them in `train_all_frames`)
    <root>/Annotations/<video>/<frame>.png     palette PNGs every 5th frame, pixel value = object id
    <root>/meta.json                           {"videos": {"<video>": {"objects": {"1": {"category": "person",
                                                "frames": ["00000", "00005", ...]}}}}}
`meta.json` lists each object's frames; objects may first appear after the first annotated frame. The reader
takes its videos from `meta.json` and checks the files against it (`meta_problems`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import VideoCheck
from sam2train.data.sources.davis import DavisSource
from sam2train.data.sources.files import finish, select_videos, subdirs
from sam2train.data.sources.json_rle import read_json, require
from sam2train.errors import DataError

META_FILE = "meta.json"
_SHOWN = 5
"""Frame names listed in one message before '...'."""


@dataclass(frozen=True)
class MetaObject:
    """One object of a video in `meta.json`."""

    category: str
    frames: tuple[str, ...]
    """Stems of the frames it is visible on."""


def read_meta(path: Path, data: Any = None) -> dict[str, dict[int, MetaObject]]:
    """video -> {object id -> MetaObject} from a YouTube-VOS `meta.json`; DataError naming the file, video and
    key for anything malformed. `data`: its parsed content, or None to read it."""
    data = read_json(path) if data is None else data
    require(data, ("videos",), str(path))
    videos = data["videos"]
    if not isinstance(videos, dict):
        raise DataError(f"{path}: 'videos' must map video names to {{'objects': ...}}")
    out: dict[str, dict[int, MetaObject]] = {}
    for name, entry in videos.items():
        where = f"{path}: videos['{name}']"
        require(entry, ("objects",), where)
        if not isinstance(entry["objects"], dict):
            raise DataError(f"{where}: 'objects' must map object ids to {{'category', 'frames'}}")
        objects: dict[int, MetaObject] = {}
        for key, obj in entry["objects"].items():
            at = f"{where}: objects['{key}']"
            if not (isinstance(key, str) and key.isdigit() and int(key) > 0):
                raise DataError(f"{at}: object ids must be ints > 0 (the PNG's pixel value)")
            if int(key) in objects:
                raise DataError(f"{at}: object id {int(key)} is listed twice")
            require(obj, ("frames",), at)
            frames = obj["frames"]
            if not (isinstance(frames, list) and all(isinstance(f, str) and f for f in frames)):
                raise DataError(f"{at}: 'frames' must be a list of frame names such as '00005'")
            category = obj.get("category")
            objects[int(key)] = MetaObject("" if category is None else str(category), tuple(frames))
        out[str(name)] = objects
    return out


def _names(stems: Sequence[str]) -> str:
    return ", ".join(stems[:_SHOWN]) + (f" ... ({len(stems)} in all)" if len(stems) > _SHOWN else "")


def meta_problems(
    objects: dict[int, MetaObject],
    frames: Sequence[Path],
    img_dir: Path,
    mask_dir: Path,
    stem_ids: dict[str, set[int]],
) -> list[tuple[str, Path, str]]:
    """Where a video's files disagree with its `meta.json` entry, as (severity, file, message).

    Errors (the reader stops): a listed frame without its image or its PNG, an object in no PNG, a PNG value
    that is no listed object. Warnings: an object missing from the PNG of a frame listed for it, or present on
    a frame not listed for it. `stem_ids`: the object ids in each PNG, by frame stem.
    """
    out: list[tuple[str, Path, str]] = []
    have = {p.stem for p in frames}
    listed: dict[str, int] = {}
    for obj_id, obj in sorted(objects.items()):
        for stem in obj.frames:
            listed.setdefault(stem, obj_id)
    first_only = bool(objects) and all(o.frames and o.frames[0] in stem_ids for o in objects.values())
    hint = " (the valid and test splits annotate only each object's first frame: train on the train split)"
    for stem in sorted(listed):
        what = f"frame {stem} is listed in {META_FILE} (object {listed[stem]}) but has no"
        if stem not in have:
            out.append(("error", img_dir / f"{stem}.jpg", f"{what} image"))
        elif stem not in stem_ids:
            out.append(("error", mask_dir / f"{stem}.png", f"{what} mask PNG" + (hint if first_only else "")))
    found = set().union(*stem_ids.values()) if stem_ids else set()
    for obj_id, obj in sorted(objects.items()):
        if obj_id not in found:
            category = f" ('{obj.category}')" if obj.category else ""
            message = f"object {obj_id}{category} is listed in {META_FILE} but is in none of its {len(stem_ids)} PNGs"
            out.append(("error", mask_dir, message))
    for obj_id in sorted(found - set(objects)):
        stem = min(s for s, ids in stem_ids.items() if obj_id in ids)
        message = (
            f"mask holds object id {obj_id}, which {META_FILE} does not list (it lists {sorted(objects)})"
        )
        out.append(("error", mask_dir / f"{stem}.png", message))
    for obj_id, obj in sorted(objects.items()):
        if obj_id not in found:
            continue
        on = set(obj.frames)
        missing = [s for s in obj.frames if s in stem_ids and obj_id not in stem_ids[s]]
        unlisted = sorted(s for s, ids in stem_ids.items() if obj_id in ids and s not in on)
        if missing:
            message = f"object {obj_id} is listed on frames whose PNG does not hold it: {_names(missing)}"
            out.append(("warning", mask_dir / f"{missing[0]}.png", message))
        if unlisted:
            message = (
                f"object {obj_id} is in PNGs of frames {META_FILE} does not list for it: {_names(unlisted)}"
            )
            out.append(("warning", mask_dir / f"{unlisted[0]}.png", message))
    return out


class YouTubeVosSource(DavisSource):
    """A YouTube-VOS split: the videos `meta.json` lists, read as DAVIS palette folders (see the module
    docstring for the layout). Frame index: the frame's number (`00005` is frame 5); clips are made of the
    annotated frames. Object id: the PNG value, which is the `meta.json` object key.

    Every listed video must have both folders, every frame listed for an object its JPG and PNG, and every object
    of `meta.json` must be in some PNG and every PNG value in `meta.json` (DataError naming the file and video).
    A video listed without objects and without masks is skipped, as are folders `meta.json` does not list (both
    in `skipped` and in one warning). `categories` maps video -> object id -> category.
    """

    layout = (
        "YouTube-VOS layout: <root>/JPEGImages/<video>/<frame>.jpg, <root>/Annotations/<video>/<frame>.png "
        f"and <root>/{META_FILE}"
    )

    def __init__(
        self,
        root: str | Path,
        videos: Sequence[str] | None = None,
        meta: Any = None,
        sink: ProblemSink = LOADING,
    ):
        """`meta`: the parsed content of `meta.json`, or None to read it."""
        self._open_root(root, None, sink)
        self.meta_path = self.path / META_FILE
        try:
            self._meta = read_meta(self.meta_path, meta)
            names = select_videos(sorted(self._meta), videos, self.meta_path)
        except DataError as exc:
            # checking names the file in its own column
            sink.fatal(str(exc).removeprefix(f"{self.meta_path}: "), self.meta_path, loading=str(exc))
        found = self._scan_videos(self._present(names, sink), sink)
        for check in self.checked:
            if check.skip and self._meta[check.name]:
                message = f"{META_FILE} lists objects {sorted(self._meta[check.name])}, but {check.skip}"
                where = f"{self.mask_root / check.name}: video {check.name}"
                sink.error(message, check.folder, check.name, loading=f"{where}: {message}")
                check.broken = True
        if videos is None:
            self._unlisted(sink)
        self.categories = {n: {k: o.category for k, o in self._meta[n].items()} for n in names}
        del self._meta  # frame lists are only needed to check; workers get the source without them
        self.videos = finish(found, self.skipped, self.path, sink)

    def _present(self, names: list[str], sink: ProblemSink) -> list[str]:
        """The listed videos that have both folders (a video listed with objects must)."""
        present = []
        for name in names:
            missing = False
            for folder, what in ((self.image_root / name, "frames"), (self.mask_root / name, "masks")):
                if self._meta[name] and not folder.is_dir():
                    loading = (
                        f"{self.meta_path}: video {name} is listed, but its {what} folder {folder} is missing"
                    )
                    sink.error(
                        f"folder not found, but {META_FILE} lists the video", folder, name, loading=loading
                    )
                    missing = True
            if not missing:
                present.append(name)
        return present

    def _unlisted(self, sink: ProblemSink) -> None:
        """Folders `meta.json` does not list are skipped."""
        on_disk = {d.name for d in subdirs(self.image_root)} | {d.name for d in subdirs(self.mask_root)}
        for name in sorted(on_disk - set(self._meta)):
            self.skipped[name] = f"not listed in {self.meta_path}"
            folder = self.image_root / name if (self.image_root / name).is_dir() else self.mask_root / name
            sink.warning(f"video skipped: not listed in {META_FILE}", folder, name, loading="")

    def _check_video(
        self, check: VideoCheck, frames: list[Path], stem_ids: dict[str, set[int]], sink: ProblemSink
    ) -> bool:
        objects = self._meta[check.name]
        if not objects:
            return True
        start = len(sink.problems)
        img_dir, mask_dir = self.image_root / check.name, self.mask_root / check.name
        for severity, file, message in meta_problems(objects, frames, img_dir, mask_dir, stem_ids):
            if severity == "error":
                sink.error(message, file, check.name, loading=f"{file}: video {check.name}: {message}")
            else:
                sink.warning(message, file, check.name, loading="")
        return not sink.errors_of(start)
