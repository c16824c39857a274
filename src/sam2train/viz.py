"""Pictures of videos, masks and prompts: palette PNGs, overlays, grids, GIF / MP4 and training curves.

Images are numpy arrays: [H, W, 3] uint8 RGB, or [H, W] greyscale (bool masks become 0 / 255). matplotlib and
PyAV are imported inside the functions that use them, so importing this module costs only numpy and Pillow.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _davis_palette() -> np.ndarray:
    """The PASCAL VOC / DAVIS colour table: the bits of an index spread over the high bits of R, G and B."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.uint8)
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= (((idx >> (3 * j + ch)) & 1) << (7 - j)).astype(np.uint8)
    pal.flags.writeable = False
    return pal


PALETTE: np.ndarray = _davis_palette()
"""[256, 3] uint8 DAVIS palette: 0 black (background), 1 (128, 0, 0), 2 (0, 128, 0), ..., 255 (224, 224, 192) void."""

DEFAULT_CURVES = ("train/total_step", "train/total", "train/total_epoch", "val/total", "val/J&F")
"""Columns `plot_curves` draws when no keys are given (those missing from the data are skipped)."""

_SCORE_NAMES = {"J&F", "J", "F", "iou", "IoU", "mIoU"}


def colour(obj_id: int) -> tuple[int, int, int]:
    """The palette colour of an object id; ids outside 1..254 wrap into that range (0 and 255 are reserved)."""
    index = obj_id if 0 < obj_id < 255 else 1 + (obj_id - 1) % 254
    r, g, b = PALETTE[index]
    return int(r), int(g), int(b)


def palette_image(label_map: np.ndarray) -> Image.Image:
    """A label map [H, W] (values 0..255) as a mode-P image carrying the DAVIS palette."""
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"label_map must be [H, W], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"label_map values must be in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))
    img.putpalette(PALETTE.tobytes())  # an "L" image becomes "P" with the palette attached
    return img


