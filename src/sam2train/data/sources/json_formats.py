"""COCO-video and SA-V JSON readers (DAVIS folders, shared helpers and `open_source` are in sources.py).

Both check the JSON schema at construction (every required key, every segmentation's type and size, naming the
file and the entry); the full decode check of compressed RLE strings runs when a frame's masks are loaded.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam2train.data.sources.base import FrameMasks, FrameRef, VideoInfo
from sam2train.data.sources.davis import (
    ImageFileSource,
    check_frame_sizes,
    finish,
    mask_needs_resize,
    resize_nearest,
    select_videos,
    sort_stems,
    stack_masks,
)
from sam2train.errors import DataError

_RLE_CHARS = re.compile(r"[0-o]*")
"""pycocotools writes compressed counts with the characters chr(48)..chr(111)."""
SAV_FRAMES_FPS = 24
"""Frame rate of extracted SA-V JPEGs; a JSON `fps` gives the annotation rate (Meta's `frames_fps`)."""
SAV_ANN_EVERY = 4
"""SA-V annotates every 4th frame (6 fps of 24) when the JSON has no `fps`."""


# ---------------------------------------------------------------------------------------------- JSON and RLE
def read_json(path: Path) -> Any:
    """Parse a JSON file; DataError naming it when missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"JSON file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def require(entry: Any, keys: Sequence[str], where: str) -> None:
    """DataError naming `where` and the first missing key."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with keys {list(keys)}, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise DataError(f"{where}: missing key '{key}'")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: Path, key: str, i: int, entry: Any) -> str:
    """How errors name a JSON list entry: `<file>: annotations[3] (id=7)`."""
    has_id = isinstance(entry, dict) and "id" in entry
    return f"{path}: {key}[{i}]" + (f" (id={entry['id']})" if has_id else "")


def check_segmentation(seg: Any, where: str, polygons: bool = True) -> tuple[int, int] | None:
    """Eager schema check of a COCO segmentation: an RLE dict (compressed string or uncompressed run list) or,
    when `polygons`, a list of polygons. Returns the RLE's (height, width), or None for polygons."""
    if isinstance(seg, dict):
        require(seg, ("size", "counts"), f"{where}: RLE segmentation")
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
            raise DataError(f"{where}: malformed RLE: 'size' must be [height, width], got {size!r}")
        h, w = size
        if isinstance(counts, str):
            if not counts or not _RLE_CHARS.fullmatch(counts) or (ord(counts[-1]) - 48) & 0x20:
                raise DataError(f"{where}: malformed RLE: 'counts' is not a compressed RLE string")
        elif isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
                raise DataError(f"{where}: malformed RLE: runs must be ints >= 0 summing to {h}x{w}={h * w}")
        else:
            raise DataError(f"{where}: malformed RLE: 'counts' must be a string or a list of ints")
        return h, w
    if polygons and isinstance(seg, list):
        for poly in seg:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
                raise DataError(
                    f"{where}: malformed polygon: each must be [x0, y0, x1, y1, ...] (>= 3 points)"
                )
        return None
    kind = "an RLE dict or a list of polygons" if polygons else "an RLE dict or null"
    raise DataError(f"{where}: segmentation must be {kind}, got {type(seg).__name__}")


def rle_counts(counts: str) -> list[int]:
    """Run lengths of pycocotools' compressed RLE string (5-bit groups; runs after the second are deltas)."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("string ends inside a run")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _area(seg: dict) -> int:
    counts = seg["counts"]
    return int(sum(counts[1::2])) if isinstance(counts, list) else int(mask_utils.area(seg))


def decode_segmentation(seg: Any, frame_hw: tuple[int, int], where: str) -> np.ndarray:
    """A checked segmentation as [h, w] bool: an RLE at its own size, polygons at the frame's size."""
    if isinstance(seg, dict):
        h, w = seg["size"]
        counts = seg["counts"]
        try:
            runs = rle_counts(counts) if isinstance(counts, str) else counts
        except ValueError as exc:
            raise DataError(f"{where}: malformed RLE: {exc}") from None
        if min(runs, default=0) < 0 or sum(runs) != h * w:
            raise DataError(f"{where}: malformed RLE: runs sum to {sum(runs)}, not {h}x{w}={h * w}")
        rle = seg if isinstance(counts, str) else mask_utils.frPyObjects(seg, h, w)
    elif not seg:
        return np.zeros(frame_hw, dtype=bool)
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, *frame_hw))
    try:
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: cannot decode segmentation: {exc}") from None


