"""J (region IoU), F (boundary F-measure) and J&F as the DAVIS semi-supervised evaluators compute them.

One torch implementation serves validation (batched [T, N, H, W] tensors, on any device) and files on disk
(`evaluate_folders`, numpy arrays in, numpy out). It reproduces davis2017-evaluation's `db_eval_iou`,
`db_eval_boundary` (`_seg2bmap`, dilation by `skimage.morphology.disk(ceil(0.008 * diagonal))`, `f_measure`'s
empty-map rules) and `db_statistics` (mean, recall, decay). The disk dilation is evaluated exactly, as a union of
rectangles counted on an integral image at the boundary pixels only, so it costs a few passes per frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sam2train.data.source_base import DataError

__all__ = [
    "BOUND_TH",
    "boundary_f",
    "disk_radius",
    "evaluate_folders",
    "frame_statistics",
    "jaccard",
    "seg2bmap",
    "sequence_scores",
    "summarize",
]

BOUND_TH = 0.008
"""DAVIS boundary tolerance, as a fraction of the image diagonal (8 px at 854x480)."""
VOID_ID = 255
"""Palette index of void pixels in DAVIS-style annotations."""

ArrayLike = Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------- per frame


def _to_bool(x: ArrayLike) -> Tensor:
    """A torch bool view of a mask: bool as is, any other dtype read as x > 0 (0/1 masks and logits alike)."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        t = torch.from_numpy(x if x.flags.writeable else x.copy())  # torch warns on read-only arrays
    else:
        t = x
    return t if t.dtype == torch.bool else t > 0


def _prepare(
    pred: ArrayLike, gt: ArrayLike, void: ArrayLike | None
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Bool tensors with equal shapes [..., H, W]; void broadcast to them. The flag says whether to return numpy."""
    as_numpy = isinstance(pred, np.ndarray) or isinstance(gt, np.ndarray)
    p, g = _to_bool(pred), _to_bool(gt)
    if p.shape != g.shape or p.dim() < 2:
        raise ValueError(
            f"pred {tuple(p.shape)} and gt {tuple(g.shape)} must be masks [..., H, W] of one shape"
        )
    g = g.to(p.device)
    v = None
    if void is not None:
        v = _to_bool(void).to(p.device)
        if v.shape[-2:] != p.shape[-2:]:
            raise ValueError(f"void {tuple(v.shape)} does not match the masks' size {tuple(p.shape[-2:])}")
        while v.dim() < p.dim():  # void is per frame [..., H, W]; masks may carry an object axis before H, W
            v = v.unsqueeze(-3)
        v = v.expand_as(p)
    return p, g, v, as_numpy


def _ratio_dtype(device: torch.device) -> torch.dtype:
    # float64 like the numpy reference; MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


def _out(x: Tensor, as_numpy: bool) -> ArrayLike:
    return x.cpu().numpy() if as_numpy else x


def jaccard(pred: ArrayLike, gt: ArrayLike, void: ArrayLike | None = None) -> ArrayLike:
    """Region similarity J = |P and G| / |P or G| per mask, 1 when both are empty (`db_eval_iou`).

    pred, gt: [..., H, W] bool (other dtypes read as > 0); void: [..., H, W] bool, pixels left out of both counts
    (a per-frame void [T, H, W] broadcasts over the objects of [T, N, H, W] masks).
    Returns [...] float64 (float32 on MPS): a tensor on the input's device, or numpy for numpy input.
    """
    p, g, v, as_numpy = _prepare(pred, gt, void)
    inter, union = p & g, p | g
    if v is not None:
        inter, union = inter & ~v, union & ~v
    inter, union = inter.sum(dim=(-2, -1)), union.sum(dim=(-2, -1))
    dtype = _ratio_dtype(p.device)
    j = torch.where(
        union == 0, torch.ones((), dtype=dtype, device=p.device), inter.to(dtype) / union.to(dtype)
    )
    return _out(j, as_numpy)


def seg2bmap(mask: Tensor) -> Tensor:
    """One-pixel-wide boundary map of binary masks, as DAVIS `_seg2bmap` at full resolution.

    mask: [..., H, W] bool. A pixel is on the boundary where it differs from its east, south or south-east
    neighbour; in the last row only east counts, in the last column only south, the bottom-right pixel never.
    Returns [..., H, W] bool.
    """
    b = torch.zeros_like(mask)
    core = mask[..., :-1, :-1]
    b[..., :-1, :-1] = (core ^ mask[..., :-1, 1:]) | (core ^ mask[..., 1:, :-1]) | (core ^ mask[..., 1:, 1:])
    b[..., -1, :-1] = mask[..., -1, :-1] ^ mask[..., -1, 1:]
    b[..., :-1, -1] = mask[..., :-1, -1] ^ mask[..., 1:, -1]
    return b


def disk_radius(bound_th: float, height: int, width: int) -> int:
    """Dilation radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th * sqrt(H^2 + W^2))."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    # H^2 + W^2 is exact and sqrt correctly rounded: the same float as np.linalg.norm((H, W))
    return math.ceil(bound_th * math.sqrt(height * height + width * width))


