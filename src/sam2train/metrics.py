"""J (region IoU), F (boundary F-measure) and J&F as the DAVIS semi-supervised evaluators compute them.

One torch implementation serves validation (batched [T, N, H, W] tensors, on any device) and files on disk
(`sam2train.eval.evaluate`, numpy arrays in, numpy out). It reproduces davis2017-evaluation's `db_eval_iou`,
`db_eval_boundary` (`_seg2bmap`, dilation by `skimage.morphology.disk(ceil(0.008 * diagonal))`, `f_measure`'s
empty-map rules) and `db_statistics` (mean, recall, decay). The disk dilation is evaluated exactly, as a union of
rectangles counted on an integral image at the boundary pixels only, so it costs a few passes per frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BOUND_TH",
    "boundary_f",
    "disk_radius",
    "frame_statistics",
    "jaccard",
    "seg2bmap",
    "sequence_scores",
    "summarize",
    "video_jf",
]

BOUND_TH = 0.008
"""DAVIS boundary tolerance, as a fraction of the image diagonal (8 px at 854x480)."""

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


def video_jf(pred: Tensor, gt: Tensor, valid: Tensor) -> tuple[float, float, int]:
    """Validation J and F of a batch: sums over the scored objects of each object's mean J and mean F, and the
    number of objects.

    pred, gt: [B, T, N, H, W] bool; valid: [B, T, N], True from each object's prompt frame on (an object
    appearing later is scored from there). As the DAVIS / YouTube-VOS evaluators do, an object's prompt frame is
    not scored, nor the clip's last frame when another frame is left; an object prompted on the last frame has no
    frame to score and is not counted.
    """
    j_sum = f_sum = 0.0
    count = 0
    t = pred.shape[1]
    for b in range(pred.shape[0]):
        for n in valid[b].any(dim=0).nonzero().flatten().tolist():
            first = int(valid[b, :, n].nonzero()[0]) + 1
            last = t - 1 if t - first >= 2 else t
            if last <= first:
                continue
            frames = slice(first, last)
            scores = sequence_scores(
                pred[b, frames, n : n + 1], gt[b, frames, n : n + 1], skip_first_last=False
            )
            j_sum += float(scores["J"].mean())
            f_sum += float(scores["F"].mean())
            count += 1
    return j_sum, f_sum, count