# ---------------------------------------------------------------------------------------------- COCO video
_Ann = tuple[int, Any, str, tuple[int, int] | None]
"""(object id, segmentation, where errors point, RLE (height, width) or None for polygons)."""


class CocoVideoSource(ImageFileSource):
    """A COCO-style video JSON: `images` (`id`, `file_name` relative to `images_root`, `video_id`,
    `order_in_video`), `annotations` (`image_id`, `segmentation` as RLE or polygons, `category_id`, and
    `track_id` or `instance_id` when tracks exist) and optionally `videos` (`id`, `name`).

    Object id: the track id when the annotations carry one (then every annotation must), else the category id
    (one object per category per video); when some id is 0 every id is shifted by +1 (0 is background).
    Frame index: `order_in_video`. Images without annotations are unannotated frames; several annotations of
    one object on one frame are OR-ed. Video names: `videos[].name`, else str(video_id).
    """

    def __init__(
        self,
        path: str | Path,
        images_root: str | Path | None = None,
        videos: Sequence[str] | None = None,
        data: Any = None,
    ):
        """`data`: the already parsed content of `path` (saves a second parse), or None to read it."""
        self.path = Path(path)
        data = read_json(self.path) if data is None else data
        require(data, ("images", "annotations"), str(self.path))
        self.images_root = Path(images_root) if images_root is not None else self.path.parent
        if not self.images_root.is_dir():
            raise DataError(f"{self.path}: images_root folder not found: {self.images_root}")
        names = self._video_names(data)
        frames, video_of = self._parse_images(data["images"], names)
        per_image = self._parse_annotations(data["annotations"], video_of)
        self._anns: dict[str, dict[int, list[tuple[int, Any, str, bool]]]] = {}
        self.skipped: dict[str, str] = {}
        found = []
        for name in select_videos(sorted(frames), videos, self.path):
            info = self._build(name, frames[name], per_image)
            if isinstance(info, str):
                self.skipped[name] = info
            else:
                found.append(info)
        self.videos = finish(found, self.skipped, self.path)

    def _video_names(self, data: dict) -> dict[Any, str]:
        """video_id -> name from the optional `videos` list."""
        names: dict[Any, str] = {}
        for i, v in enumerate(data.get("videos") or []):
            require(v, ("id", "name"), f"{self.path}: videos[{i}]")
            names[v["id"]] = str(v["name"])
        if len(set(names.values())) != len(names):
            raise DataError(f"{self.path}: two entries of 'videos' share a name")
        return names

    def _parse_images(
        self, images: Any, names: dict[Any, str]
    ) -> tuple[dict[str, list[tuple[int, Any, Path]]], dict[Any, str]]:
        """video name -> [(order_in_video, image id, file)], and image id -> video name."""
        if not isinstance(images, list):
            raise DataError(f"{self.path}: 'images' must be a list")
        frames: dict[str, list[tuple[int, Any, Path]]] = {}
        video_of: dict[Any, str] = {}
        for i, img in enumerate(images):
            where = _entry(self.path, "images", i, img)
            require(img, ("id", "file_name", "video_id", "order_in_video"), where)
            if not _is_int(img["order_in_video"]):
                raise DataError(f"{where}: 'order_in_video' must be an int, got {img['order_in_video']!r}")
            if img["id"] in video_of:
                raise DataError(f"{where}: image id {img['id']} is used twice")
            vid = img["video_id"]
            if names and vid not in names:
                raise DataError(f"{where}: video_id {vid!r} is not in 'videos'")
            name = names.get(vid, str(vid))
            video_of[img["id"]] = name
            frames.setdefault(name, []).append(
                (img["order_in_video"], img["id"], self.images_root / img["file_name"])
            )
        return frames, video_of

    def _parse_annotations(self, anns: Any, video_of: dict[Any, str]) -> dict[Any, list[_Ann]]:
        """image id -> [(object id, segmentation, where, RLE size or None)], schema-checked."""
        if not isinstance(anns, list):
            raise DataError(f"{self.path}: 'annotations' must be a list")
        track_key = next(
            (k for k in ("track_id", "instance_id") if any(k in a for a in anns if isinstance(a, dict))), None
        )
        obj_key = track_key or "category_id"
        rows = []
        for i, ann in enumerate(anns):
            where = _entry(self.path, "annotations", i, ann)
            require(ann, ("image_id", "segmentation", obj_key), where)
            if ann["image_id"] not in video_of:
                raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
            if not (_is_int(ann[obj_key]) and ann[obj_key] >= 0):
                raise DataError(f"{where}: '{obj_key}' must be an int >= 0, got {ann[obj_key]!r}")
            rle_hw = check_segmentation(ann["segmentation"], where)
            rows.append((ann["image_id"], ann[obj_key], ann["segmentation"], where, rle_hw))
        self.object_id_offset = 1 if any(r[1] == 0 for r in rows) else 0
        per_image: dict[Any, list[_Ann]] = {}
        for image_id, obj, seg, where, rle_hw in rows:
            per_image.setdefault(image_id, []).append((obj + self.object_id_offset, seg, where, rle_hw))
        return per_image

    def _build(
        self,
        name: str,
        entries: list[tuple[int, Any, Path]],
        per_image: dict[Any, list[_Ann]],
    ) -> VideoInfo | str:
        entries = sorted(entries, key=lambda e: e[0])
        for a, b in zip(entries, entries[1:]):
            if a[0] == b[0]:
                raise DataError(
                    f"{self.path}: video {name}: images {a[1]} and {b[1]} share order_in_video {a[0]}"
                )
        size = check_frame_sizes([e[2] for e in entries])
        frames, anns, ids = [], {}, set()
        for pos, (order, image_id, file) in enumerate(entries):
            rows = per_image.get(image_id, [])
            if rows:
                anns[pos] = []
                for obj, seg, where, rle_hw in rows:
                    resize = rle_hw is not None and mask_needs_resize(rle_hw, size, f"{where}, frame {file}")
                    anns[pos].append((obj, seg, where, resize))
                    ids.add(obj)
            frames.append(FrameRef(index=order, image=file, annotated=bool(rows)))
        if not ids:
            return "no annotation on any of its frames"
        self._anns[name] = anns
        return VideoInfo(name=name, frames=frames, size=size, object_ids=sorted(ids))

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at `pos`: [K, H, W] bool per visible object (annotations OR-ed)."""
        self._annotated_frame(video, pos)
        objects: dict[int, np.ndarray] = {}
        for obj, seg, where, resize in self._anns[video.name][pos]:
            mask = decode_segmentation(seg, video.size, where)
            if mask.shape != tuple(video.size):
                if not resize:
                    mask_needs_resize(mask.shape, video.size, where)
                mask = resize_nearest(mask, video.size)
            objects[obj] = objects[obj] | mask if obj in objects else mask
        return stack_masks(objects, video.size)


# ---------------------------------------------------------------------------------------------- SA-V
_SAV_KINDS = ("_manual", "_auto")


def _sav_name(path: Path) -> str:
    stem = path.stem
    for suffix in _SAV_KINDS:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def sav_files(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The JSON of each video of an SA-V folder, and the videos left out with the reason.

    SA-V train keeps two JSONs per video: `<video>_manual.json` (the masklets Meta trains on) and
    `<video>_auto.json` (automatic ones). The manual files are read when the folder has any, else plain
    `<video>.json` files; a video with only an `_auto.json` beside them is left out. A folder holding nothing but
    `_auto.json` files is read with a warning (pass one `_auto.json` file to read it without one).
    """
    manual: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    auto: dict[str, Path] = {}
    for f in sorted(folder.glob("*.json")):
        if f.name.startswith("."):
            continue
        kind = manual if f.stem.endswith("_manual") else auto if f.stem.endswith("_auto") else plain
        kind[_sav_name(f)] = f
    if not (manual or plain or auto):
        raise DataError(f"{folder}: no SA-V JSON (*_manual.json, *.json or *_auto.json) in this folder")
    if not (manual or plain):
        warnings.warn(
            f"{folder}: no *_manual.json: reading the automatic masklets (*_auto.json); Meta trains on the "
            "manual ones",
            UserWarning,
            stacklevel=3,
        )
        return auto, {}
    chosen = manual or plain
    left_out = {
        name: f"only automatic masklets ({f.name}); the manual ones (<video>_manual.json) are read"
        for name, f in auto.items()
        if name not in chosen
    }
    return chosen, left_out