def _disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """The disk {x^2 + y^2 <= r^2} (skimage `disk`) as a union of centred rectangles (half-height, half-width).

    Row offset a reaches columns |x| <= isqrt(r^2 - a^2); a rectangle is kept only where the next row is
    narrower, since a taller one of the same width covers it.
    """
    widths = [math.isqrt(radius * radius - a * a) for a in range(radius + 1)]
    return [(a, widths[a]) for a in range(radius + 1) if a == radius or widths[a + 1] < widths[a]]


def _count_matched(src: Tensor, ref: Tensor, radius: int) -> Tensor:
    """Per map, how many `src` pixels have a `ref` pixel within the disk of `radius` (i.e. src & dilate(ref)).

    src, ref: [M, H, W] bool. Returns [M] int64. Equivalent to cv2.dilate with the disk footprint (pixels outside
    the image never match), counted with an integral image of `ref` at the `src` pixels only.
    """
    m, h, w = ref.shape
    integral = torch.zeros(m, h + 1, w + 1, dtype=torch.int32, device=ref.device)
    integral[:, 1:, 1:] = ref.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    flat = integral.view(-1)
    idx, y, x = src.nonzero(as_tuple=True)
    base = idx * ((h + 1) * (w + 1))
    hit = torch.zeros(idx.shape, dtype=torch.bool, device=src.device)
    for a, b in _disk_rectangles(radius):
        y0, y1 = (y - a).clamp(min=0) * (w + 1), (y + a + 1).clamp(max=h) * (w + 1)
        x0, x1 = (x - b).clamp(min=0), (x + b + 1).clamp(max=w)
        count = flat[base + y1 + x1] - flat[base + y0 + x1] - flat[base + y1 + x0] + flat[base + y0 + x0]
        hit |= count > 0
    return torch.zeros(m, dtype=torch.int64, device=src.device).index_add_(0, idx, hit.to(torch.int64))


