"""`sam2train check-data`: scan every video of the configured data and list every problem with its file.

The readers (sources.py, sources_json.py, sources_ytvos.py) raise on the first fatal problem; this scan keeps going
and reports all of them, for every configured source (each entry of `data.train`, or `data.train_path`, and
`data.val_path`), grouped by severity (docs/data-checks.md lists every check and message):
- error: `fit` would stop (a reader's DataError) or would fail or train on garbage later (an undecodable frame,
  an RLE that does not decode, values that are not object ids);
- warning: `fit` goes on but leaves something out or changes it (a skipped video, a resized mask), or the data
  looks wrong (void-only masks, gaps in frame numbers);
- info: facts worth knowing (unannotated frames, void pixels, binary masks, objects that appear later).

`check_sources(cfg, fast)` is the library entry point. `fast` reads frame headers and what the readers read
anyway (mask PNGs, JSON), and decodes no frame and no RLE string, so `fit` can afford it at setup.
Heavy modules (PIL, numpy, pycocotools, torch) are imported inside functions: the CLI parser stays light.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam2train.config import Config
    from sam2train.data.sources.base import SourceSpec

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)
MAX_IDS_PER_MASK = 100
"""More distinct ids than this in one label PNG: its values are not ids (an anti-aliased or JPEG-saved mask)."""
THREADS = 4
PROGRESS_MIN = 200
"""A progress bar (on a terminal) when a pass reads at least this many files."""
_MAX_SHOWN = 8
"""Names listed in one line (gaps, videos) before 'and N more'."""


@dataclass(frozen=True)
class Problem:
    """One finding. `path`: the file it is in (frame, mask, JSON) or the folder for a whole video or dataset;
    `video`: the video's name, '' for the whole dataset."""

    severity: str
    path: Path
    video: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}" + (f" [{self.video}]" if self.video else "") + f": {self.message}"


@dataclass
class Report:
    """Every problem of a scan, and how much was scanned."""

    problems: list[Problem] = field(default_factory=list)
    videos: int = 0
    frames: int = 0
    scanned: list[str] = field(default_factory=list)
    """One line per dataset: split, path, format, videos and frames."""

    def add(self, severity: str, path: Path | str, video: str, message: str) -> None:
        self.problems.append(Problem(severity, Path(path), video, message))

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)


@dataclass
class _Video:
    """What a format's scan learned about one video, for the checks every format shares."""

    name: str
    folder: Path
    """Where whole-video problems point: the frames folder, or the JSON."""
    frames: int
    annotated: list[set[int]]
    """Object ids on each annotated frame, in frame order."""
    skip: str | None = None
    """Why the reader leaves the video out."""
    broken: bool = False
    """Its errors are listed already; the shared checks leave it alone."""
    binary: bool = False
    """Label PNGs holding only 0 and 255 (DAVIS-2016): 255 is object 1."""
    void_masks: int = 0
    """Masks with void (255) pixels."""


# ------------------------------------------------------------------------------------------------- entry points
def check_sources(cfg: Config, fast: bool, splits: Sequence[str] = ("train", "val")) -> list[Problem]:
    """Every problem of the configured sources (every source of `data.train`, or `data.train_path`, and
    `data.val_path`, when set), in scan order.

    fast: headers and what the readers read anyway (mask PNGs, JSON schema, sizes, ids, short videos), no full
    decode of frames or RLE strings. Without it every frame and RLE is decoded and the reader itself is run
    on data found clean, so "0 errors" means `fit` can open it.
    """
    return run_checks(cfg, splits, fast).problems


def run_checks(cfg: Config, splits: Sequence[str], fast: bool) -> Report:
    """The Report of `check_sources`, with the counts of videos and frames scanned."""
    from sam2train.data.sources.base import configured_sources

    report = Report()
    for split in splits:
        train = split == "train"
        specs = configured_sources(cfg, train)
        for spec in specs:
            _check_source(cfg, spec, train, fast, report, several=len(specs) > 1)
    return report


def format_report(report: Report) -> str:
    """The problems grouped by severity, one per line, then "N errors, M warnings in V videos (F frames)"."""
    lines = list(report.scanned)
    for severity in SEVERITIES:
        found = [p for p in report.problems if p.severity == severity]
        if found:
            lines.append(f"{severity if severity == INFO else severity + 's'} ({len(found)}):")
            lines += [f"  {p}" for p in found]
    lines.append(
        f"{_plural(report.count(ERROR), 'error')}, {_plural(report.count(WARNING), 'warning')} in "
        f"{_plural(report.videos, 'video')} ({_plural(report.frames, 'frame')})"
    )
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data", help="scan every video of the configured data and list every problem with its file"
    )
    p.add_argument("--config", "-c", required=True, help="YAML config (may name a `base:` to extend)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.clip_length=4"
    )
    p.add_argument(
        "--split", choices=("train", "val", "both"), default="both", help="which data (default both)"
    )
    p.add_argument(
        "--fast", action="store_true", help="headers only: no full decode of frames and RLE (what fit checks)"
    )