def _ann_every(content: Any, where: str) -> int:
    """Frames per masklet row: 24 // `fps` when the JSON has one (as Meta's loader), else 4."""
    if not isinstance(content, dict) or "fps" not in content:
        return SAV_ANN_EVERY
    fps = content["fps"][0] if isinstance(content["fps"], list) and content["fps"] else content["fps"]
    if not isinstance(fps, (int, float)) or fps <= 0 or SAV_FRAMES_FPS % int(fps):
        raise DataError(f"{where}: 'fps' must divide {SAV_FRAMES_FPS}, got {content['fps']!r}")
    return SAV_FRAMES_FPS // int(fps)


def _whole(x: Any) -> int | None:
    """x as an int when it is a whole number > 0 (SA-V writes sizes as floats: 848.0), else None."""
    if _is_int(x) and x > 0:
        return x
    if isinstance(x, float) and x.is_integer() and x > 0:
        return int(x)
    return None


def sav_masklet(content: Any, where: str) -> list:
    """The masklet rows (frames) of an SA-V JSON: its `masklet` (or `masks`, or the whole JSON when it is a list,
    as Meta's loader reads it); DataError naming `where` otherwise."""
    if isinstance(content, list):
        masklet = content
    elif isinstance(content, dict):
        key = "masklet" if "masklet" in content or "masks" not in content else "masks"
        require(content, (key,), where)
        masklet = content[key]
    else:
        raise DataError(f"{where}: expected an SA-V object with 'masklet', got {type(content).__name__}")
    if not isinstance(masklet, list) or not all(row is None or isinstance(row, list) for row in masklet):
        raise DataError(f"{where}: 'masklet' must be a list (frames) of lists (objects)")
    return masklet


