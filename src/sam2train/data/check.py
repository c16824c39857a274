"""`sam2train check-data`: scan every video of the configured data and list every problem with its file.

The readers (`sam2train.data.sources`) run here themselves, with a recording `ProblemSink`: where `fit` stops on
the first problem, they keep going and report all of them, for every configured source (each entry of
`data.train`, or `data.train_path`, and `data.val_path`). This module adds what only a report needs: the checks
against the clip length, the dataset-wide info lines, the table and the summary. Severities
(docs/data-checks.md lists every check and message):
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sam2train.data.problems import ERROR, INFO, SEVERITIES, WARNING, Problem

if TYPE_CHECKING:
    from sam2train.config import Config
    from sam2train.data.sources.base import SourceSpec, VideoCheck

__all__ = ["ERROR", "INFO", "SEVERITIES", "WARNING", "Problem", "Report", "check_sources", "run_checks"]
_MAX_SHOWN = 8
"""Names listed in one line (videos) before 'and N more'."""


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


def _check_source(
    cfg: Config, spec: SourceSpec, train: bool, fast: bool, report: Report, several: bool
) -> None:
    """Run the source's reader in record mode. Problems of the whole source name its config key
    (`data.train[1] (ytvos)` for an entry of `data.train`); `several`: the scanned line names the source too."""
    from sam2train.data.problems import ProblemSink
    from sam2train.data.sources import ReadOptions, read_source, resolve_format
    from sam2train.errors import DataError

    data = cfg.data
    path = Path(spec.path)
    split = "train" if train else "val"
    if not path.exists():
        report.add(ERROR, path, "", f"dataset path not found ({spec.where})")
        return
    try:
        options = ReadOptions.from_config(data)
        fmt, parsed = resolve_format(path, spec.format, spec.images_root, options)
    except DataError as exc:
        message = str(exc).removeprefix(f"{path}: ")  # the problem's path column names it
        report.add(ERROR, path, "", f"{spec.where}: {message}" if several else message)
        return
    sink = ProblemSink(record=True, full=not fast)
    source = read_source(path, fmt, parsed, spec.images_root, spec.videos, sink, options)
    if getattr(source, "detected", ""):  # DAVIS-style folders found under the names `images` / `masks`
        sink.problems.insert(0, Problem(INFO, path, "", source.detected))  # type: ignore[union-attr]
    start = len(report.problems)
    report.problems += sink.problems
    videos = source.checked if source is not None else []
    length, key = (
        (data.clip_length, "data.clip_length") if train else (data.val_clip_length, "data.val_clip_length")
    )
    if source is not None and source.still_images:  # each image is one clip, whatever the clip length
        length = None
    _check_videos(videos, path, length, key, sink.errors_of(), report, data.track_later_objects)
    if not train:
        _check_scorable(videos, path, length, cfg, report)
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
    videos: list[VideoCheck],
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


SCORED_METRICS = ("val/J", "val/F", "val/J&F")
"""Validation metrics that need a frame after an object's prompt frame."""


def _check_scorable(
    videos: list[VideoCheck], path: Path, length: int | None, cfg: Config, report: Report
) -> None:
    """Validation scores J and F on the annotated frames after an object's prompt frame: a video annotated on
    one frame only (a "prompt-only" set) has nothing to score. None scorable: an error when a monitor needs J or F
    (`fit` would stop at setup), else a warning; some: one warning listing them."""
    usable = [v for v in videos if not v.broken and not v.skip and any(v.annotated)]
    if not usable:
        return  # _check_videos has reported it
    window_ok = length is None or length >= 2
    unscorable = [
        v.name for v in usable if not (window_ok and len(v.annotated) >= 2 and any(v.annotated[:-1]))
    ]
    if not unscorable:
        return
    what = "no annotated frame after its prompt frame: J and F have nothing to score there"
    if len(unscorable) < len(usable):
        shown = ", ".join(unscorable[:_MAX_SHOWN]) + (
            f" and {len(unscorable) - _MAX_SHOWN} more" if len(unscorable) > _MAX_SHOWN else ""
        )
        report.add(WARNING, path, "", f"{_plural(len(unscorable), 'validation video')} with {what}: {shown}")
        return
    monitors = {"checkpoint.monitor": cfg.checkpoint.monitor}
    if cfg.early_stopping.enabled:
        monitors["early_stopping.monitor"] = cfg.early_stopping.monitor
    needing = [f"{k}={m}" for k, m in monitors.items() if m in SCORED_METRICS]
    reason = (
        "data.val_clip_length=1 leaves one frame per clip"
        if not window_ok
        else "every validation video is annotated on its prompt frame only"
    )
    message = f"no validation video has an annotated frame after its prompt frame ({reason}): J and F cannot be scored"
    if needing:
        report.add(
            ERROR,
            path,
            "",
            f"{message}, and {', '.join(needing)} needs them; annotate later frames or monitor val/total",
        )
    else:
        report.add(WARNING, path, "", f"{message}; only the validation losses are logged")


def _reader_agrees(cfg: Config, spec: SourceSpec, train: bool, report: Report) -> None:
    """Open the data the way `fit` does; a DataError the scan missed is still an error."""
    import warnings

    from sam2train.data.sampling import build_index
    from sam2train.data.sources import ReadOptions, open_source
    from sam2train.errors import DataError

    data = cfg.data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scan has reported them, file by file
            source = open_source(
                spec.path,
                format=spec.format,
                images_root=spec.images_root,
                videos=spec.videos,
                options=ReadOptions.from_config(data),
            )
            length = data.clip_length if train else data.val_clip_length
            length = None if source.still_images else length
            build_index(source.videos, length, data.stride, train=train, source_name=spec.name)
    except DataError as exc:
        report.add(ERROR, Path(spec.path), "", f"the reader rejects this data: {exc}")
