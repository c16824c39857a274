"""File helpers every reader shares: frame listing and sizes, mask sizes, video selection, the end of a scan.

Checks that report go through the reader's `ProblemSink` (see base.py): loading raises the first error,
checking records every one. Frames are probed on a few threads when checking (PIL decodes without the GIL).
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from sam2train.data.labels import READ_ERRORS
from sam2train.data.problems import ProblemSink
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoCheck, VideoInfo, VideoSource
from sam2train.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SIZE_TOLERANCE = 2
"""A mask off its frame by at most this many px per side is resized (with a warning); more is an error."""
THREADS = 4
PROGRESS_MIN = 200
"""A progress bar (on a terminal) when a pass reads at least this many files."""
MAX_SHOWN = 8
"""Names listed in one message (gaps, videos) before 'and N more'."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def subdirs(folder: Path) -> list[Path]:
    """The visible subfolders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def map_threads(fn: Callable[[Any], Any], items: list, desc: str) -> list:
    """fn over items on a few threads, in order, with a progress bar when there are many."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if not items:
        return []
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        done = pool.map(fn, items)
        disable = True if len(items) < PROGRESS_MIN else None  # None: only on a terminal
        return list(tqdm(done, total=len(items), desc=desc, unit="file", leave=False, disable=disable))


# -------------------------------------------------------------------------------------------------- frames
def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(height, width) of an image from its header only; DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    return height, width


def load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A whole frame as [H, W, 3] uint8 RGB; DataError naming the file on any failure or size change."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if arr.shape[:2] != tuple(size):
        raise DataError(
            f"image {path} is {arr.shape[1]}x{arr.shape[0]}, but its video is {size[1]}x{size[0]}"
        )
    return arr


def _probe(path: Path, full: bool) -> tuple[int, int] | tuple[str, str]:
    """(height, width), or (checking message, loading message) of what is wrong with the file. `full` decodes
    every pixel (a truncated file fails)."""
    try:
        with Image.open(path) as im:
            if full:
                im.load()
            return im.height, im.width
    except FileNotFoundError:
        return "frame file not found", f"frame file not found: {path}"
    except Exception as exc:  # any failure to read is the file's problem, reported with PIL's words
        verb = "decode" if full else "read"
        return f"cannot {verb} frame: {type(exc).__name__}: {exc}", f"cannot read frame {path}: {exc}"


def probe_frames(paths: list[Path], sink: ProblemSink) -> list[tuple[int, int] | tuple[str, str]]:
    """Each frame's probe (see `_probe`): one by one when loading, on threads when checking (full decode when
    `sink.full`, with PIL's LOAD_TRUNCATED_IMAGES forced off so that a truncated frame fails)."""
    if not sink.record:
        return [_probe(p, False) for p in paths]
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return map_threads(lambda p: _probe(p, sink.full), paths, "frames")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def frame_size(frames: Sequence[Path], video: str, sink: ProblemSink) -> tuple[int, int] | None:
    """The size (height, width) every frame of a video must share: the first readable frame's. An unreadable
    frame or another size is an error; None when no frame can be read."""
    size, first = None, None
    for path, got in zip(frames, probe_frames(list(frames), sink)):
        if isinstance(got[0], str):
            sink.error(str(got[0]), path, video, loading=str(got[1]))
        elif size is None:
            size, first = got, path
        elif got != size:
            what = f"is {got[1]}x{got[0]} but {first.name} is {size[1]}x{size[0]}"
            tail = "the frames of a video must share one size"
            sink.error(f"frame {what}: {tail}", path, video, loading=f"frame {path} {what}: {tail}")
    return size  # type: ignore[return-value]


