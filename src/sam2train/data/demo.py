"""The demo dataset: short synthetic videos in DAVIS layout, made in seconds and reproducible byte for byte.

Each video shows K textured objects (ellipses, rounded rectangles, blobs) moving smoothly over a textured,
slowly panning background. Objects are painted in id order, so a higher id is in front, and a mask is the visible
part of its object: an occluded object's mask shrinks. By construction every object is visible in frame 0 (the
frame clips are prompted on), one object per video leaves the frame and comes back (clips of 8+ frames), and with
3+ objects two of them cross paths, one passing in front of the other.

Layout (DAVIS): OUT/{train,val}/JPEGImages/<video>/%05d.jpg and OUT/{train,val}/Annotations/<video>/%05d.png
(palette PNGs, pixel value = object id, 0 background; 255 void is reserved but never written), plus
OUT/demo_dataset.json recording the parameters, which lets a rerun recognise its own output.

Over 400 lines because the scene (shapes, textures, paths, occlusion) and its writer are one small generator
that is read top to bottom; nothing else imports its parts.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2train.errors import UserError
from sam2train.viz import save_palette_png

MARKER = "demo_dataset.json"
GENERATOR = "sam2train.data.demo"
JPEG_QUALITY = 90
_SHAPES = ("ellipse", "rounded", "blob")
_TEXTURES = ("stripes", "checker", "waves", "gradient")


@dataclass(frozen=True)
class DemoParams:
    """What a demo dataset is made from; equal parameters give identical files."""

    videos: int
    frames: int
    height: int
    width: int
    objects: int
    seed: int
    val_videos: int


@dataclass
class _Object:
    """One object: shape in its own frame (u, v pixels at scale 1), texture, colours and [T] trajectory."""

    shape: str
    axes: tuple[float, float]
    harmonics: np.ndarray  # [n, 3] (order, amplitude, phase) of a blob's radius
    reach: float  # bound on the distance from the centre to the outline at scale 1
    texture: str
    tex: np.ndarray  # texture parameters: [4] for stripes/checker/gradient, [4, 3] wave vectors for waves
    colours: np.ndarray  # [2, 3] float32, the texture blends between these
    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    scale: np.ndarray


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_args(
    videos: int, frames: int, size: tuple[int, int], objects: int, seed: int, val_videos: int | None
) -> DemoParams:
    for name, value, low, high in (
        ("videos", videos, 1, None),
        ("frames", frames, 1, None),
        ("objects", objects, 1, 254),
    ):
        if not _is_int(value) or value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise UserError(f"{name} must be an integer {bounds}, got {value!r}")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, tuple | list) or len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
        raise UserError(f"size must be (height, width) with two positive integers, got {size!r}")
    height, width = int(size[0]), int(size[1])
    rows, cols = _grid(objects, height, width)
    if min(height / rows, width / cols) < 8:
        raise UserError(
            f"size {height}x{width} is too small for objects={objects}: each object needs an 8x8 px cell in frame 0"
        )
    if val_videos is None:
        val_videos = min(videos - 1, max(1, round(videos / 4))) if videos >= 2 else 0
    if not _is_int(val_videos) or not 0 <= val_videos < videos:
        raise UserError(f"val_videos must be an integer in 0..videos-1 = 0..{videos - 1}, got {val_videos!r}")
    return DemoParams(int(videos), int(frames), height, width, int(objects), int(seed), int(val_videos))


def _grid(objects: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the cells that hold the objects' frame-0 positions (about square cells)."""
    cols = max(1, math.ceil(math.sqrt(objects * width / height)))
    return math.ceil(objects / cols), cols


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Value noise [h, w, channels] in -1..1: a random (cells+1)^2 lattice, smoothstep-interpolated."""
    lattice = rng.uniform(-1, 1, (cells + 1, cells + 1, channels)).astype(np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n, dtype=np.float32) + 0.5) * cells / n
        i = np.minimum(pos.astype(np.int64), cells - 1)
        f = pos - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(h)
    ix, fx = axis(w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = lattice[iy][:, ix] * (1 - fx) + lattice[iy][:, ix + 1] * fx
    bottom = lattice[iy + 1][:, ix] * (1 - fx) + lattice[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted textured background [h, w, 3] float32 (0..255): coarse and fine noise plus a colour gradient."""
    base = rng.uniform(70, 170) + rng.uniform(-20, 20, 3)
    coarse = _smooth_noise(rng, h, w, 4, 3)
    coarse = 0.4 * coarse + 0.6 * coarse.mean(axis=2, keepdims=True)  # mostly grey, so objects stand out
    fine = _smooth_noise(rng, h, w, max(2, min(h, w) // 16), 1)
    a = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xs / w - 0.5) * math.cos(a) + (ys / h - 0.5) * math.sin(a))[:, :, None]
    return (base + 55 * coarse + 12 * fine + ramp * rng.uniform(-50, 50, 3)).astype(np.float32)


