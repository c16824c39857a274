"""Test helpers that write one small dataset in each storage layout the sources read.

`make_davis` draws a synthetic DAVIS palette dataset; `davis_to_per_object`, `davis_to_coco`, `davis_to_sav` and
`davis_to_ytvos` rewrite a DAVIS dataset (one PNG per frame, no resolution folder) in the other layouts, object
ids preserved; `sav_like_meta` adds the keys of a real SA-V train JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * (3 * 250) + [255, 255, 255]


def save_palette(path: Path, labels: np.ndarray) -> None:
    """Write a [H, W] uint8 label array as a palette (mode P) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    im.save(path)


def make_davis(
    root: Path,
    n_videos: int = 2,
    n_frames: int = 5,
    size: tuple[int, int] = (64, 64),
    unannotated: tuple[int, ...] = (3,),
    void: bool = False,
    seed: int = 0,
) -> Path:
    """A DAVIS palette dataset: JPEGImages/<video>/%05d.jpg and Annotations/<video>/%05d.png.

    Video v has 2 + v % 2 objects (ids 1..): rectangles drifting 1 px per frame, object 3 only from frame 2.
    Frames in `unannotated` get no PNG. `void` adds a 255 border (DAVIS void) to every mask.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for v in range(n_videos):
        name = f"video{v}"
        n_obj = 2 + v % 2
        for t in range(n_frames):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=90)
            if t in unannotated:
                continue
            labels = np.zeros(size, dtype=np.uint8)
            for obj in range(1, n_obj + 1):
                if obj == 3 and t < 2:
                    continue
                y0, x0 = 4 + 16 * (obj - 1), 4 + t + 3 * v
                labels[y0 : y0 + 12, x0 : x0 + 20] = obj
            if void:
                labels[:, :2] = 255
            save_palette(root / "Annotations" / name / f"{t:05d}.png", labels)
    return root


def _davis_videos(src: Path) -> list[tuple[str, list[Path], dict[str, np.ndarray]]]:
    """(name, frame files, {stem: labels}) per video of a flat DAVIS dataset."""
    out = []
    for vdir in sorted((src / "JPEGImages").iterdir()):
        frames = sorted(vdir.glob("*.jpg"))
        masks = {
            p.stem: np.array(Image.open(p)) for p in sorted((src / "Annotations" / vdir.name).glob("*.png"))
        }
        out.append((vdir.name, frames, masks))
    return out


def _ids(masks: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(i) for m in masks.values() for i in np.unique(m)} - {0, 255})


def davis_to_per_object(src: Path, dst: Path, zero_based: bool = False) -> Path:
    """Rewrite as Annotations/<video>/<obj>/%05d.png (0/255 grayscale), folders named by palette id (or id - 1
    when `zero_based`, the SA-V val naming); every object gets a PNG on every annotated frame."""
    shutil.copytree(src / "JPEGImages", dst / "JPEGImages")
    for name, _, masks in _davis_videos(src):
        for obj in _ids(masks):
            folder = dst / "Annotations" / name / f"{obj - 1 if zero_based else obj:03d}"
            folder.mkdir(parents=True)
            for stem, labels in masks.items():
                Image.fromarray(((labels == obj) * 255).astype(np.uint8), mode="L").save(
                    folder / f"{stem}.png"
                )
    return dst


def rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with a str `counts` (JSON-ready)."""
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode("ascii")}


def rle_uncompressed(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: column-major run lengths, starting with a (possibly empty) background run."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def davis_to_coco(src: Path, json_path: Path, uncompressed: bool = False) -> Path:
    """A COCO-video JSON over the DAVIS frames (file_name relative to the JSON's folder), track_id = palette
    id."""
    images, annotations, videos = [], [], []
    for vid, (name, frames, masks) in enumerate(_davis_videos(src), start=1):
        videos.append({"id": vid, "name": name})
        for order, frame in enumerate(frames):
            image_id = len(images) + 1
            h, w = np.array(Image.open(frame)).shape[:2]
            rel = frame.relative_to(json_path.parent).as_posix()
            images.append(
                {
                    "id": image_id,
                    "file_name": rel,
                    "video_id": vid,
                    "order_in_video": order,
                    "height": h,
                    "width": w,
                }
            )
            labels = masks.get(frame.stem)
            for obj in [] if labels is None else sorted(set(np.unique(labels).tolist()) - {0, 255}):
                seg = (rle_uncompressed if uncompressed else rle)(labels == obj)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "track_id": obj,
                        "segmentation": seg,
                    }
                )
    json_path.write_text(json.dumps({"videos": videos, "images": images, "annotations": annotations}))
    return json_path