def _masklet_ids(raw: Any, n_obj: int, where: str) -> list[int]:
    """Object ids from SA-V's `masklet_id` (0-based, one per masklet column): each + 1, as SA-V val's folder
    `000` is object 1."""
    entries = raw if isinstance(raw, list) else [None]
    ids = [
        _whole(m + 1) if isinstance(m, (int, float)) and not isinstance(m, bool) else None for m in entries
    ]
    if len(ids) != n_obj or None in ids or len(set(ids)) != n_obj:
        raise DataError(
            f"{where}: 'masklet_id' must list {n_obj} distinct ints >= 0 (one per masklet), got {raw!r}"
        )
    return [int(i) for i in ids]


@dataclass
class SavMasklets:
    """One SA-V JSON, schema-checked (`parse_sav`)."""

    every: int
    """Frames per masklet row: masklet[k] annotates frame k * every."""
    hw: tuple[int, int] | None
    """(height, width) of the masks: `video_height` x `video_width`, else the RLEs' size; None without either."""
    ids: list[int]
    """Object id of each masklet column: `masklet_id` + 1 when the JSON has it, else column + 1."""
    rows: dict[int, set[int]]
    """Annotated rows (every entry a valid RLE) -> ids of the objects with pixels there."""
    problems: list[str]
    """Entry-level problems ('masklet[k][j]: ...'); the file is usable when there is none."""


