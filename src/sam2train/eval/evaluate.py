"""Score folders of predicted label PNGs against DAVIS-style ground truth (`sam2train evaluate`).

A prediction whose size is off the ground truth's by at most `SIZE_TOLERANCE` px per side (the rule the data
readers apply to a mask off its frame, `data.sources.files`) is resized to the ground truth's size with nearest
neighbour, with one warning per sequence; more is an error naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2train.data.labels import VOID_ID, read_label_png, read_labels
from sam2train.data.sources.files import SIZE_TOLERANCE, resize_nearest
from sam2train.errors import DataError
from sam2train.metrics import BOUND_TH, boundary_f, jaccard, summarize

log = logging.getLogger("sam2train")


def _present_ids(labels: np.ndarray) -> np.ndarray:
    """[max id + 1] bool: which ids occur (a histogram: much faster than np.unique on a frame)."""
    return np.bincount(labels.reshape(-1)) > 0


def _id_set(labels: np.ndarray) -> set[int]:
    return set(np.flatnonzero(_present_ids(labels)).tolist())


class _SequenceMasks:
    """The masks of one video in a folder: palette/id PNGs `<seq>/<frame>.png`, or one folder of binary PNGs
    per object `<seq>/<obj>/<frame>.png` (object id = int(folder name)). Listing only; frames are read on demand."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise DataError(f"missing sequence folder {folder}")
        self.folder = folder
        self.object_dirs: dict[int, Path] = {}
        self.resized: set[tuple[tuple[int, int], tuple[int, int]]] = set()
        """(own size, target size) of the frames resized within the size tolerance, for one warning."""
        pngs = sorted(p.name for p in folder.glob("*.png"))
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if pngs:
            self.frames = pngs
        elif subdirs:
            for d in subdirs:
                if not d.name.isdigit():
                    raise DataError(f"{d}: per-object mask folders must be named by object id (e.g. 001)")
                self.object_dirs[int(d.name)] = d
            self.frames = sorted({p.name for d in subdirs for p in d.glob("*.png")})
        else:
            raise DataError(f"no mask PNGs in {folder} (expected <frame>.png or <object>/<frame>.png)")

    @property
    def per_object(self) -> bool:
        return bool(self.object_dirs)

    def object_ids(self) -> list[int]:
        """Every object id of the video: the object folders, or every id over all frames (void excluded)."""
        if self.per_object:
            return sorted(self.object_dirs)
        seen: set[int] = set()
        for frame in self.frames:
            seen |= _id_set(read_labels(self.folder / frame))
        return sorted(seen - {0, VOID_ID})

    def read(self, frame: str, ids: list[int], *, is_gt: bool) -> tuple[np.ndarray, np.ndarray]:
        """Masks [N, H, W] bool of `ids` in `frame`, and void [H, W] bool (all False for predictions and the
        per-object layout). A prediction holding an id outside `ids` (255, void, reads as background), or
        lacking a file, is a DataError."""
        if not self.per_object:
            path = self.folder / frame
            lab = read_labels(path)
            void = lab == VOID_ID if is_gt else np.zeros(lab.shape, dtype=bool)
            if not is_gt:
                extra = sorted(_id_set(lab) - {0, VOID_ID, *ids})
                if extra:
                    raise DataError(f"{path}: object id(s) {extra} are not in the ground truth {ids}")
            masks = np.stack([lab == i for i in ids]) if ids else np.zeros((0, *lab.shape), dtype=bool)
            return masks, void
        if not is_gt:
            extra = sorted(set(self.object_dirs) - set(ids))
            if extra:
                raise DataError(f"{self.folder}: object folder(s) {extra} are not in the ground truth {ids}")
        masks = []
        for i in ids:
            if i not in self.object_dirs:
                raise DataError(f"missing object folder {self.folder / f'{i:03d}'} (object {i})")
            masks.append(read_label_png(self.object_dirs[i] / frame)[0] > 0)
        if len({m.shape for m in masks}) > 1:
            raise DataError(f"{self.folder}: the object masks of frame {frame} differ in size")
        stacked = np.stack(masks)
        return stacked, np.zeros(stacked.shape[1:], dtype=bool)


def _resolve_gt_root(gt_dir: Path) -> Path:
    """The folder of sequences: `gt_dir` itself, or its `Annotations/480p` / `Annotations` (a DAVIS root)."""
    for candidate in (gt_dir / "Annotations" / "480p", gt_dir / "Annotations"):
        if candidate.is_dir():
            return candidate
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder {gt_dir} does not exist")
    return gt_dir