def cmd_check_data(args: argparse.Namespace) -> int:
    """Print the report; 1 when it holds errors, else 0."""
    from sam2train.config import load_config
    from sam2train.data.sources.base import configured_sources
    from sam2train.errors import ConfigError

    cfg = load_config(args.config, args.overrides)
    splits = ("train", "val") if args.split == "both" else (args.split,)
    unset = [f"data.{s}_path" for s in splits if not configured_sources(cfg, s == "train")]
    if len(unset) == len(splits):
        raise ConfigError(f"config key '{unset[0]}' is not set: nothing to check")
    report = run_checks(cfg, splits, args.fast)
    report.scanned += [f"{key} is not set: not checked" for key in unset]
    print(format_report(report))
    return 1 if report.count(ERROR) else 0


# ------------------------------------------------------------------------------------------------- one source
def _check_source(
    cfg: Config, spec: SourceSpec, train: bool, fast: bool, report: Report, several: bool
) -> None:
    """Scan one configured source. Problems of the whole source name its config key (`data.train[1] (ytvos)`
    for an entry of `data.train`); `several`: the scanned line names the source too."""
    from sam2train.data.sources.davis import _detect
    from sam2train.errors import DataError

    data = cfg.data
    path = Path(spec.path)
    wanted = list(spec.videos) if spec.videos is not None else None
    split = "train" if train else "val"
    if not path.exists():
        report.add(ERROR, path, "", f"dataset path not found ({spec.where})")
        return
    fmt, parsed = spec.format, None
    try:
        if fmt is None:
            fmt, parsed = _detect(path)
        if fmt in ("davis", "youtube_vos") and spec.images_root is not None:
            raise DataError(f"images_root applies to JSON formats only; {fmt} frames are in JPEGImages")
    except DataError as exc:
        report.add(ERROR, path, "", f"{spec.where}: {exc}" if several else str(exc))
        return
    scanner = {"davis": _scan_davis, "coco_video": _scan_coco, "sav": _scan_sav, "youtube_vos": _scan_ytvos}[
        fmt
    ]
    start = len(report.problems)
    videos = scanner(path, spec.images_root, wanted, parsed, not fast, report)
    errored = {p.video for p in report.problems[start:] if p.severity == ERROR}
    length, key = (
        (data.clip_length, "data.clip_length") if train else (data.val_clip_length, "data.val_clip_length")
    )
    _check_videos(videos, path, length, key, errored, report, data.track_later_objects)
    frames = sum(v.frames for v in videos)
    report.videos += len(videos)
    report.frames += frames
    mode = "headers" if fast else "full decode"
    label = f"{split} {spec.where}" if several else split
    report.scanned.append(
        f"{label}: {path} ({fmt}, {mode}): {_plural(len(videos), 'video')}, {frames} frames"
        + (f", weight {spec.weight:g}" if several else "")
    )
    if not fast and not any(p.severity == ERROR for p in report.problems[start:]):
        _reader_agrees(cfg, spec, train, report)


def _check_videos(
    videos: list[_Video],
    path: Path,
    length: int | None,
    key: str,
    errored: set[str],
    report: Report,
    later_tracked: bool = True,
) -> None:
    """Skipped and short videos (warnings, one per video), no usable video (error), and one info line per kind
    for the whole dataset: unannotated frames, objects appearing later, binary masks, void pixels (videos
    with errors left out: what they hold is unsure)."""
    usable = 0
    notes: dict[str, list[str]] = {"unannotated": [], "later": [], "binary": [], "void": []}
    for v in videos:
        if v.broken:
            continue
        skip = v.skip or (None if any(v.annotated) else "no object in any annotated frame")
        if skip:
            report.add(WARNING, v.folder, v.name, f"video skipped: {skip}")
            continue
        n = len(v.annotated)
        if length is not None and n < length:
            message = f"video skipped: {_plural(n, 'annotated frame')}, fewer than {key}={length}"
            report.add(WARNING, v.folder, v.name, message)
        else:
            usable += 1
        if v.name in errored:
            continue
        later = sorted(set().union(*v.annotated) - v.annotated[0])
        for kind, note in (
            ("unannotated", f"{v.name} ({v.frames - n} of {v.frames})" if v.frames > n else ""),
            ("later", f"{v.name} {later}" if later else ""),
            ("binary", v.name if v.binary else ""),
            ("void", f"{v.name} ({_plural(v.void_masks, 'mask')})" if v.void_masks else ""),
        ):
            if note:
                notes[kind].append(note)
    what = {
        "unannotated": "with frames that have no masks (unannotated: listed, never loaded into a clip)",
        "later": "where objects first appear after the first annotated frame ("
        + (
            "prompted on their first annotated frame: data.track_later_objects"
            if later_tracked
            else "a clip tracks the objects of its first frame only: data.track_later_objects is false"
        )
        + ")",
        "binary": "whose masks hold only 0 and 255: binary, 255 is object 1 (not void)",
        "void": "with void (255) pixels, excluded from the loss",
    }
    for kind, names in notes.items():
        if names:
            shown = ", ".join(names[:_MAX_SHOWN]) + (
                f" and {len(names) - _MAX_SHOWN} more" if len(names) > _MAX_SHOWN else ""
            )
            report.add(INFO, path, "", f"{_plural(len(names), 'video')} {what[kind]}: {shown}")
    if videos and not usable and not any(v.broken for v in videos):
        need = f"with at least {key}={length} annotated frames" if length is not None else "with an object"
        report.add(ERROR, path, "", f"no usable video {need}: the run cannot start")