def parse_sav(content: Any, where: str, ann_every: int | None = None) -> SavMasklets:
    """Check an SA-V JSON as Meta's `JSONSegmentLoader` reads it. A row that is null or holds a null entry is an
    unannotated frame. Other SA-V keys (`masklet_first_appeared_frame`, `masklet_type`, ...) are not needed:
    objects that appear later have empty masks on the rows before. DataError (naming `where`) when the file
    cannot be read at all; entry problems are listed in `problems`."""
    masklet = sav_masklet(content, where)
    meta = content if isinstance(content, dict) else {}
    hw = None
    if "video_height" in meta or "video_width" in meta:
        require(meta, ("video_height", "video_width"), where)
        h, w = _whole(meta["video_height"]), _whole(meta["video_width"])
        if h is None or w is None:
            got = [meta["video_height"], meta["video_width"]]
            raise DataError(f"{where}: 'video_height' and 'video_width' must be whole numbers > 0, got {got}")
        hw = (h, w)
    every = ann_every if ann_every is not None else _ann_every(meta, where)
    n_obj = next((len(row) for row in masklet if row is not None), 0)
    ids = (
        _masklet_ids(meta["masklet_id"], n_obj, where) if "masklet_id" in meta else list(range(1, n_obj + 1))
    )
    out = SavMasklets(every, hw, ids, {}, [])
    for k, row in enumerate(masklet):
        if row is None:
            continue
        if len(row) != n_obj:
            out.problems.append(f"masklet[{k}] has {len(row)} objects, the first annotated row has {n_obj}")
            continue
        ok = True
        for j, seg in enumerate(row):
            if seg is None:
                continue
            label = f"masklet[{k}][{j}]"
            try:
                size = check_segmentation(seg, label, polygons=False)
            except DataError as exc:
                out.problems.append(str(exc))
                ok = False
                continue
            if out.hw is None:
                out.hw = size
            elif size != out.hw:
                what = "[video_height, video_width]" if hw is not None else "the first RLE's size"
                out.problems.append(f"{label}: RLE size {list(size)} is not {what} {list(out.hw)}")
                ok = False
        if ok and n_obj and None not in row:
            out.rows[k] = {i for i, seg in zip(ids, row) if _area(seg) > 0}
    return out