def davis_to_sav(src: Path, dst: Path) -> Path:
    """SA-V layout with `fps` 24 (every frame is a masklet row): <dst>/<video>_manual.json and frames
    <dst>/<video>/%05d.jpg; masklet index = palette id - 1 (ids must be 1..N); an unannotated frame's row is
    all null."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, frames, masks in _davis_videos(src):
        shutil.copytree(src / "JPEGImages" / name, dst / name)
        ids = _ids(masks)
        assert ids == list(range(1, len(ids) + 1)), "SA-V masklets are numbered 1..N"
        h, w = np.array(Image.open(frames[0])).shape[:2]
        rows = []
        for frame in frames:
            labels = masks.get(frame.stem)
            rows.append([None if labels is None else rle(labels == obj) for obj in ids])
        content = {"video_id": name, "video_height": h, "video_width": w, "fps": 24, "masklet": rows}
        (dst / f"{name}_manual.json").write_text(json.dumps(content))
    return dst


def davis_to_ytvos(src: Path, dst: Path, step: int = 5) -> Path:
    """YouTube-VOS layout: frame t becomes `%05d` of t * step (every 5th frame, as the train split), PNGs copied
    (palette ids kept) and `meta.json` listing each object's frames (those whose PNG holds it), category
    `cat<id>`. DAVIS frames without a PNG stay unannotated JPGs (as in `train_all_frames`)."""
    meta: dict[str, dict] = {}
    for name, frames, masks in _davis_videos(src):
        (dst / "JPEGImages" / name).mkdir(parents=True)
        (dst / "Annotations" / name).mkdir(parents=True)
        objects: dict[str, dict] = {}
        for frame in frames:
            stem = f"{int(frame.stem) * step:05d}"
            shutil.copy(frame, dst / "JPEGImages" / name / f"{stem}.jpg")
            labels = masks.get(frame.stem)
            if labels is None:
                continue
            save_palette(dst / "Annotations" / name / f"{stem}.png", labels)
            for obj in sorted(set(np.unique(labels).tolist()) - {0, 255}):
                objects.setdefault(str(obj), {"category": f"cat{obj}", "frames": []})["frames"].append(stem)
        meta[name] = {"objects": objects}
    (dst / "meta.json").write_text(json.dumps({"videos": meta}))
    return dst


def sav_like_meta(masklet: list, ids: list[int], kind: str = "manual") -> dict:
    """The other keys of a real SA-V train JSON (sav_000001_manual.json): sizes as floats, masklet ids and stats
    the readers do not need."""
    h, w = next(seg["size"] for row in masklet if row for seg in row if seg)
    n = len(ids)
    return {
        "video_id": "sav_000001",
        "video_duration": 20.125,
        "video_frame_count": float(4 * len(masklet)),
        "video_height": float(h),
        "video_width": float(w),
        "video_resolution": float(h * w),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": masklet,
        "masklet_id": ids,
        "masklet_size_rel": [0.01] * n,
        "masklet_size_abs": [100.0] * n,
        "masklet_size_bucket": ["medium"] * n,
        "masklet_visibility_changes": [0] * n,
        "masklet_first_appeared_frame": [0.0] * n,
        "masklet_frame_count": [len(masklet)] * n,
        "masklet_edited_frame_count": [0] * n,
        "masklet_type": [kind] * n,
        "masklet_stability_score": [None] * n,
        "masklet_num": n,
    }
