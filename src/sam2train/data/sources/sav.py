"""SA-V reader: one JSON of masklets per video (a folder of them, or one file), frames extracted as JPEGs.

The JSON is checked entry by entry at construction (`parse_sav`); the full decode of its RLE strings runs when
a frame's masks are loaded, or at construction when a checking sink asks for it (`check-data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoCheck, VideoInfo
from sam2train.data.sources.files import (
    ImageFileSource,
    check_mask_size,
    check_numbering,
    finish,
    frame_size,
    mask_needs_resize,
    resize_nearest,
    select_videos,
    sort_stems,
    stack_masks,
)
from sam2train.data.sources.json_rle import (
    check_segmentation,
    decode_all,
    decode_segmentation,
    is_int,
    read_json,
    require,
    rle_area,
)
from sam2train.errors import DataError

SAV_FRAMES_FPS = 24
"""Frame rate of extracted SA-V JPEGs; a JSON `fps` gives the annotation rate (Meta's `frames_fps`)."""
SAV_ANN_EVERY = 4
"""SA-V annotates every 4th frame (6 fps of 24) when the JSON has no `fps`."""
_SAV_KINDS = ("_manual", "_auto")


def _sav_name(path: Path) -> str:
    stem = path.stem
    for suffix in _SAV_KINDS:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def sav_files(folder: Path, sink: ProblemSink = LOADING) -> tuple[dict[str, Path], dict[str, str]]:
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
        message = (
            "no *_manual.json: reading the automatic masklets (*_auto.json); Meta trains on the manual ones"
        )
        sink.warning(message, folder)
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
    if is_int(x) and x > 0:
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
            out.rows[k] = {i for i, seg in zip(ids, row) if rle_area(seg) > 0}
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
        sink: ProblemSink = LOADING,
    ):
        """`data`: the already parsed content of `path` when it is one JSON file, or None to read it."""
        self.path = Path(path)
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []
        if self.path.is_dir():
            self._json, left_out = sav_files(self.path, sink)
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
        found: list[VideoInfo] = []
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]] = []
        for name in select_videos(sorted({*self._json, *left_out}), videos, self.path):
            if name in left_out:
                self._listed(VideoCheck(name, self.path / f"{name}_auto.json"), left_out[name], found)
                continue
            json_path = self._json[name]
            check = VideoCheck(name, json_path)
            self._listed(
                check,
                self._scan(check, data if json_path == self.path else None, ann_every, sink, jobs),
                found,
            )
        decode_all(jobs, sink)
        self.videos = finish(found, self.skipped, self.path, sink)

    def _parse(
        self, check: VideoCheck, data: Any, ann_every: int | None, sink: ProblemSink
    ) -> tuple[Any, SavMasklets] | None:
        """The JSON of a video and its schema check; None (errors reported) when it is not usable."""
        json_path = self._json[check.name]
        where = "top level" if sink.record else str(json_path)  # checking names the file in its own column
        try:
            content = read_json(json_path) if data is None else data
            parsed = parse_sav(content, where, ann_every)
        except DataError as exc:
            sink.error(str(exc).removeprefix(f"{json_path}: "), json_path, check.name, loading=str(exc))
            check.broken = True
            return None
        for problem in parsed.problems:
            sink.error(problem, json_path, check.name, loading=f"{where}: {problem}")
        check.broken = bool(parsed.problems)
        return content, parsed

    def _scan(
        self,
        check: VideoCheck,
        data: Any,
        ann_every: int | None,
        sink: ProblemSink,
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]],
    ) -> VideoInfo | str | None:
        """The video's VideoInfo, the reason to skip it, or None when it has errors (checking). Full decode
        jobs of its RLEs go to `jobs` when the sink asks for them."""
        name, json_path, start = check.name, self._json[check.name], len(sink.problems)
        got = self._parse(check, data, ann_every, sink)
        if got is None:
            return None
        content, parsed = got
        img_dir = self.images_root / name
        files = list(img_dir.glob("*.jpg")) if img_dir.is_dir() else []
        if not files:
            return f"no frames folder {img_dir}" if not img_dir.is_dir() else f"no .jpg frames in {img_dir}"
        for p in (p for p in files if not p.stem.isdigit()):
            message = "SA-V frames must be named by frame number (%05d.jpg)"
            sink.error(message, p, name, loading=f"frame {p}: {message}")
        frames = sort_stems([p for p in files if p.stem.isdigit()])
        check_numbering(frames, name, sink)
        index_of = {int(p.stem): pos for pos, p in enumerate(frames)}
        every = parsed.every
        for k in parsed.rows:
            if k * every not in index_of:
                missing = img_dir / f"{k * every:05d}.jpg"
                sink.error(
                    f"masklet[{k}] annotates frame {k * every}, but {missing} is missing", json_path, name
                )
        check.folder, check.frames, check.annotated = img_dir, len(frames), list(parsed.rows.values())
        size = frame_size(frames, name, sink)
        if size is not None and parsed.hw is not None:
            what, where = f"mask size (frame {frames[0].name})", f"{json_path} (masks vs {frames[0]})"
            if check_mask_size(parsed.hw, size, sink, json_path, name, what, where):
                self._resize.add(name)
        if sink.record and sink.full and size is not None and not check.broken:
            masklet = sav_masklet(content, "top level")
            rows = ((k, j, seg) for k in parsed.rows for j, seg in enumerate(masklet[k]))
            jobs += [(seg, size, f"masklet[{k}][{j}]", name, json_path) for k, j, seg in rows]
        if check.broken or sink.errors_of(start) or size is None:
            return None
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