class SavSource(ImageFileSource):
    """SA-V annotations: one JSON per video with `masklet` (per annotated frame, one RLE per object), as Meta's
    `JSONRawDataset` reads them; a folder of them, or one file. In a folder, `<video>_manual.json` is read (the
    masklets Meta trains on; `<video>_auto.json` beside it is not): see `sav_files`. Frames are JPEGs
    `images_root/<video>/%05d.jpg` at 24 fps, as Meta's trainer extracts them (default images_root: the JSON's
    folder).

    masklet[k] annotates frame k * ann_every (ann_every: as given, else 24 // `fps` when the JSON has `fps`,
    else 4: SA-V annotates at 6 fps). As in Meta's loader, a row that is null or holds a null entry is an
    unannotated frame. Object id: `masklet_id` + 1 when the JSON has it, else masklet index + 1. `video_height`
    and `video_width` (floats in SA-V) are optional; masks must match them, or each other. Objects that appear
    later are empty before (see `parse_sav`). Masklets are re-read from the JSON when loading (the last video's
    stays cached), not kept in memory for every video.
    """

    def __init__(
        self,
        path: str | Path,
        images_root: str | Path | None = None,
        videos: Sequence[str] | None = None,
        ann_every: int | None = None,
        data: Any = None,
    ):
        """`data`: the already parsed content of `path` when it is one JSON file, or None to read it."""
        self.path = Path(path)
        self.skipped: dict[str, str] = {}
        if self.path.is_dir():
            self._json, left_out = sav_files(self.path)
        elif self.path.is_file():
            self._json, left_out = {_sav_name(self.path): self.path}, {}
        else:
            raise DataError(f"SA-V JSON or folder not found: {self.path}")
        default_root = self.path if self.path.is_dir() else self.path.parent
        self.images_root = Path(images_root) if images_root is not None else default_root
        self._frame_k: dict[str, dict[int, int]] = {}
        self._ids: dict[str, list[int]] = {}
        self._resize: set[str] = set()
        self._cache: tuple[str, list] | None = None
        found = []
        for name in select_videos(sorted({*self._json, *left_out}), videos, self.path):
            if name in left_out:
                self.skipped[name] = left_out[name]
                continue
            content = (
                data if data is not None and self._json[name] == self.path else read_json(self._json[name])
            )
            info = self._scan(name, content, ann_every)
            if isinstance(info, str):
                self.skipped[name] = info
            else:
                found.append(info)
        self.videos = finish(found, self.skipped, self.path)

    def _scan(self, name: str, content: Any, ann_every: int | None) -> VideoInfo | str:
        """The video's VideoInfo, or the reason to skip it."""
        where = str(self._json[name])
        parsed = parse_sav(content, where, ann_every)
        if parsed.problems:
            raise DataError(f"{where}: {parsed.problems[0]}")
        every = parsed.every
        img_dir = self.images_root / name
        if not img_dir.is_dir():
            return f"no frames folder {img_dir}"
        files = list(img_dir.glob("*.jpg"))
        if not files:
            return f"no .jpg frames in {img_dir}"
        bad = next((p for p in files if not p.stem.isdigit()), None)
        if bad is not None:
            raise DataError(f"frame {bad}: SA-V frames must be named by frame number (%05d.jpg)")
        frames = sort_stems(files)
        index_of = {int(p.stem): pos for pos, p in enumerate(frames)}
        for k in parsed.rows:
            if k * every not in index_of:
                missing = img_dir / f"{k * every:05d}.jpg"
                raise DataError(
                    f"{where}: masklet[{k}] annotates frame {k * every}, but {missing} is missing"
                )
        size = check_frame_sizes(frames)
        if parsed.hw is not None and mask_needs_resize(parsed.hw, size, f"{where} (masks vs {frames[0]})"):
            self._resize.add(name)
        ids = sorted(set().union(*parsed.rows.values())) if parsed.rows else []
        if not ids:
            return "no object in any annotated frame"
        self._frame_k[name] = {index_of[k * every]: k for k in parsed.rows}
        self._ids[name] = parsed.ids
        refs = [
            FrameRef(index=int(p.stem), image=p, annotated=pos in self._frame_k[name])
            for pos, p in enumerate(frames)
        ]
        return VideoInfo(name=name, frames=refs, size=size, object_ids=ids)

    def _masklet(self, name: str) -> list:
        if self._cache is None or self._cache[0] != name:
            path = self._json[name]
            self._cache = (name, sav_masklet(read_json(path), str(path)))
        return self._cache[1]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # a video's masklets can be megabytes: never ship them to workers
        return state

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at `pos`: [K, H, W] bool per visible object."""
        self._annotated_frame(video, pos)
        k = self._frame_k[video.name][pos]
        where = f"{self._json[video.name]}: masklet[{k}]"
        objects = {}
        for j, (obj, seg) in enumerate(zip(self._ids[video.name], self._masklet(video.name)[k])):
            mask = decode_segmentation(seg, video.size, f"{where}[{j}]")
            if mask.shape != tuple(video.size):
                if video.name not in self._resize:
                    mask_needs_resize(mask.shape, video.size, f"{where}[{j}]")
                mask = resize_nearest(mask, video.size)
            objects[obj] = mask
        return stack_masks(objects, video.size)