def _load_pair(
    gt: _SequenceMasks, pred: _SequenceMasks, frame: str, ids: list[int]
) -> tuple[np.ndarray, ...]:
    """(pred [N, H, W], gt [N, H, W], void [H, W]) of one frame, checked for presence and size."""
    g, void = gt.read(frame, ids, is_gt=True)
    if not pred.per_object and not (pred.folder / frame).is_file():
        raise DataError(
            f"missing prediction {pred.folder / frame} (the ground truth has {gt.folder / frame})"
        )
    p, _ = pred.read(frame, ids, is_gt=False)
    (ph, pw), (gh, gw) = p.shape[-2:], g.shape[-2:]
    if (ph, pw) != (gh, gw):
        if abs(ph - gh) > SIZE_TOLERANCE or abs(pw - gw) > SIZE_TOLERANCE:
            where = pred.folder / frame if not pred.per_object else pred.folder / "<object>" / frame
            raise DataError(
                f"{where}: prediction size {pw}x{ph} (WxH) differs from the ground truth's {gw}x{gh} "
                f"({gt.folder / frame}) by more than {SIZE_TOLERANCE} px"
            )
        pred.resized.add(((pw, ph), (gw, gh)))
        p = np.stack([resize_nearest(m, (gh, gw)) for m in p]) if len(p) else np.zeros((0, gh, gw), bool)
    return p, g, void