def _reader_agrees(cfg: Config, spec: SourceSpec, train: bool, report: Report) -> None:
    """Open the data the way `fit` does; a DataError the scan missed is still an error."""
    import warnings

    from sam2train.data.sampling import build_index
    from sam2train.data.sources.davis import open_source
    from sam2train.errors import DataError

    data = cfg.data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scan has reported them, file by file
            source = open_source(
                spec.path, format=spec.format, images_root=spec.images_root, videos=spec.videos
            )
            length = data.clip_length if train else data.val_clip_length
            build_index(source.videos, length, data.stride, train=train, source_name=spec.name)
    except DataError as exc:
        report.add(ERROR, Path(spec.path), "", f"the reader rejects this data: {exc}")


# ------------------------------------------------------------------------------------------------- shared checks
def _map(fn: Callable[[Any], Any], items: list, desc: str) -> list:
    """fn over items on a few threads (PIL and zlib decode without the GIL), in order, with a progress bar."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if not items:
        return []
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        done = pool.map(fn, items)
        disable = True if len(items) < PROGRESS_MIN else None  # None: only on a terminal
        return list(tqdm(done, total=len(items), desc=desc, unit="file", leave=False, disable=disable))


def _probe_image(path: Path, full: bool) -> tuple[int, int] | str:
    """(height, width), or what is wrong with the file. `full` decodes every pixel (truncated files fail)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if full:
                im.load()
            return im.height, im.width
    except FileNotFoundError:
        return "frame file not found"
    except Exception as exc:  # any failure to read is the file's problem, reported with PIL's words
        return f"cannot {'decode' if full else 'read'} frame: {type(exc).__name__}: {exc}"


def _probe_frames(paths: list[Path], full: bool) -> dict[Path, tuple[int, int] | str]:
    from PIL import ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated frame must fail here, whatever a library set
    try:
        found = _map(partial(_probe_image, full=full), paths, "frames")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return dict(zip(paths, found))


def _video_size(
    name: str, frames: list[Path], probes: dict[Path, tuple[int, int] | str], report: Report
) -> tuple[int, int] | None:
    """The size of the video's first readable frame; unreadable frames and other sizes are errors."""
    size, first = None, None
    for f in frames:
        got = probes[f]
        if isinstance(got, str):
            report.add(ERROR, f, name, got)
        elif size is None:
            size, first = got, f
        elif got != size:
            report.add(
                ERROR,
                f,
                name,
                f"frame is {got[1]}x{got[0]} but {first.name} is {size[1]}x{size[0]}: the frames of a video "
                "must share one size",
            )
    return size


def _check_size(
    got: tuple[int, int], frame: tuple[int, int], path: Path, video: str, what: str, report: Report
) -> None:
    """A mask within SIZE_TOLERANCE px of its frame is resized by the reader (warning); more is an error."""
    from sam2train.data.sources.davis import SIZE_TOLERANCE

    if tuple(got) == tuple(frame):
        return
    (mh, mw), (fh, fw) = got, frame
    message = f"{what} is {mw}x{mh} but its frame is {fw}x{fh}"
    if abs(mh - fh) <= SIZE_TOLERANCE and abs(mw - fw) <= SIZE_TOLERANCE:
        report.add(WARNING, path, video, f"{message}; resized with nearest neighbour")
    else:
        report.add(ERROR, path, video, f"{message} (more than {SIZE_TOLERANCE} px off)")