def gaps(numbers: list[int]) -> list[tuple[int, int]]:
    """(before, after) pairs further apart than the most common step (ties: the smallest step)."""
    steps = Counter(b - a for a, b in zip(numbers, numbers[1:]) if b > a)
    if not steps:
        return []
    step = max(steps.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return [(a, b) for a, b in zip(numbers, numbers[1:]) if b - a > step]


def check_numbering(files: list[Path], video: str, sink: ProblemSink) -> None:
    """Checking only: numeric frame names where two files share a number (error) or numbers are skipped
    (warning; the usual step, e.g. every 5th frame, is not a gap). Loading reads them by position."""
    if not sink.record or not files or not all(p.stem.isdigit() for p in files):
        return
    numbered = sorted(files, key=lambda p: (int(p.stem), p.name))
    for a, b in zip(numbered, numbered[1:]):
        if int(a.stem) == int(b.stem):
            sink.error(f"frames {a.name} and {b.name} share frame index {int(a.stem)}", b, video)
    found = gaps([int(p.stem) for p in numbered])
    if found:
        name = {int(p.stem): p.name for p in numbered}
        shown = ", ".join(f"{name[a]} -> {name[b]}" for a, b in found[:MAX_SHOWN])
        more = f" and {len(found) - MAX_SHOWN} more" if len(found) > MAX_SHOWN else ""
        path = next(p for p in numbered if int(p.stem) == found[0][1])
        sink.warning(f"{plural(len(found), 'gap')} in frame numbers: {shown}{more}", path, video)


def frame_indices(stems: Sequence[str]) -> list[int]:
    """Frame index per (sorted) stem: the stem's integer when every stem is numeric, else the position."""
    if stems and all(s.isdigit() for s in stems):
        return [int(s) for s in stems]
    return list(range(len(stems)))


def sort_stems(paths: Sequence[Path]) -> list[Path]:
    """Sort files by numeric stem when all stems are numeric (so 10 follows 9), else by name."""
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: (int(p.stem), p.name))
    return sorted(paths, key=lambda p: p.name)


# -------------------------------------------------------------------------------------------------- masks
def mask_needs_resize(mask_hw: tuple[int, ...], frame_hw: tuple[int, ...], where: str) -> bool:
    """False when sizes match; True (after a warning naming `where`) when off by <= SIZE_TOLERANCE px per
    side; DataError otherwise. Sizes are (height, width). For masks read after the scan."""
    if tuple(mask_hw) == tuple(frame_hw):
        return False
    (mh, mw), (fh, fw) = mask_hw, frame_hw
    if abs(mh - fh) <= SIZE_TOLERANCE and abs(mw - fw) <= SIZE_TOLERANCE:
        warnings.warn(
            f"{where}: mask is {mw}x{mh} but its frame is {fw}x{fh}; resized with nearest neighbour",
            UserWarning,
            stacklevel=3,
        )
        return True
    raise DataError(
        f"{where}: mask is {mw}x{mh} but its frame is {fw}x{fh} (more than {SIZE_TOLERANCE} px off)"
    )