def _score_chunk(
    gt: _SequenceMasks,
    pred: _SequenceMasks,
    frames: list[str],
    ids: list[int],
    bound_th: float,
    ignore_void: bool,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F [N, len(frames)] of a run of frames, batched over frames of one size."""
    pairs = [_load_pair(gt, pred, fr, ids) for fr in frames]
    js, fs = [], []
    start = 0
    for end in range(1, len(pairs) + 1):
        if end == len(pairs) or pairs[end][1].shape != pairs[start][1].shape:
            p, g, v = (
                torch.from_numpy(np.stack([x[k] for x in pairs[start:end]])).to(device) for k in range(3)
            )
            v = v if ignore_void else None
            js.append(jaccard(p, g, v).to(torch.float64).cpu().numpy())
            fs.append(boundary_f(p, g, v, bound_th).to(torch.float64).cpu().numpy())
            start = end
    return np.concatenate(js).T, np.concatenate(fs).T


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    sequences: Sequence[str] | None = None,
    skip_first_last: bool = True,
    bound_th: float = BOUND_TH,
    ignore_void: bool = False,
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    chunk: int = 4,
) -> dict[str, Any]:
    """Score a folder of predicted masks against DAVIS-layout ground truth (semi-supervised protocol).

    gt_dir: a folder of sequences `<gt>/<seq>/<frame>.png`, or a DAVIS root (`<gt>/Annotations/480p/<seq>`, or
    `<gt>/Annotations/<seq>`). pred_dir: `<pred>/<seq>/<frame>.png`. Either side may instead hold one folder of
    binary PNGs per object, `<seq>/<obj>/<frame>.png`. Palette PNGs give object ids with 255 void; grayscale 0/255
    (DAVIS-2016) and 0/1 (OSVOS) masks are object 1.
    The frames scored are the ground truth's PNGs (first and last skipped when `skip_first_last`); objects are
    every id in the ground truth of the sequence. By default void pixels (255) count as background, as in
    davis2017-evaluation (it zeroes 255 before its void mask is taken, so its published numbers are computed
    that way); `ignore_void=True` leaves them out of J and F instead (what its `void_pixels` argument intends).
    sequences: which to score (default: every sequence folder of the ground truth); every one needs its
    prediction folder. A prediction off the ground truth's size by at most SIZE_TOLERANCE px per side is resized
    (nearest neighbour, one warning per sequence), as the data readers resize a mask off its frame.
    num_workers threads (default: CPU count) each read and score `chunk` frames at a time; on the CPU torch runs
    single-threaded inside the call (restored after), since the threads already fill the cores.
    A missing prediction folder, frame or object folder, an object id not in the ground truth, or a size
    mismatch beyond the tolerance raises DataError (a ValueError) naming the file.
    Returns {"J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay", "per_sequence": {seq: {"J", "F",
    "J&F"}}}, floats in [0, 1]; per-sequence scores are means over that sequence's objects.
    """
    pred_root, gt_root = Path(pred_dir), _resolve_gt_root(Path(gt_dir))
    if not pred_root.is_dir():
        raise DataError(f"prediction folder {pred_root} does not exist")
    names = _sequence_names(gt_root, pred_root, sequences)
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool:
            seqs = [(_SequenceMasks(gt_root / n), _SequenceMasks(pred_root / n)) for n in names]
            jobs = _submit_chunks(pool, seqs, skip_first_last, chunk, (bound_th, ignore_void, dev))
            scores = _collect(pool, names, jobs)
    finally:
        torch.set_num_threads(threads)
    for _, pred in seqs:
        for (pw, ph), (gw, gh) in sorted(pred.resized):
            log.warning(
                f"{pred.folder}: predictions are {pw}x{ph} (WxH), the ground truth {gw}x{gh}; within "
                f"{SIZE_TOLERANCE} px, so resized to it with nearest neighbour"
            )
    return scores


def _sequence_names(gt_root: Path, pred_root: Path, sequences: Sequence[str] | None) -> list[str]:
    """The sequences to score, sorted: `sequences` (each must be in the ground truth) or every ground-truth
    folder; each must have its prediction folder (DataError naming the missing ones and --sequences)."""
    available = sorted(p.name for p in gt_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = sorted(set(sequences)) if sequences is not None else available
    if not names:
        raise DataError(f"no sequence folders in {gt_root}")
    unknown = [n for n in names if n not in available]
    if unknown:
        shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
        raise DataError(
            f"sequence(s) {', '.join(unknown)} not in the ground truth {gt_root} (it has {shown})"
        )
    missing = [n for n in names if not (pred_root / n).is_dir()]
    if missing:
        present = [n for n in names if n not in missing]
        what = f"missing prediction folder {pred_root / missing[0]}"
        if len(missing) > 1:
            more = ", ".join(missing[1:6]) + (", ..." if len(missing) > 6 else "")
            what += f" and {len(missing) - 1} more ({more})"
        hint = f"; score only the predicted ones with --sequences {','.join(present)}" if present else ""
        raise DataError(f"{what}: {len(missing)} of {len(names)} sequences have no predictions{hint}")
    return names


def _collect(pool: ThreadPoolExecutor, names: list[str], jobs: list[list[Future]]) -> dict[str, Any]:
    """The overall scores and each sequence's, from the chunks' per-object J and F (pending work is cancelled
    at the first error)."""
    all_j: list[np.ndarray] = []
    all_f: list[np.ndarray] = []
    per_sequence: dict[str, dict[str, float]] = {}
    for name, futures in zip(names, jobs):
        try:
            results = [fut.result() for fut in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        j = np.concatenate([r[0] for r in results], axis=1)
        f = np.concatenate([r[1] for r in results], axis=1)
        all_j.extend(j)
        all_f.extend(f)
        jm, fm = float(np.mean(j.mean(axis=1))), float(np.mean(f.mean(axis=1)))
        per_sequence[name] = {"J": jm, "F": fm, "J&F": (jm + fm) / 2}
    return {**summarize(all_j, all_f), "per_sequence": per_sequence}


def _submit_chunks(
    pool: ThreadPoolExecutor,
    seqs: list[tuple[_SequenceMasks, _SequenceMasks]],
    skip_first_last: bool,
    chunk: int,
    scoring: tuple[float, bool, torch.device],
) -> list[list[Future]]:
    """Check each (ground truth, prediction) pair of sequences and queue its frames in chunks for scoring."""
    for gt, _ in seqs:
        if skip_first_last and len(gt.frames) < 3:
            raise DataError(
                f"{gt.folder}: {len(gt.frames)} annotated frame(s) leave none to score once the first and "
                "last are skipped (pass --no-skip-first-last; skip_first_last=False in Python)"
            )
    all_ids = list(pool.map(lambda s: s[0].object_ids(), seqs))
    jobs = []
    for (gt, pred), ids in zip(seqs, all_ids):
        if not ids:
            raise DataError(f"{gt.folder}: no object in the ground truth")
        frames = gt.frames[1:-1] if skip_first_last else gt.frames
        chunks = [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
        jobs.append([pool.submit(_score_chunk, gt, pred, c, ids, *scoring) for c in chunks])
    return jobs