def _make_shape(rng: np.random.Generator, reach: float) -> tuple[str, tuple[float, float], np.ndarray, float]:
    """A random shape whose outline stays within `reach` of its centre and which contains a disc of radius
    >= 0.45 reach around it (so it covers the nearest pixel centre once reach >= 1.6 px)."""
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    harmonics = np.zeros((0, 3))
    if shape == "ellipse":
        axes = (reach, reach * rng.uniform(0.5, 0.95))
    elif shape == "rounded":  # superellipse |u/a|^4 + |v/b|^4 <= 1, within sqrt(a^2 + b^2) of its centre
        q = rng.uniform(0.55, 1.0)
        a = reach / math.sqrt(1 + q * q)
        axes = (a, a * q)
    else:  # star-shaped blob, radius r0 * (1 + sum a_k cos(k phi + psi_k))
        n = int(rng.integers(2, 4))
        harmonics = np.stack(
            [
                rng.choice([2, 3, 4, 5], n, replace=False),
                rng.uniform(0.05, 0.35 / n, n),
                rng.uniform(0, 6.3, n),
            ],
            1,
        )
        r0 = reach / (1 + harmonics[:, 1].sum())
        axes = (r0, r0)
    return shape, axes, harmonics, reach


def _inside(obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, b = obj.axes
    if obj.shape == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if obj.shape == "rounded":
        return (u / a) ** 4 + (v / b) ** 4 <= 1
    phi = np.arctan2(v, u)
    radius = a * (1 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in obj.harmonics))
    return u * u + v * v <= radius * radius


def _texture(obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours [h, w, 3] of the object at local coordinates u, v (the texture moves and turns with it)."""
    u, v = u / obj.reach, v / obj.reach
    p = obj.tex
    if obj.texture == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * p[0] * (u * math.cos(p[1]) + v * math.sin(p[1])) + p[2])
    elif obj.texture == "checker":
        t = (np.floor(u * p[0] + p[2]) + np.floor(v * p[0] + p[3])) % 2
    elif obj.texture == "waves":
        t = 0.5 + 0.125 * sum(np.sin(kx * u + ky * v + ph) for kx, ky, ph in p)
    else:
        t = np.clip(0.5 + 0.5 * (u * math.cos(p[1]) + v * math.sin(p[1])), 0, 1)
    shade = 1 - 0.25 * np.minimum(u * u + v * v, 1)  # a little relief: darker towards the outline
    c0, c1 = obj.colours
    return (c0 + t[..., None] * (c1 - c0)) * shade[..., None]


def _appearance(rng: np.random.Generator, hue: float) -> tuple[str, np.ndarray, np.ndarray]:
    texture = _TEXTURES[rng.integers(len(_TEXTURES))]
    if texture == "waves":
        k = rng.uniform(3, 9, 4)
        a = rng.uniform(0, 2 * math.pi, 4)
        tex = np.stack([k * np.cos(a), k * np.sin(a), rng.uniform(0, 2 * math.pi, 4)], 1)
    else:
        tex = np.array(
            [rng.uniform(1.2, 3.5), rng.uniform(0, math.pi), rng.uniform(0, 6.3), rng.uniform(0, 1)]
        )
    bright = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.75, 1.0))) * 255
    dark = bright * rng.uniform(0.25, 0.5)
    return texture, tex, np.stack([bright, dark]).astype(np.float32)


def _paths(rng: np.random.Generator, p: DemoParams, starts: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Centres [K, T, 2] (x, y): a smooth glide from the start plus a small wobble; one object makes an
    excursion out of the frame and back, and two others swap places, crossing near mid-clip."""
    k_objs, size = len(starts), min(p.height, p.width)
    t = np.arange(p.frames, dtype=np.float64)
    s = t / max(p.frames - 1, 1)
    glide = (3 * s**2 - 2 * s**3)[None, :, None]
    order = list(rng.permutation(k_objs))
    excursion = order.pop(0) if p.frames >= 8 else None
    ends = np.clip(
        starts + rng.normal(0, 0.18 * size, starts.shape),
        reach[:, None],
        [p.width, p.height] - reach[:, None],
    )
    wobble_amp = rng.uniform(0, 0.02 * size, (k_objs, 1, 2))
    if len(order) >= 2:
        i, j = order[:2]
        d = starts[j] - starts[i]
        normal = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-6)
        offset = normal * rng.uniform(0.15, 0.45) * (reach[i] + reach[j])  # partial overlap when they meet
        ends[i], ends[j] = starts[j] + offset, starts[i] - offset
        wobble_amp[[i, j]] *= 0.3
    if excursion is not None:
        ends[excursion] = starts[excursion] + rng.normal(0, 0.03 * size, 2)
    phase = rng.uniform(0, 2 * math.pi, (k_objs, 1, 2))
    omega = rng.uniform(0.5, 1.5, (k_objs, 1, 2)) * 2 * math.pi
    wobble = wobble_amp * (np.sin(omega * s[None, :, None] + phase) - np.sin(phase))
    centres = starts[:, None] + glide * (ends - starts)[:, None] + wobble
    if excursion is not None:
        centres[excursion] += _excursion(rng, p, starts[excursion], ends[excursion], reach[excursion], t)
    return centres