def check_mask_size(
    mask_hw: tuple[int, ...],
    frame_hw: tuple[int, ...],
    sink: ProblemSink,
    path: Path,
    video: str,
    what: str,
    where: str,
) -> bool:
    """The scan's size check of a mask: True when it must be resized (off by <= SIZE_TOLERANCE px per side: a
    warning), an error beyond. `what` names the mask in the recorded message (`mask`, `<entry>: RLE`), `where`
    in the loading one."""
    if tuple(mask_hw) == tuple(frame_hw):
        return False
    (mh, mw), (fh, fw) = mask_hw, frame_hw
    message = f"mask is {mw}x{mh} but its frame is {fw}x{fh}"
    if abs(mh - fh) <= SIZE_TOLERANCE and abs(mw - fw) <= SIZE_TOLERANCE:
        tail = "; resized with nearest neighbour"
        sink.warning(
            f"{what} is {mw}x{mh} but its frame is {fw}x{fh}{tail}", path, video, f"{where}: {message}{tail}"
        )
        return True
    tail = f" (more than {SIZE_TOLERANCE} px off)"
    sink.error(
        f"{what} is {mw}x{mh} but its frame is {fw}x{fh}{tail}", path, video, f"{where}: {message}{tail}"
    )
    return False


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a [h, w] label or bool array to `size` (height, width), any dtype."""
    rows = np.arange(size[0]) * arr.shape[0] // size[0]
    cols = np.arange(size[1]) * arr.shape[1] // size[1]
    return arr[rows[:, None], cols[None, :]]


def stack_masks(
    objects: dict[int, np.ndarray], size: tuple[int, int], void: np.ndarray | None = None
) -> FrameMasks:
    """FrameMasks from {id: [H, W] bool}, keeping the non-empty masks, ids sorted."""
    ids = sorted(i for i, m in objects.items() if m.any())
    masks = np.stack([objects[i] for i in ids]) if ids else np.zeros((0, *size), dtype=bool)
    return FrameMasks(
        ids=np.asarray(ids, dtype=np.int64),
        masks=masks.astype(bool, copy=False),
        void=np.zeros(size, dtype=bool) if void is None else void,
    )


# -------------------------------------------------------------------------------------------------- videos
def select_videos(names: Sequence[str], wanted: Sequence[str] | None, path: Path) -> list[str]:
    """`names` filtered to `wanted`, in dataset order; an unknown name is a DataError naming the closest."""
    if wanted is None:
        return list(names)
    known = set(names)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(str(name), list(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{path}: no video named '{name}'{hint}")
    keep = set(wanted)
    return [n for n in names if n in keep]


def finish(
    videos: list[VideoInfo], skipped: dict[str, str], path: Path, sink: ProblemSink
) -> list[VideoInfo]:
    """Loading: warn once about every skipped video; DataError when nothing usable is left. Checking leaves
    both to `check-data`, which weighs them against the clip length."""
    if sink.record:
        return videos
    listing = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    if not videos:
        raise DataError(f"{path}: no usable video" + (f" ({listing})" if listing else ""))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} video(s): {listing}", UserWarning, stacklevel=3)
    return videos


class ImageFileSource(VideoSource):
    """Shared part of the readers: frames are image files; `skipped` lists the videos left out and why."""

    skipped: dict[str, str]

    def load_image(self, video: VideoInfo, pos: int) -> np.ndarray:
        """Frame at position `pos` of `video` as [H, W, 3] uint8 RGB."""
        return load_rgb(video.frames[pos].image, video.size)

    @staticmethod
    def _annotated_frame(video: VideoInfo, pos: int) -> FrameRef:
        frame = video.frames[pos]
        if not frame.annotated:
            raise DataError(
                f"video {video.name}: frame {frame.image.name} has no masks (it is not annotated)"
            )
        return frame

    def _listed(self, check: VideoCheck, info: VideoInfo | str | None, found: list[VideoInfo]) -> None:
        """Book one scanned video: usable (`found`), skipped with its reason, or None: it has errors (only when
        checking; loading raised on the first)."""
        self.checked.append(check)
        if isinstance(info, VideoInfo):
            found.append(info)
        elif isinstance(info, str):
            check.skip = info
            self.skipped[check.name] = info


def probe_mask(path: Path) -> tuple[tuple[int, int], str, set[int]] | tuple[str, str]:
    """((height, width), mode, pixel values) of a mask PNG, or (checking message, loading message) of what is
    wrong with it. The values come from the histogram (see `labels.mask_values`)."""
    from sam2train.data.labels import MASK_MODES, bad_mode, mask_values

    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                return f"mask {bad_mode(im.mode)}", f"mask {path} {bad_mode(im.mode)}"
            return (im.height, im.width), im.mode, mask_values(im)
    except FileNotFoundError:
        return "mask file not found", f"mask file not found: {path}"
    except Exception as exc:  # as in _probe: the file's problem, in PIL's words
        return f"cannot read mask: {type(exc).__name__}: {exc}", f"cannot read mask {path}: {exc}"


def probe_masks(
    paths: list[Path], sink: ProblemSink
) -> list[tuple[tuple[int, int], str, set[int]] | tuple[str, str]]:
    """`probe_mask` of each file: one by one when loading, on threads when checking."""
    if not sink.record:
        return [probe_mask(p) for p in paths]
    return map_threads(probe_mask, paths, "masks")