def _crop_to_content(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Crop [M, H, W] maps to the rows and columns where either holds a pixel: matching is unchanged (no pixel
    lies outside), and the integral images shrink to the objects' extent."""
    rows = (a.any(dim=2) | b.any(dim=2)).any(dim=0).nonzero()
    if rows.numel() == 0:
        return a[:, :0, :0], b[:, :0, :0]
    cols = (a.any(dim=1) | b.any(dim=1)).any(dim=0).nonzero()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return a[:, r0:r1, c0:c1], b[:, r0:r1, c0:c1]


def boundary_f(
    pred: ArrayLike, gt: ArrayLike, void: ArrayLike | None = None, bound_th: float = BOUND_TH
) -> ArrayLike:
    """Boundary F-measure per mask, as DAVIS `f_measure` (`db_eval_boundary`).

    pred, gt: [..., H, W] bool (other dtypes read as > 0); void: [..., H, W] bool, removed from both masks
    before their boundaries are taken (the reference's `mask * ~void`).
    Boundaries by `seg2bmap`, each dilated by a disk of `disk_radius(bound_th, H, W)` pixels; precision = share
    of predicted boundary pixels near the GT boundary, recall likewise. Both boundaries empty: F = 1; exactly one
    empty: F = 0; F = 2PR / (P + R), 0 when P + R = 0.
    Returns [...] float64 (float32 on MPS): a tensor on the input's device, or numpy for numpy input.
    """
    p, g, v, as_numpy = _prepare(pred, gt, void)
    lead, (h, w) = p.shape[:-2], p.shape[-2:]
    if v is not None:
        p, g = p & ~v, g & ~v
    pb, gb = seg2bmap(p.reshape(-1, h, w)), seg2bmap(g.reshape(-1, h, w))
    radius = disk_radius(bound_th, h, w)
    dtype = _ratio_dtype(p.device)
    n_fg, n_gt = pb.sum(dim=(-2, -1)).to(dtype), gb.sum(dim=(-2, -1)).to(dtype)
    pb, gb = _crop_to_content(pb, gb)
    fg_match = _count_matched(pb, gb, radius).to(dtype)
    gt_match = _count_matched(gb, pb, radius).to(dtype)
    one, zero = torch.ones((), dtype=dtype, device=p.device), torch.zeros((), dtype=dtype, device=p.device)
    # empty-map rules of f_measure: no predicted boundary -> precision 1, no GT boundary -> recall 1
    precision = torch.where(n_fg == 0, one, fg_match / n_fg.clamp(min=1))
    recall = torch.where(n_gt == 0, one, gt_match / n_gt.clamp(min=1))
    precision = torch.where((n_fg > 0) & (n_gt == 0), zero, precision)
    recall = torch.where((n_fg == 0) & (n_gt > 0), zero, recall)
    denom = precision + recall
    f = torch.where(denom == 0, zero, 2 * precision * recall / torch.where(denom == 0, one, denom))
    return _out(f.reshape(lead), as_numpy)


# ----------------------------------------------------------------------------------------------- per sequence


def sequence_scores(
    pred: ArrayLike,
    gt: ArrayLike,
    void: ArrayLike | None = None,
    skip_first_last: bool = True,
    bound_th: float = BOUND_TH,
) -> dict[str, np.ndarray]:
    """Per-object, per-frame J and F of one video.

    pred, gt: [T, N, H, W] bool (T frames in order, N objects); void: [T, H, W] bool or None.
    skip_first_last drops frames 0 and T-1 (DAVIS semi-supervised: the prompted frame and the last one).
    Returns {"J": [N, T'], "F": [N, T']} float64 numpy arrays (T' = T - 2 when skipping), rows per object,
    ready for `summarize(list(scores["J"]), list(scores["F"]))`.
    """
    p, g, v, _ = _prepare(pred, gt, void)
    if p.dim() != 4:
        raise ValueError(f"sequence_scores expects [T, N, H, W] masks, got {tuple(p.shape)}")
    if skip_first_last:
        if p.shape[0] < 3:
            raise ValueError(f"{p.shape[0]} frames leave none to score once the first and last are skipped")
        p, g = p[1:-1], g[1:-1]
        v = None if v is None else v[1:-1]
    j = jaccard(p, g, v).to(torch.float64).cpu().numpy()
    f = boundary_f(p, g, v, bound_th).to(torch.float64).cpu().numpy()
    return {"J": np.ascontiguousarray(j.T), "F": np.ascontiguousarray(f.T)}


def frame_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (share of frames > 0.5) and decay of one object's per-frame scores (`db_statistics`).

    Decay = mean of the first quarter minus mean of the last quarter, with the reference's overlapping bins
    values[ids[i] : ids[i+1] + 1], ids = round(linspace(1, T, 5) + 1e-10) - 1. The reference casts ids to uint8
    and so breaks past 256 frames; here they stay int64 (identical below that).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-frame scores, got shape {values.shape}")
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def summarize(per_object_j: Sequence[np.ndarray], per_object_f: Sequence[np.ndarray]) -> dict[str, float]:
    """Dataset scores from per-object per-frame J and F (one 1-D array per object, all videos together).

    Returns {"J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay"}: each statistic of
    `frame_statistics` per object, then the mean over objects; J&F = (J + F) / 2.
    """
    if len(per_object_j) == 0 or len(per_object_j) != len(per_object_f):
        raise ValueError(
            f"need as many J as F arrays, at least one: got {len(per_object_j)} and {len(per_object_f)}"
        )
    j_stats = np.array([frame_statistics(x) for x in per_object_j])
    f_stats = np.array([frame_statistics(x) for x in per_object_f])
    j_mean, j_recall, j_decay = (float(x) for x in j_stats.mean(axis=0))
    f_mean, f_recall, f_decay = (float(x) for x in f_stats.mean(axis=0))
    return {
        "J&F": (j_mean + f_mean) / 2,
        "J": j_mean,
        "F": f_mean,
        "J_recall": j_recall,
        "F_recall": f_recall,
        "J_decay": j_decay,
        "F_decay": f_decay,
    }


# ----------------------------------------------------------------------------------------------- folders


def _read_png(path: Path) -> tuple[np.ndarray, str]:
    if not path.is_file():
        raise DataError(f"missing mask file {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im), im.mode
    except OSError as e:
        raise DataError(f"cannot read mask file {path}: {e}") from e


def _read_labels(path: Path) -> np.ndarray:
    """An id map [H, W] (unsigned ints) from a mask PNG: palette (P) or grayscale ids, 255 void.

    A grayscale or 1-bit mask holding only 0 and 255 (DAVIS-2016, SA-V) is one object: 255 becomes id 1.
    """
    arr, mode = _read_png(path)
    if mode not in ("P", "L", "1", "I", "I;16"):
        raise DataError(f"{path}: mask mode {mode!r} is not supported; use palette (P) or grayscale (L) PNGs")
    if mode == "1":
        return arr.astype(np.uint8)
    if mode == "L" and not _present_ids(arr)[1:255].any():
        return (arr == 255).astype(np.uint8)
    if arr.dtype.kind == "i":
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{path}: object ids must lie in 0..65535")
        arr = arr.astype(np.uint16)
    return arr


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
            seen |= _id_set(_read_labels(self.folder / frame))
        return sorted(seen - {0, VOID_ID})

    def read(self, frame: str, ids: list[int], *, is_gt: bool) -> tuple[np.ndarray, np.ndarray]:
        """Masks [N, H, W] bool of `ids` in `frame`, and void [H, W] bool (all False for predictions and the
        per-object layout). A prediction holding an id outside `ids` (255, void, reads as background), or
        lacking a file, is a DataError."""
        if not self.per_object:
            path = self.folder / frame
            lab = _read_labels(path)
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
            masks.append(_read_png(self.object_dirs[i] / frame)[0] > 0)
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
    if p.shape[-2:] != g.shape[-2:]:
        where = pred.folder / frame if not pred.per_object else pred.folder / "<object>" / frame
        raise DataError(
            f"{where}: prediction size {p.shape[-1]}x{p.shape[-2]} (WxH) differs from the ground truth's "
            f"{g.shape[-1]}x{g.shape[-2]} ({gt.folder / frame})"
        )
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
    sequences: which to score (default: every sequence folder of the ground truth).
    num_workers threads (default: CPU count) each read and score `chunk` frames at a time; on the CPU torch runs
    single-threaded inside the call (restored after), since the threads already fill the cores.
    A missing prediction folder, frame or object folder, an object id not in the ground truth, or a size
    mismatch raises DataError (a ValueError) naming the file.
    Returns {"J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay", "per_sequence": {seq: {"J", "F",
    "J&F"}}}, floats in [0, 1]; per-sequence scores are means over that sequence's objects.
    """
    pred_root, gt_root = Path(pred_dir), _resolve_gt_root(Path(gt_dir))
    if not pred_root.is_dir():
        raise DataError(f"prediction folder {pred_root} does not exist")
    if sequences is None:
        sequences = [p.name for p in gt_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = sorted(sequences)
    if not names:
        raise DataError(f"no sequence folders in {gt_root}")
    dev = torch.device(device)
    workers = num_workers or os.cpu_count() or 1
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            seqs = [(_SequenceMasks(gt_root / n), _SequenceMasks(pred_root / n)) for n in names]
            for gt, _ in seqs:
                if skip_first_last and len(gt.frames) < 3:
                    raise DataError(
                        f"{gt.folder}: {len(gt.frames)} annotated frame(s) leave none to score once the first and "
                        "last are skipped (pass skip_first_last=False)"
                    )
            all_ids = list(pool.map(lambda s: s[0].object_ids(), seqs))
            jobs = []
            for (gt, pred), ids in zip(seqs, all_ids):
                if not ids:
                    raise DataError(f"{gt.folder}: no object in the ground truth")
                frames = gt.frames[1:-1] if skip_first_last else gt.frames
                chunks = [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
                jobs.append(
                    [pool.submit(_score_chunk, gt, pred, c, ids, bound_th, ignore_void, dev) for c in chunks]
                )
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
    finally:
        torch.set_num_threads(threads)
    return {**summarize(all_j, all_f), "per_sequence": per_sequence}