def save_palette_png(path: str | Path, label_map: np.ndarray) -> Path:
    """Write a label map [H, W] as a DAVIS palette PNG (pixel value = object id); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette_image(label_map).save(path, format="PNG")
    return path


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, 3|4] (bool, integer or float in 0..255) as [H, W, 3] uint8."""
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {arr.shape}")


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """The inner outline of a bool mask [H, W], `width` pixels thick (the image border is not an outline)."""
    inner = mask
    for _ in range(width):
        p = np.pad(inner, 1, mode="edge")
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def overlay(
    frame: np.ndarray, masks: np.ndarray, ids: Sequence[int], alpha: float = 0.5, contour: bool = True
) -> np.ndarray:
    """Blend object masks onto a frame in their palette colours, with an opaque outline.

    frame: [H, W, 3] uint8; masks: [K, H, W] bool (later objects are drawn on top); ids: K object ids.
    Returns a new [H, W, 3] uint8 image.
    """
    out = _as_rgb(frame).astype(np.float32)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != out.shape[:2]:
        raise ValueError(
            f"masks must be [K, {out.shape[0]}, {out.shape[1]}] to match the frame, got {masks.shape}"
        )
    if len(ids) != len(masks):
        raise ValueError(f"got {len(ids)} ids for {len(masks)} masks")
    width = max(1, min(out.shape[:2]) // 256)
    for mask, obj_id in zip(masks, ids):
        c = np.array(colour(int(obj_id)), dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * c
        if contour:
            out[_boundary(mask, width)] = c
    return np.rint(out).astype(np.uint8)


def draw_prompts(
    img: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Draw first-frame prompts: green + for positive points, red x for negative ones, boxes in object colours.

    img: [H, W, 3] uint8; points: [K, P, 2] (x, y) pixels; labels: [K, P] 1 positive, 0 negative, -1 skipped
    (all positive when None); boxes: [K, 4] (x0, y0, x1, y1) pixels or None; ids: K object ids (1..K when None).
    Points and boxes holding NaN are skipped. Accepts numpy arrays or CPU tensors. Returns a new [H, W, 3] uint8
    image.
    """
    pil = Image.fromarray(_as_rgb(img))
    draw = ImageDraw.Draw(pil)
    r = max(3, round(min(pil.size) / 50))
    lw = max(1, r // 3)
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            if not np.isfinite([x0, y0, x1, y1]).all():
                continue
            obj_id = ids[k] if ids is not None else k + 1
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            draw.rectangle(box, outline=colour(int(obj_id)), width=lw + 1)
    if points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = np.ones(len(points)) if labels is None else np.asarray(labels).reshape(-1)
        if len(labels) != len(points):
            raise ValueError(f"labels {len(labels)} do not match points {len(points)}")
        for (x, y), label in zip(points, labels):
            if label < 0 or not np.isfinite([x, y]).all():
                continue
            if label > 0:
                arms, fill = [(x - r, y, x + r, y), (x, y - r, x, y + r)], (0, 255, 0)
            else:
                arms, fill = [(x - r, y - r, x + r, y + r), (x - r, y + r, x + r, y - r)], (255, 0, 0)
            for width, col in ((lw + 2, (0, 0, 0)), (lw, fill)):  # dark rim so markers show on any colour
                for arm in arms:
                    draw.line(arm, fill=col, width=width)
    return np.asarray(pil).copy()


def strip(
    rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, gap: int = 2
) -> np.ndarray:
    """Tile images into a grid (e.g. rows frames / ground truth / prediction), with a text label per row.

    Every cell is resized to the first image's size; short rows are padded with empty cells.
    Returns [H', W', 3] uint8.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("strip needs at least one image")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    first = next(_as_rgb(r[0]) for r in rows if len(r))
    h, w = first.shape[:2]
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if labels:
        label_w = max(int(probe.textbbox((0, 0), str(t), font=font)[2]) for t in labels) + 2 * gap + 4
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + cols * (w + gap) + gap, len(rows) * (h + gap) + gap), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        top = gap + i * (h + gap)
        for j, cell in enumerate(row):
            arr = np.asarray(cell)
            tile = Image.fromarray(_as_rgb(arr))
            if tile.size != (w, h):
                tile = tile.resize((w, h), Image.NEAREST if arr.ndim == 2 else Image.BILINEAR)
            canvas.paste(tile, (label_w + gap + j * (w + gap), top))
        if labels:
            box = probe.textbbox((0, 0), str(labels[i]), font=font)
            draw.text(
                (gap + 2, top + (h - (box[3] - box[1])) // 2), str(labels[i]), fill=(240, 240, 240), font=font
            )
    return np.asarray(canvas).copy()


def save_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an image [H, W] or [H, W, 3] as PNG, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(img)
    rgb = _as_rgb(arr)
    Image.fromarray(rgb[:, :, 0] if arr.ndim == 2 else rgb).save(path)
    return path


def _check_frames(frames: Sequence[np.ndarray], fps: float) -> list[np.ndarray]:
    if len(frames) == 0:
        raise ValueError("no frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    out = [_as_rgb(f) for f in frames]
    for i, f in enumerate(out):
        if f.shape != out[0].shape:
            raise ValueError(f"frame {i} has shape {f.shape}, frame 0 has {out[0].shape}")
    return out


def save_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float = 8) -> Path:
    """Write frames [H, W, 3] uint8 as a looping GIF; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [Image.fromarray(f) for f in _check_frames(frames, fps)]
    imgs[0].save(
        path, format="GIF", save_all=True, append_images=imgs[1:], duration=round(1000 / fps), loop=0
    )
    return path


def save_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 8) -> Path:
    """Write frames [H, W, 3] uint8 as H.264 MP4 (MPEG-4 part 2 where libx264 is missing) via PyAV.

    Odd frame sizes are padded by one pixel (yuv420p needs even sizes). Returns the path.
    """
    try:
        import av
    except ImportError as err:
        raise ImportError("save_mp4 needs PyAV: pip install 'sam2train[video]'") from err
    rgb = _check_frames(frames, fps)
    h, w = rgb[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000
        for f in rgb:
            frame = av.VideoFrame.from_ndarray(np.pad(f, pad, mode="edge"), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a Lightning CSVLogger `metrics.csv` as float arrays, NaN where a row has no value."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = list(reader.fieldnames or [])
        cols: dict[str, list[float]] = {n: [] for n in names}
        for row in reader:
            for n in names:
                cols[n].append(_to_float(row.get(n)))
    return {n: np.asarray(v, dtype=np.float64) for n, v in cols.items()}


def _to_float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _is_score(key: str) -> bool:
    last = key.rsplit("/", 1)[-1]
    return last in _SCORE_NAMES or last.startswith(("J&F", "J_", "F_"))


def plot_curves(
    source: str | Path | Mapping[str, Sequence[float]],
    out_png: str | Path,
    keys: Sequence[str] | None = None,
    x: str = "step",
) -> list[str]:
    """Plot loss curves (left) and scores such as J&F (right) from a metrics.csv or a dict of series.

    source: a Lightning CSVLogger `metrics.csv` (columns `epoch`, `step`, `train/total`, `val/J&F`, ... with NaN
    gaps) or a dict name -> values of equal length (it may hold `step` / `epoch` too). Each series is drawn
    against column `x`, then `epoch`, then its row index, whichever exists first; NaN points are dropped.
    keys: columns to draw (default DEFAULT_CURVES); missing or empty ones are skipped, and a figure that has none
    says so. Returns the keys drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = read_metrics_csv(source) if isinstance(source, str | Path) else dict(source)
    data = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in data.items()}
    wanted = list(keys) if keys is not None else list(DEFAULT_CURVES)
    present = [k for k in wanted if k in data and np.isfinite(data[k]).any()]
    losses, scores = [k for k in present if not _is_score(k)], [k for k in present if _is_score(k)]
    panels = [(t, ks) for t, ks in (("loss", losses), ("score", scores)) if ks] or [("loss", [])]
    fig = Figure(figsize=(5.5 * len(panels), 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, ks) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if not ks:
            ax.text(0.5, 0.5, "no metrics found", ha="center", va="center", transform=ax.transAxes)
        for key in ks:
            y = data[key]
            x_name = next((c for c in (x, "epoch") if c in data and len(data[c]) == len(y)), None)
            xs = data[x_name] if x_name else np.arange(len(y), dtype=np.float64)
            ok = np.isfinite(y) & np.isfinite(xs)
            ax.plot(xs[ok], y[ok], marker="o" if ok.sum() <= 30 else None, markersize=3, label=key)
            ax.set_xlabel(x_name or "row")
        if ks:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return present
