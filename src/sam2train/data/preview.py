"""`sam2train inspect-data`: what the configured data looks like before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam2train.batch import PROMPT_BOX, PROMPT_NAMES, PROMPT_POINT, VideoSample
from sam2train.config import Config
from sam2train.data.datamodule import mix_summary, open_data
from sam2train.data.frames import to_uint8_frames
from sam2train.data.sampling import MixedClips

_MAX_AREA_FRAMES = 500  # mask-area percentiles read at most this many annotated frames (evenly spread)


def dataset_stats(source) -> dict:
    """Videos, frames, annotated frames, objects per video, and percentiles of object area (% of the frame)."""
    videos = source.videos
    refs = [(v, p) for v in videos for p in v.annotated]
    step = max(1, len(refs) // _MAX_AREA_FRAMES)
    areas = []
    for video, pos in refs[::step]:
        fm = source.load_masks(video, pos)
        total = fm.void.size
        areas += [100.0 * m.sum() / total for m in fm.masks if m.any()]
    objects = [len(v.object_ids) for v in videos]
    pct = np.percentile(areas, [5, 25, 50, 75, 95]).round(3).tolist() if areas else []
    return {
        "videos": len(videos),
        "frames": sum(len(v.frames) for v in videos),
        "annotated_frames": len(refs),
        "objects_per_video": {
            "min": min(objects),
            "mean": round(float(np.mean(objects)), 2),
            "max": max(objects),
        },
        "mask_area_percent_p5_p25_p50_p75_p95": pct,
        "skipped_videos": dict(getattr(source, "skipped", {}) or {}),
    }


def clip_tiles(sample: VideoSample) -> tuple[list[np.ndarray], str]:
    """One sheet row: frames with ground-truth masks (the first also shows the prompts), and its title."""
    from sam2train.viz import draw_prompts, overlay

    frames = to_uint8_frames(sample.images)
    ids = sample.object_ids.tolist()
    masks = sample.masks.bool().numpy()
    tiles = [overlay(frames[t], masks[t], ids) for t in range(len(frames))]
    p = sample.prompts
    points = p.point_coords.numpy()
    labels = p.point_labels.numpy().copy()
    labels[p.kind.numpy() != PROMPT_POINT] = -1
    boxes = p.boxes.numpy().copy()
    boxes[p.kind.numpy() != PROMPT_BOX] = np.nan
    tiles[0] = draw_prompts(tiles[0], points, labels, boxes, ids)
    kinds = ", ".join(f"{i}:{PROMPT_NAMES.get(int(k), '-')}" for i, k in zip(ids, p.kind.tolist()))
    return tiles, f"{sample.video_name} frames {sample.frame_indices.tolist()} prompts {kinds}"


def clip_sheet(sample: VideoSample) -> np.ndarray:
    """Rows: frames with ground-truth masks; the first frame also shows the prompts (points, boxes)."""
    from sam2train.viz import strip

    tiles, title = clip_tiles(sample)
    return strip([tiles], [title])


def inspect_dataset(cfg: Config, out_png: Path, train: bool = True) -> str:
    """Print-ready statistics of every train (or val) source; writes a PNG sheet with the first sampled clip of
    each source (one row per source). Several sources of `data.train` also list their clips per epoch."""
    from sam2train.viz import save_png, strip

    opened, dataset = open_data(cfg, train=train)
    split = "train" if train else "val"
    several = len(opened) > 1
    lines, rows, titles = [], [], []
    for o in opened:
        lines.append(f"{split} data{f' {o.spec.where}' if several else ''}: {o.source.path}")
        lines += [f"  {k}: {v}" for k, v in dataset_stats(o.source).items()]
        lines.append(
            f"  clips in its index: {len(o.dataset)}" if several else f"  clips per epoch: {len(dataset)}"
        )
        if o.dataset.image_clip is not None:
            frames = o.dataset.clip_length
            lines.append(
                f"  images made clips of {frames} frame(s): {o.dataset.image_clip} (data.image_clip)"
            )
        tiles, title = clip_tiles(o.dataset[0])
        rows.append(tiles)
        titles.append(f"{o.spec.name}: {title}" if several else title)
    if isinstance(dataset, MixedClips):
        lines.append(f"clips per epoch: {len(dataset)} ({mix_summary(dataset)})")
    cap = cfg.data.max_objects
    tracked = (
        "every object"
        if cap is None
        else f"at most {cap} objects ({'a random subset' if train else 'the lowest ids'})"
    )
    lines.append(f"objects tracked per clip: {tracked} (data.max_objects)")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save_png(out_png, strip(rows, titles))
    return "\n".join(lines)