def _excursion(
    rng: np.random.Generator, p: DemoParams, start: np.ndarray, end: np.ndarray, reach: float, t: np.ndarray
) -> np.ndarray:
    """Displacement [T, 2] towards the nearest edge, far enough that the object is wholly outside the frame for
    the middle third of a sin^2 bump, then back; the bump lies inside the clip, so the object returns."""
    x, y = start
    dist = np.array([x, p.width - x, y, p.height - y])
    side = int(np.argmin(dist))
    direction = np.array([[-1.0, 0], [1, 0], [0, -1], [0, 1]])[side]
    need = dist[side] + 1.1 * reach + np.abs(end - start).sum() + 0.04 * min(p.height, p.width) + 2
    span = max(p.frames - 1, 1)
    t0, dur = rng.uniform(0.1, 0.25) * span, rng.uniform(0.5, 0.6) * span
    phase = np.clip((t - t0) / dur, 0, 1)
    bump = np.sin(math.pi * phase) ** 2  # >= 0.75 for the middle third of the bump
    return (need / 0.75) * bump[:, None] * direction[None, :]


def _make_objects(rng: np.random.Generator, p: DemoParams) -> list[_Object]:
    """Objects in depth order (later in front). Frame-0 centres sit in distinct grid cells with reach <= 0.35
    of a cell and jitter <= 0.15, so no two objects overlap in frame 0 and each covers a pixel there."""
    rows, cols = _grid(p.objects, p.height, p.width)
    ch, cw = p.height / rows, p.width / cols
    cells = rng.permutation(rows * cols)[: p.objects]
    jitter = rng.uniform(-0.15, 0.15, (p.objects, 2))
    starts = np.stack(
        [(cells % cols + 0.5 + jitter[:, 0]) * cw, (cells // cols + 0.5 + jitter[:, 1]) * ch], 1
    )
    max_reach = min(0.35 * min(ch, cw), 0.22 * min(p.height, p.width))
    reach = max_reach * rng.uniform(0.7, 1.0, p.objects)
    centres = _paths(rng, p, starts, reach)
    s = np.arange(p.frames) / max(p.frames - 1, 1)
    hue0 = rng.uniform()
    objects = []
    for k in range(p.objects):
        shape, axes, harmonics, r = _make_shape(rng, float(reach[k]))
        hue = (hue0 + k / p.objects + rng.uniform(-0.2, 0.2) / p.objects) % 1.0
        texture, tex, colours = _appearance(rng, hue)
        angle = rng.uniform(0, 2 * math.pi) + rng.uniform(-1, 1) * (math.pi / 2) * s
        scale = 1 + rng.uniform(0.03, 0.1) * np.sin(2 * math.pi * rng.uniform(0.5, 1.5) * s)  # 1 in frame 0
        objects.append(
            _Object(
                shape,
                axes,
                harmonics,
                r,
                texture,
                tex,
                colours,
                centres[k, :, 0],
                centres[k, :, 1],
                angle,
                scale,
            )
        )
    return objects


def _render(
    rng: np.random.Generator,
    background: np.ndarray,
    offset: tuple[int, int],
    objects: list[_Object],
    t: int,
    h: int,
    w: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame t: image [h, w, 3] uint8 and label map [h, w] uint8 (id of the front-most object, 0 background)."""
    oy, ox = offset
    img = background[oy : oy + h, ox : ox + w].copy()
    label = np.zeros((h, w), dtype=np.uint8)
    for k, obj in enumerate(objects):
        cx, cy, scale = obj.cx[t], obj.cy[t], obj.scale[t]
        r = obj.reach * scale + 1
        y0, y1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
        x0, x1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        cos, sin = math.cos(obj.angle[t]), math.sin(obj.angle[t])
        u, v = (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale
        inside = _inside(obj, u, v)
        img[y0:y1, x0:x1][inside] = _texture(obj, u, v)[inside]
        label[y0:y1, x0:x1][inside] = k + 1
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * 2.5  # sensor grain, new in every frame
    return np.clip(img, 0, 255).astype(np.uint8), label


def _write_video(p: DemoParams, index: int, image_dir: Path, mask_dir: Path) -> None:
    """Generate video `index` (its own random stream, so the train/val split does not change its content)."""
    rng = np.random.default_rng([p.seed, index])
    pad = max(2, round(0.06 * min(p.height, p.width)))
    background = _background(rng, p.height + 2 * pad, p.width + 2 * pad)
    objects = _make_objects(rng, p)
    t = np.arange(p.frames)
    omega = 2 * math.pi / (p.frames * rng.uniform(1.5, 3.0))
    phase = rng.uniform(0, 2 * math.pi, 2)
    pan = np.rint(pad + 0.9 * pad * np.sin(omega * t[:, None] + phase)).astype(int)  # slow camera drift
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for i in range(p.frames):
        img, label = _render(rng, background, (pan[i, 0], pan[i, 1]), objects, i, p.height, p.width)
        if i == 0 and np.setdiff1d(np.arange(1, p.objects + 1), label).size:
            raise RuntimeError(f"demo video {index}: an object is hidden in frame 0 (generator bug)")
        Image.fromarray(img).save(image_dir / f"{i:05d}.jpg", format="JPEG", quality=JPEG_QUALITY)
        save_palette_png(mask_dir / f"{i:05d}.png", label)


def _check_out(out: Path, p: DemoParams) -> None:
    """Refuse to write into anything but a missing or empty folder, or a demo dataset with the same parameters."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"demo-data output {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or previous.get("generator") != GENERATOR:
        raise FileExistsError(
            f"demo-data output {out} is not empty and holds no sam2train demo dataset ({MARKER} missing); "
            "refusing to write into it: choose a new or empty directory"
        )
    if previous.get("params") != asdict(p):
        old = previous.get("params") or {}
        diff = ", ".join(f"{k}={old.get(k)!r} (now {v!r})" for k, v in asdict(p).items() if old.get(k) != v)
        raise FileExistsError(
            f"demo-data output {out} holds a demo dataset made with other parameters: {diff}; "
            "delete it or choose another directory"
        )


def write_demo_dataset(
    out: str | Path,
    videos: int = 8,
    frames: int = 24,
    size: tuple[int, int] = (256, 256),
    objects: int = 3,
    seed: int = 0,
    val_videos: int | None = None,
) -> dict:
    """Write the synthetic demo dataset in DAVIS layout under `out` and return a summary.

    Videos `demo_000`, `demo_001`, ... each have `frames` JPEG frames of `size` = (height, width) with `objects`
    objects (ids 1..objects, all visible in frame 0). The last `val_videos` videos go to `out/val` (default: a
    quarter, at least 1 when videos >= 2, none when videos == 1), the others to `out/train`. The same arguments
    give byte-identical files (with the same Pillow / libjpeg build).

    `out` must be missing or empty, or hold a demo dataset written with the same parameters, which is then
    written again in place (same bytes, so a rerun also repairs an interrupted one). Anything else raises
    FileExistsError naming `out`; invalid arguments raise ValueError naming the argument.

    Returns {"root", "train", "val": paths, "train_videos", "val_videos": names, "frames", "objects",
    "size": (height, width), "seed", "files": number of files written}.
    """
    p = _check_args(videos, frames, size, objects, seed, val_videos)
    out = Path(out)
    _check_out(out, p)
    digits = max(3, len(str(p.videos - 1)))
    names = [f"demo_{i:0{digits}d}" for i in range(p.videos)]
    split = {"train": names[: p.videos - p.val_videos], "val": names[p.videos - p.val_videos :]}
    marker = {"generator": GENERATOR, "params": asdict(p), "splits": split, "complete": False}
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    for part in split:
        for sub in ("JPEGImages", "Annotations"):
            (out / part / sub).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        part = "train" if name in split["train"] else "val"
        _write_video(p, index, out / part / "JPEGImages" / name, out / part / "Annotations" / name)
    marker["complete"] = True
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return {
        "root": out,
        "train": out / "train",
        "val": out / "val",
        "train_videos": split["train"],
        "val_videos": split["val"],
        "frames": p.frames,
        "objects": p.objects,
        "size": (p.height, p.width),
        "seed": p.seed,
        "files": 2 * p.videos * p.frames + 1,
    }
