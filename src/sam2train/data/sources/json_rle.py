"""JSON and RLE helpers the JSON readers share (COCO-video, SA-V, YouTube-VOS `meta.json`): parsing with
errors that name the file, key checks, the schema check and decode of COCO segmentations."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam2train.data.problems import ProblemSink
from sam2train.data.sources.files import map_threads
from sam2train.errors import DataError

_RLE_CHARS = re.compile(r"[0-o]*")
"""pycocotools writes compressed counts with the characters chr(48)..chr(111)."""


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


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def entry_label(key: str, i: int, entry: Any) -> str:
    """How problems name a JSON list entry: `annotations[3] (id=7)`."""
    has_id = isinstance(entry, dict) and "id" in entry
    return f"{key}[{i}]" + (f" (id={entry['id']})" if has_id else "")


def check_segmentation(seg: Any, where: str, polygons: bool = True) -> tuple[int, int] | None:
    """Eager schema check of a COCO segmentation: an RLE dict (compressed string or uncompressed run list) or,
    when `polygons`, a list of polygons. Returns the RLE's (height, width), or None for polygons."""
    if isinstance(seg, dict):
        require(seg, ("size", "counts"), f"{where}: RLE segmentation")
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(s) and s > 0 for s in size)):
            raise DataError(f"{where}: malformed RLE: 'size' must be [height, width], got {size!r}")
        h, w = size
        if isinstance(counts, str):
            if not counts or not _RLE_CHARS.fullmatch(counts) or (ord(counts[-1]) - 48) & 0x20:
                raise DataError(f"{where}: malformed RLE: 'counts' is not a compressed RLE string")
        elif isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
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


def rle_area(seg: dict) -> int:
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


def decode_all(jobs: list[tuple[Any, tuple[int, int], str, str, Path]], sink: ProblemSink) -> None:
    """Checking with a full decode: decode every (segmentation, frame size, where, video, JSON) on a few
    threads; one that does not decode is an error of that JSON."""

    def decode(job: tuple[Any, tuple[int, int], str, str, Path]) -> str | None:
        try:
            decode_segmentation(job[0], job[1], job[2])
        except DataError as exc:
            return str(exc)
        return None

    for (_, _, _, video, path), failed in zip(jobs, map_threads(decode, jobs, "RLE masks")):
        if failed:
            sink.error(failed, path, video)