def _check_numbering(files: list[Path], video: str, report: Report) -> None:
    """Numeric frame names: two files with one number are an error, numbers skipped a warning (the usual step,
    e.g. every 5th frame, is not a gap)."""
    if not files or not all(p.stem.isdigit() for p in files):
        return
    numbered = sorted(files, key=lambda p: (int(p.stem), p.name))
    for a, b in zip(numbered, numbered[1:]):
        if int(a.stem) == int(b.stem):
            report.add(ERROR, b, video, f"frames {a.name} and {b.name} share frame index {int(a.stem)}")
    gaps = _gaps([int(p.stem) for p in numbered])
    if gaps:
        name = {int(p.stem): p.name for p in numbered}
        shown = ", ".join(f"{name[a]} -> {name[b]}" for a, b in gaps[:_MAX_SHOWN])
        more = f" and {len(gaps) - _MAX_SHOWN} more" if len(gaps) > _MAX_SHOWN else ""
        path = next(p for p in numbered if int(p.stem) == gaps[0][1])
        report.add(WARNING, path, video, f"{_plural(len(gaps), 'gap')} in frame numbers: {shown}{more}")


def _gaps(numbers: list[int]) -> list[tuple[int, int]]:
    """(before, after) pairs further apart than the most common step (ties: the smallest step)."""
    steps = Counter(b - a for a, b in zip(numbers, numbers[1:]) if b > a)
    if not steps:
        return []
    step = max(steps.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return [(a, b) for a, b in zip(numbers, numbers[1:]) if b - a > step]


def _decode_rles(jobs: list[tuple[Any, tuple[int, int], str, str, Path]], report: Report) -> None:
    """Decode every (segmentation, frame size, where, video, JSON); one that does not decode is an error."""
    from sam2train.data.sources.json_formats import decode_segmentation
    from sam2train.errors import DataError

    def decode(job: tuple[Any, tuple[int, int], str, str, Path]) -> str | None:
        try:
            decode_segmentation(job[0], job[1], job[2])
        except DataError as exc:
            return str(exc)
        return None

    for (_, _, _, video, path), failed in zip(jobs, _map(decode, jobs, "RLE masks")):
        if failed:
            report.add(ERROR, path, video, failed)


# ------------------------------------------------------------------------------------------------- DAVIS / MOSE
@dataclass
class _DavisListing:
    name: str
    frames_dir: Path
    frames: list[Path]
    masks: dict[str, list[tuple[int | None, Path]]]
    """Frame stem -> [(object folder id or None for a label PNG, file)], only stems that have a frame."""
    skip: str | None = None
    broken: bool = False


def _scan_davis(
    path: Path, images_root: Any, wanted: list[str] | None, parsed: Any, full: bool, report: Report
) -> list[_Video]:
    from sam2train.data.sources.davis import _subdirs, select_videos
    from sam2train.errors import DataError

    roots = _davis_roots(path, report)
    if roots is None:
        return []
    images, annotations = roots
    try:
        names = sorted({d.name for d in _subdirs(images)} | {d.name for d in _subdirs(annotations)})
        names = select_videos(names, wanted, path)
    except DataError as exc:
        report.add(ERROR, path, "", str(exc))
        return []
    return [video for _, video in _davis_videos(images, annotations, names, full, report)]


def _davis_roots(path: Path, report: Report, layout: str | None = None) -> tuple[Path, Path] | None:
    """(frames root, masks root) below JPEGImages/ and Annotations/ (at the reader's resolution level)."""
    from sam2train.data.sources.davis import DavisSource, _is_resolution_level, _pick_resolution
    from sam2train.errors import DataError

    images, annotations = path / "JPEGImages", path / "Annotations"
    for folder in (images, annotations):
        if not folder.is_dir():
            report.add(ERROR, folder, "", f"dataset folder not found ({layout or DavisSource.layout})")
            return None
    try:
        resolution = _pick_resolution(images, None)
        if resolution is not None:
            images = images / resolution
            if (annotations / resolution).is_dir():
                annotations = annotations / resolution
            elif _is_resolution_level(annotations):
                raise DataError(f"{annotations}: no '{resolution}' subfolder to match {images}")
    except DataError as exc:
        report.add(ERROR, path, "", str(exc))
        return None
    return images, annotations


def _davis_videos(
    images: Path, annotations: Path, names: list[str], full: bool, report: Report
) -> list[tuple[_DavisListing, _Video]]:
    """Each video of `names` listed and scanned as the DAVIS reader reads it."""
    listed = [_list_davis(images / n, annotations / n, n, report) for n in names]
    offset = 1 if any(o == 0 for item in listed for es in item.masks.values() for o, _ in es) else 0
    probes = _probe_frames([f for item in listed if not item.skip for f in item.frames], full)
    mask_files = [p for item in listed if not item.skip for es in item.masks.values() for _, p in es]
    masks = dict(zip(mask_files, _map(_probe_mask, mask_files, "masks")))
    return [(item, _davis_video(item, probes, masks, offset, report)) for item in listed]


def _list_davis(img_dir: Path, mask_dir: Path, name: str, report: Report) -> _DavisListing:
    """A video's frames and masks, or why the reader skips it (checks in the reader's order)."""
    from sam2train.data.sources.davis import IMAGE_EXTS, _list_masks, sort_stems
    from sam2train.errors import DataError

    item = _DavisListing(name, img_dir, [], {})
    if not img_dir.is_dir():
        item.skip = f"annotations but no frames folder {img_dir}"
        return item
    files = sorted(
        p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            report.add(
                ERROR, p, name, f"two frames with stem '{p.stem}': {by_stem[p.stem].name} and {p.name}"
            )
        by_stem.setdefault(p.stem, p)
    item.frames = sort_stems(list(by_stem.values()))
    _check_numbering(item.frames, name, report)
    try:
        masks = _list_masks(mask_dir) if mask_dir.is_dir() else None
    except DataError as exc:
        report.add(ERROR, mask_dir, name, str(exc))
        item.broken = True
        return item
    if not item.frames:
        item.skip = f"no .jpg/.jpeg/.png frames in {img_dir}"
    elif masks is None:
        item.skip = f"no annotation folder {mask_dir}"
    elif not masks:
        item.skip = f"no mask PNGs in {mask_dir}"
    else:
        for stem, entries in masks.items():
            if stem in by_stem:
                item.masks[stem] = entries
            else:
                for _, p in entries:
                    report.add(ERROR, p, name, f"mask has no frame: no {img_dir / stem}.jpg|.jpeg|.png")
    return item


def _probe_mask(path: Path) -> tuple[tuple[int, int], str, set[int]] | str:
    """((height, width), mode, pixel values) of a mask PNG (fully decoded), or what is wrong with it."""
    import numpy as np
    from PIL import Image

    from sam2train.data.sources.davis import MASK_MODES

    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                return f"mask has mode {im.mode}; expected palette (P) or grayscale (L, 1, I)"
            try:
                colors = im.getcolors(1 << 16)
            except ValueError:  # Pillow has no getcolors for 16-bit PNGs (mode I;16)
                colors = None
            values = {int(c) for _, c in colors} if colors is not None else set(np.unique(im).tolist())
            if im.mode == "1":
                values = {255 if v else 0 for v in values}
            return (im.height, im.width), im.mode, values
    except FileNotFoundError:
        return "mask file not found"
    except Exception as exc:  # as in _probe_image
        return f"cannot read mask: {type(exc).__name__}: {exc}"


def _davis_video(item: _DavisListing, probes: dict, masks: dict, offset: int, report: Report) -> _Video:
    """Frame sizes, mask sizes and values, and the ids of each annotated frame, as the reader reads them."""
    video = _Video(item.name, item.frames_dir, len(item.frames), [], skip=item.skip, broken=item.broken)
    if item.skip or item.broken:
        return video
    size = _video_size(item.name, item.frames, probes, report)
    values: dict[str, list[tuple[int | None, Path, set[int]]]] = {}
    for stem, entries in item.masks.items():
        for obj, p in entries:
            got = masks[p]
            if isinstance(got, str):
                report.add(ERROR, p, item.name, got)
                continue
            if size is not None:
                _check_size(got[0], size, p, item.name, "mask", report)
            values.setdefault(stem, []).append((obj, p, got[2]))
    if any(obj is None for es in values.values() for obj, _, _ in es):
        ids = _label_ids(video, values, report)
    else:
        ids = {s: {o + offset for o, _, v in es if o is not None and v - {0}} for s, es in values.items()}
    video.annotated = [ids.get(p.stem, set()) for p in item.frames if p.stem in item.masks]
    return video


def _label_ids(
    video: _Video, values: dict[str, list[tuple[int | None, Path, set[int]]]], report: Report
) -> dict[str, set[int]]:
    """Ids per frame stem of label PNGs (value = id, 255 void; a video whose masks hold only 0 and 255 is
    binary: 255 is object 1), reporting void-only masks and values that are no ids."""
    from sam2train.data.sources.davis import VOID_ID

    every = set().union(*(v for es in values.values() for _, _, v in es))
    video.binary = every <= {0, VOID_ID} and VOID_ID in every
    if video.binary:
        return {s: {1} if any(VOID_ID in v for _, _, v in es) else set() for s, es in values.items()}
    ids: dict[str, set[int]] = {}
    for stem, entries in values.items():
        for _, p, vals in entries:
            found = vals - {0, VOID_ID}
            video.void_masks += VOID_ID in vals
            if VOID_ID in vals and not found:
                message = "void-only mask: its only non-zero value is 255 (void), no object"
                report.add(WARNING, p, video.name, message)
            if len(found) > MAX_IDS_PER_MASK:
                message = (
                    f"{len(found)} distinct values: not object ids (an anti-aliased, resized or JPEG mask?)"
                )
                report.add(ERROR, p, video.name, message)
            elif max(found, default=0) > VOID_ID:
                message = (
                    f"ids up to {max(found)}, beyond the 8-bit palette: 16-bit values read as object ids"
                )
                report.add(WARNING, p, video.name, message)
            ids.setdefault(stem, set()).update(found)
    return ids


# ------------------------------------------------------------------------------------------------- YouTube-VOS
def _scan_ytvos(
    path: Path, images_root: Any, wanted: list[str] | None, parsed: Any, full: bool, report: Report
) -> list[_Video]:
    """The DAVIS scan of the videos `meta.json` lists, then the reader's checks against `meta.json`
    (`meta_problems`: a listed frame without its files, objects in no PNG or not listed are errors; per-frame
    disagreements are warnings). Folders `meta.json` does not list are skipped (warnings)."""
    from sam2train.data.sources.davis import _subdirs, select_videos
    from sam2train.data.sources.youtube_vos import META_FILE, YouTubeVosSource, meta_problems, read_meta
    from sam2train.errors import DataError

    roots = _davis_roots(path, report, YouTubeVosSource.layout)
    if roots is None:
        return []
    images, annotations = roots
    meta_path = path / META_FILE
    try:
        meta = read_meta(meta_path)
        names = select_videos(sorted(meta), wanted, meta_path)
    except DataError as exc:
        report.add(ERROR, meta_path, "", str(exc))
        return []
    present = []
    for name in names:
        missing = [f for f in (images / name, annotations / name) if meta[name] and not f.is_dir()]
        for folder in missing:
            report.add(ERROR, folder, name, f"folder not found, but {META_FILE} lists the video")
        if not missing:
            present.append(name)
    if wanted is None:
        on_disk = {d.name for d in _subdirs(images)} | {d.name for d in _subdirs(annotations)}
        for name in sorted(on_disk - set(meta)):
            folder = images / name if (images / name).is_dir() else annotations / name
            report.add(WARNING, folder, name, f"video skipped: not listed in {META_FILE}")
    start = len(report.problems)
    scanned = _davis_videos(images, annotations, present, full, report)
    errored = {p.video for p in report.problems[start:] if p.severity == ERROR}
    for item, video in scanned:
        objects = meta[item.name]
        if not objects or item.name in errored:  # a mask that could not be read: its ids are unknown
            continue
        if item.skip:
            report.add(
                ERROR,
                video.folder,
                item.name,
                f"{META_FILE} lists objects {sorted(objects)}, but {item.skip}",
            )
            video.broken = True
            continue
        stems = [p.stem for p in item.frames if p.stem in item.masks]
        stem_ids = dict(zip(stems, video.annotated))
        mask_dir = annotations / item.name
        for severity, file, message in meta_problems(
            objects, item.frames, item.frames_dir, mask_dir, stem_ids
        ):
            report.add(severity, file, item.name, message)
    return [video for _, video in scanned]


# ------------------------------------------------------------------------------------------------- COCO video
def _label(key: str, i: int, entry: Any) -> str:
    """How problems name a JSON list entry: `annotations[3] (id=7)`."""
    return f"{key}[{i}]" + (f" (id={entry['id']})" if isinstance(entry, dict) and "id" in entry else "")


def _scan_coco(
    path: Path, images_root: Any, wanted: list[str] | None, parsed: Any, full: bool, report: Report
) -> list[_Video]:
    from sam2train.data.sources.davis import select_videos
    from sam2train.data.sources.json_formats import read_json, require
    from sam2train.errors import DataError

    try:
        data = read_json(path) if parsed is None else parsed
        require(data, ("images", "annotations"), "top level")
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise DataError(f"'{key}' must be a list")
        root = Path(images_root) if images_root is not None else path.parent
        if not root.is_dir():
            raise DataError(f"images_root folder not found: {root}")
        names = _coco_video_names(data, report, path)
        frames, video_of = _coco_images(data["images"], names, root, report, path)
        per_image = _coco_annotations(data["annotations"], video_of, report, path)
        selected = select_videos(sorted(frames), wanted, path)
    except DataError as exc:
        report.add(ERROR, path, "", str(exc))
        return []
    probes = _probe_frames([f for n in selected for _, _, f in frames[n]], full)
    videos, jobs = [], []
    for name in selected:
        entries = sorted(frames[name], key=lambda e: e[0])
        for a, b in zip(entries, entries[1:]):
            if a[0] == b[0]:
                report.add(ERROR, path, name, f"images {a[1]} and {b[1]} share order_in_video {a[0]}")
        gaps = _gaps([e[0] for e in entries])
        if gaps:
            shown = ", ".join(f"{a} -> {b}" for a, b in gaps[:_MAX_SHOWN])
            report.add(WARNING, path, name, f"{_plural(len(gaps), 'gap')} in order_in_video: {shown}")
        size = _video_size(name, [e[2] for e in entries], probes, report)
        annotated = []
        for _, image_id, file in entries:
            rows = per_image.get(image_id, [])
            if rows:
                annotated.append({obj for obj, _, _, _ in rows})
            for _, seg, where, rle_hw in rows:
                if size is not None and rle_hw is not None:
                    _check_size(rle_hw, size, path, name, f"{where}: RLE (frame {file.name})", report)
                if full and size is not None:
                    jobs.append((seg, size, where, name, path))
        skip = None if annotated else "no annotation on any of its frames"
        videos.append(_Video(name, path, len(entries), annotated, skip=skip))
    _decode_rles(jobs, report)
    return videos


def _coco_video_names(data: dict, report: Report, path: Path) -> dict[Any, str]:
    from sam2train.data.sources.json_formats import require
    from sam2train.errors import DataError

    names: dict[Any, str] = {}
    for i, v in enumerate(data.get("videos") or []):
        try:
            require(v, ("id", "name"), _label("videos", i, v))
        except DataError as exc:
            report.add(ERROR, path, "", str(exc))
            continue
        if str(v["name"]) in names.values():
            report.add(
                ERROR, path, str(v["name"]), f"{_label('videos', i, v)}: two entries of 'videos' share a name"
            )
        names[v["id"]] = str(v["name"])
    return names


def _coco_images(
    images: list, names: dict[Any, str], root: Path, report: Report, path: Path
) -> tuple[dict[str, list[tuple[int, Any, Path]]], dict[Any, str | None]]:
    """video name -> [(order_in_video, image id, file)], and image id -> video name (None: a bad entry)."""
    from sam2train.data.sources.json_formats import _is_int, require
    from sam2train.errors import DataError

    frames: dict[str, list[tuple[int, Any, Path]]] = {}
    video_of: dict[Any, str | None] = {}
    for i, img in enumerate(images):
        where = _label("images", i, img)
        try:
            require(img, ("id", "file_name", "video_id", "order_in_video"), where)
            if not _is_int(img["order_in_video"]):
                raise DataError(f"{where}: 'order_in_video' must be an int, got {img['order_in_video']!r}")
            if img["id"] in video_of:
                raise DataError(f"{where}: image id {img['id']} is used twice")
            if names and img["video_id"] not in names:
                raise DataError(f"{where}: video_id {img['video_id']!r} is not in 'videos'")
        except DataError as exc:
            report.add(ERROR, path, "", str(exc))
            if isinstance(img, dict) and "id" in img and img["id"] not in video_of:
                video_of[img["id"]] = None  # its annotations are not reported again
            continue
        name = names.get(img["video_id"], str(img["video_id"]))
        video_of[img["id"]] = name
        frames.setdefault(name, []).append((img["order_in_video"], img["id"], root / img["file_name"]))
    return frames, video_of


def _coco_annotations(
    anns: list, video_of: dict[Any, str | None], report: Report, path: Path
) -> dict[Any, list[tuple[int, Any, str, tuple[int, int] | None]]]:
    """image id -> [(object id, segmentation, where, RLE size or None)], every entry schema-checked."""
    from sam2train.data.sources.json_formats import _is_int, check_segmentation, require
    from sam2train.errors import DataError

    track_key = next(
        (k for k in ("track_id", "instance_id") if any(k in a for a in anns if isinstance(a, dict))), None
    )
    obj_key = track_key or "category_id"
    rows = []
    for i, ann in enumerate(anns):
        where = _label("annotations", i, ann)
        video = ""
        try:
            require(ann, ("image_id", "segmentation", obj_key), where)
            if ann["image_id"] not in video_of:
                raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
            video = video_of[ann["image_id"]]
            if video is None:
                continue
            if not (_is_int(ann[obj_key]) and ann[obj_key] >= 0):
                raise DataError(f"{where}: '{obj_key}' must be an int >= 0, got {ann[obj_key]!r}")
            rle_hw = check_segmentation(ann["segmentation"], where)
        except DataError as exc:
            report.add(ERROR, path, video or "", str(exc))
            continue
        rows.append((ann["image_id"], ann[obj_key], ann["segmentation"], where, rle_hw))
    offset = 1 if any(r[1] == 0 for r in rows) else 0
    per_image: dict[Any, list[tuple[int, Any, str, tuple[int, int] | None]]] = {}
    for image_id, obj, seg, where, rle_hw in rows:
        per_image.setdefault(image_id, []).append((obj + offset, seg, where, rle_hw))
    return per_image


# ------------------------------------------------------------------------------------------------- SA-V
@dataclass
class _SavListing:
    video: _Video
    json_path: Path
    frames: list[Path] = field(default_factory=list)
    hw: tuple[int, int] | None = None
    """Size of the masks: video_height x video_width, else the RLEs' size."""
    segs: list[tuple[str, Any]] = field(default_factory=list)
    """(where, RLE) of every entry of the annotated masklet rows."""


def _scan_sav(
    path: Path, images_root: Any, wanted: list[str] | None, parsed: Any, full: bool, report: Report
) -> list[_Video]:
    import warnings

    from sam2train.data.sources.davis import select_videos
    from sam2train.data.sources.json_formats import _sav_name, sav_files
    from sam2train.errors import DataError

    try:
        if path.is_dir():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                by_name, left_out = sav_files(path)
            for w in caught:
                report.add(WARNING, path, "", str(w.message).removeprefix(f"{path}: "))
        else:
            by_name, left_out = {_sav_name(path): path}, {}
        selected = select_videos(sorted({*by_name, *left_out}), wanted, path)
    except DataError as exc:
        report.add(ERROR, path, "", str(exc).removeprefix(f"{path}: "))
        return []
    root = Path(images_root) if images_root is not None else (path if path.is_dir() else path.parent)
    listed = [
        _SavListing(_Video(n, path / f"{n}_auto.json", 0, [], skip=left_out[n]), path)
        if n in left_out
        else _list_sav(n, by_name[n], root, parsed if by_name[n] == path else None, report)
        for n in selected
    ]
    probes = _probe_frames([f for item in listed for f in item.frames], full)
    jobs = []
    for item in listed:
        if not item.frames:
            continue
        name = item.video.name
        size = _video_size(name, item.frames, probes, report)
        if size is not None:
            if item.hw is not None:
                what = f"mask size (frame {item.frames[0].name})"
                _check_size(item.hw, size, item.json_path, name, what, report)
            jobs += [(seg, size, where, name, item.json_path) for where, seg in item.segs if full]
    _decode_rles(jobs, report)
    return [item.video for item in listed]


def _list_sav(name: str, json_path: Path, root: Path, parsed: Any, report: Report) -> _SavListing:
    """The video's JSON checked entry by entry (`parse_sav`), and its frames (unless the reader skips it)."""
    from sam2train.data.sources.json_formats import parse_sav, read_json, sav_masklet
    from sam2train.errors import DataError

    item = _SavListing(_Video(name, json_path, 0, []), json_path)
    try:
        content = read_json(json_path) if parsed is None else parsed
        schema = parse_sav(content, "top level")
    except DataError as exc:
        report.add(ERROR, json_path, name, str(exc))
        item.video.broken = True
        return item
    for problem in schema.problems:
        report.add(ERROR, json_path, name, problem)
    item.video.broken = bool(schema.problems)
    img_dir = root / name
    files = list(img_dir.glob("*.jpg")) if img_dir.is_dir() else []
    if not files:
        item.video.skip = (
            f"no frames folder {img_dir}" if not img_dir.is_dir() else f"no .jpg frames in {img_dir}"
        )
        return item
    for p in files:
        if not p.stem.isdigit():
            report.add(ERROR, p, name, "SA-V frames must be named by frame number (%05d.jpg)")
    item.frames = sorted((p for p in files if p.stem.isdigit()), key=lambda p: (int(p.stem), p.name))
    _check_numbering(item.frames, name, report)
    present = {int(p.stem) for p in item.frames}
    every = schema.every
    for k in schema.rows:
        if k * every not in present:
            missing = img_dir / f"{k * every:05d}.jpg"
            report.add(
                ERROR, json_path, name, f"masklet[{k}] annotates frame {k * every}, but {missing} is missing"
            )
    masklet = sav_masklet(content, "top level")
    item.hw = schema.hw
    item.segs = [(f"masklet[{k}][{j}]", seg) for k in schema.rows for j, seg in enumerate(masklet[k])]
    item.video.folder = img_dir
    item.video.frames = len(item.frames)
    item.video.annotated = list(schema.rows.values())
    return item
