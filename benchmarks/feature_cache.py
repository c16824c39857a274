"""Epoch time of a memory-only fine-tune with and without the feature cache (`model.cache_features`).

    python benchmarks/feature_cache.py [--data data/demo/train] [--model sam2.1_hiera_t] [--image-size 256]
        [--clip-length 8] [--stride 4] [--max-objects 2] [--epochs 3] [--max-clips N] [--device auto|cpu|cuda]
        [--threads N] [--cache-dir DIR] [--out FILE.json]

The fine-tune trains memory attention and the memory encoder only (frozen image encoder, no augmentation, the
setting `model.cache_features` allows), from random weights (seeded, the same for both sides), with
SAM2TrainingLoss as configured by default and AdamW. Each step: `run_video` + loss + backward + optimizer step.
The sides take turns step by step on the same clips (loaded before the epoch is timed, so data loading is not in
the figures; the side that goes first rotates from clip to clip, so a drifting machine load hits all alike) with
the same dropout draws:
- plain: `run_video` as is (the image encoder runs on every frame, every epoch);
- cache: `run_video` with its encoder call routed through `CachedEncoder` (run_video has no encoder argument
  yet, so `encode_frames` is patched for the step). Its first epoch fills the cache (cold), later ones read it;
- floor: what a perfect cache gives, the step without the encoder: each clip's `encode_frames` output is
  computed in its first epoch and kept in memory on the device, later epochs reuse it (no read at all).
The speed-up is plain's median epoch over cache's median warm epoch (every side's epochs after the first). The encoder's share of a memory-only step is
1 - floor / plain (warm epochs); the cache's read cost is its warm epoch over the floor's, minus 1 (target: under
10 %). Both are also timed inside the steps, free of the differences between sides that a loaded machine adds:
`encoder_share_timed` (plain's seconds in the encoder call over its epoch) and `cache_read_over_rest_timed` (the
cache's seconds in its reads over the rest of its warm epoch). The cache lives in a temporary folder unless --cache-dir names one (it must not hold features of other
weights: the key takes care of that).

Writes benchmarks/results/feature_cache_<device>.json (device: cpu or cuda) unless --out says otherwise:
`settings`, `environment`, `clips`, `frames_per_epoch`, `plain` / `cache` / `floor` {epoch_s, loss (mean per
epoch)}, `cache_stats` {hits, misses, files, bytes, bytes_per_frame}, `summary` {plain_epoch_s,
cache_cold_epoch_s, cache_warm_epoch_s, floor_epoch_s, speedup, floor_speedup, encoder_share,
cache_over_floor, encoder_share_timed, cache_read_over_rest_timed, cold_overhead, max_loss_diff}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step.py beside this file
import train_step as ts  # noqa: E402
from sam2train.batch import VideoBatch, collate_videos  # noqa: E402
from sam2train.config import Config, DataConfig, LossConfig, ModelConfig, PromptsConfig  # noqa: E402
from sam2train.data.datamodule import open_split  # noqa: E402
from sam2train.data.dataset import ClipDataset  # noqa: E402
from sam2train.losses.training import SAM2TrainingLoss  # noqa: E402
from sam2train.model import apply_trainable, build_model, run_video  # noqa: E402
from sam2train.model import video as video_module  # noqa: E402
from sam2train.model.feature_cache import CachedEncoder, FeatureCache, cache_key, frame_keys  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TRAINABLE = ["memory_attention", "memory_encoder"]
SIDES = ("plain", "cache", "floor")
ENCODE_FRAMES = video_module.encode_frames
"""The video pass's own encoder call (the floor side computes each clip's features with it once)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        help="a training dataset folder (default: data/demo/train, generated in a temporary folder if absent)",
    )
    p.add_argument("--model", default="sam2.1_hiera_t")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--clip-length", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="epochs per side (>= 2: one cold, then warm)")
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips of each epoch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="keep the cache here (default: a temporary folder)")
    p.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/feature_cache_<dev>.json)"
    )
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the cache's first epoch is cold)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run_config(args: argparse.Namespace) -> Config:
    """The fine-tune as a sam2train config: what the clips, the model and the loss are built from."""
    return Config(
        data=DataConfig(
            train_path=args.data,
            clip_length=args.clip_length,
            stride=args.stride,
            max_objects=args.max_objects,
            augment=False,
        ),
        model=ModelConfig(
            config=args.model,
            image_size=args.image_size,
            checkpoint=None,
            trainable_modules=TRAINABLE,
            cache_features=True,
        ),
        prompts=PromptsConfig(type="mask"),
        loss=LossConfig(),
        seed=args.seed,
    )


def epoch_batches(dataset: ClipDataset, epoch: int, max_clips: int | None, device: str) -> list[VideoBatch]:
    """The epoch's clips (one per batch, in index order), as the training dataset draws them for `epoch`."""
    count = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    return [collate_videos([dataset[epoch * len(dataset) + i]]).to(device) for i in range(count)]


def build(cfg: Config, device: str) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():  # random weights on purpose
        warnings.simplefilter("ignore", UserWarning)
        model = build_model(cfg.model, device=device)
    apply_trainable(model, cfg.model.trainable_modules)
    return model


@contextmanager
def through_cache(
    encoder: CachedEncoder | FloorEncoder | None, batch: VideoBatch, timer: list[float]
) -> Iterator[None]:
    """Route run_video's encoder call (the whole clip at once, chunk=None) through `encoder` (None: as is), and add
    the call's seconds to `timer[0]` (the plain side's encoder, the cache's reads, the floor's lookups)."""
    keys = frame_keys(batch)

    def encode(model: torch.nn.Module, images: torch.Tensor, frozen: bool | None = None):
        assert images.shape[0] == len(keys), "run_video encoded part of a clip: pass chunk=None"
        sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        out = ENCODE_FRAMES(model, images, frozen) if encoder is None else encoder.encode(images, keys)
        sync()
        timer[0] += time.perf_counter() - start
        return out

    with mock.patch.object(video_module, "encode_frames", encode):
        yield


class FloorEncoder:
    """A cache whose reads cost nothing: each clip's `encode_frames` output (frozen encoder, no gradient) kept in
    memory on the device after its first use, keyed by the clip's frame keys."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.store: dict[tuple[Any, ...], Any] = {}

    def encode(self, images: torch.Tensor, keys: list[Any]) -> Any:
        key = tuple(keys)
        if key not in self.store:
            with torch.no_grad():
                self.store[key] = ENCODE_FRAMES(self.model, images, True)
        return self.store[key]


class Side:
    """One side of the comparison: its model, optimizer and (for `cache`) CachedEncoder."""

    def __init__(self, name: str, cfg: Config, device: str, cache_root: Path, lr: float) -> None:
        self.name = name
        self.model = build(cfg, device)
        loss = cfg.loss
        self.criterion = SAM2TrainingLoss(
            bce_weight=loss.bce_weight,
            dice_weight=loss.dice_weight,
            iou_weight=loss.iou_weight,
            temporal_weight=loss.temporal_weight,
            smooth=loss.smooth,
            object_score_weight=loss.object_score_weight,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.encoder: CachedEncoder | FloorEncoder | None = None
        if name == "cache":
            key = cache_key(self.model, cfg.model, precision="32")
            self.encoder = CachedEncoder(self.model, FeatureCache(cache_root, key))
        elif name == "floor":
            self.encoder = FloorEncoder(self.model)
        self.epoch_s: list[float] = []
        self.encode_timer = [0.0]
        self.encode_s: list[float] = []
        """Per epoch, the seconds inside the encoder call: plain's encoder, the cache's reads (or, cold, its
        encoder and writes), the floor's lookups."""
        self.loss: list[float] = []
        self.step_losses: list[float] = []

    def step(self, batch: VideoBatch, seed: int) -> tuple[float, torch.Tensor]:
        """One optimizer step on `batch` (dropout drawn from `seed`): (seconds, loss)."""
        torch.manual_seed(seed)  # the same dropout draws on every side
        sync = torch.cuda.synchronize if batch.images.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with through_cache(self.encoder, batch, self.encode_timer):
            out = run_video(self.model, batch)
        total = self.criterion(
            out.mask_logits,
            batch.masks,
            batch.valid,
            ignore_mask=batch.ignore,
            object_score_logits=out.object_score_logits,
        )
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start, total.detach()


def run_epoch(sides: list[Side], batches: list[VideoBatch], seed: int) -> None:
    """Every side through the epoch's clips, interleaved step by step (the side that goes first rotates from clip
    to clip), so that a machine whose load drifts slows every side alike; each side's epoch time is the sum of its
    step times."""
    seconds = {side.name: 0.0 for side in sides}
    losses: dict[str, list[float]] = {side.name: [] for side in sides}
    for i, batch in enumerate(batches):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            took, loss = side.step(batch, seed * 100_003 + i)
            seconds[side.name] += took
            losses[side.name].append(float(loss))
    for side in sides:
        side.epoch_s.append(seconds[side.name])
        side.encode_s.append(side.encode_timer[0])
        side.encode_timer[0] = 0.0
        side.step_losses.extend(losses[side.name])
        side.loss.append(statistics.fmean(losses[side.name]))


def cache_stats(encoder: CachedEncoder, kept: bool) -> dict[str, Any]:
    files = list(encoder.cache.directory.rglob("*.f16"))
    size = sum(f.stat().st_size for f in files)
    return {
        "hits": encoder.cache.hits,
        "misses": encoder.cache.misses,
        "files": len(files),
        "bytes": size,
        "bytes_per_frame": size // max(1, len(files)),
        "directory": str(encoder.cache.directory) if kept else None,
    }


def summarize(plain: Side, cache: Side, floor: Side) -> dict[str, Any]:
    plain_s = statistics.median(plain.epoch_s[1:])  # warm against warm: every side's first epoch pays set-up
    warm_s = statistics.median(cache.epoch_s[1:])
    floor_s = statistics.median(floor.epoch_s[1:])
    diffs = [abs(a - b) for a, b in zip(plain.step_losses, cache.step_losses)]
    return {
        "plain_epoch_s": plain_s,
        "cache_cold_epoch_s": cache.epoch_s[0],
        "cache_warm_epoch_s": warm_s,
        "floor_epoch_s": floor_s,
        "speedup": plain_s / warm_s,
        "floor_speedup": plain_s / floor_s,
        "encoder_share": 1.0 - floor_s / plain_s,
        "cache_over_floor": warm_s / floor_s - 1.0,
        "encoder_share_timed": statistics.median(e / t for e, t in zip(plain.encode_s, plain.epoch_s)),
        "cache_read_over_rest_timed": statistics.median(
            e / (t - e) for e, t in zip(cache.encode_s[1:], cache.epoch_s[1:])
        ),
        "cold_overhead": cache.epoch_s[0] / plain.epoch_s[0],
        "max_loss_diff": max(diffs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start_load = [round(v, 2) for v in os.getloadavg()]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            args.data = str(REPO / "data" / "demo" / "train")
            if not Path(args.data).is_dir():  # the demo dataset `make demo` writes, made here when absent
                from sam2train.data.demo import write_demo_dataset

                write_demo_dataset(Path(tmp) / "demo")
                args.data = str(Path(tmp) / "demo" / "train")
        if not Path(args.data).is_dir():
            raise SystemExit(
                f"{args.data}: no dataset folder (make one with `sam2train demo-data data/demo`)"
            )
        cfg = run_config(args)
        _, dataset = open_split(cfg, train=True)
        root = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        sides = {name: Side(name, cfg, args.device, root, args.lr) for name in SIDES}
        clips = frames = 0
        for epoch in range(args.epochs):
            batches = epoch_batches(dataset, epoch, args.max_clips, args.device)
            clips, frames = len(batches), sum(b.images.shape[0] * b.images.shape[1] for b in batches)
            run_epoch(list(sides.values()), batches, seed=args.seed + epoch)
            for side in sides.values():
                print(f"epoch {epoch} {side.name:>5}: {side.epoch_s[-1]:7.2f} s  loss {side.loss[-1]:.4f}")
            del batches
        stats = cache_stats(sides["cache"].encoder, kept=args.cache_dir is not None)
    result = {
        "benchmark": "feature_cache",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.device(args.device).type,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": ts.environment(args.device),
        "trainable": TRAINABLE,
        "clips": clips,
        "frames_per_epoch": frames,
        **{
            name: {"epoch_s": side.epoch_s, "encode_s": side.encode_s, "loss": side.loss}
            for name, side in sides.items()
        },
        "cache_stats": stats,
        "summary": summarize(sides["plain"], sides["cache"], sides["floor"]),
    }
    result["environment"].update(load_avg=start_load, load_avg_end=[round(v, 2) for v in os.getloadavg()])
    s = result["summary"]
    print(
        f"{clips} clips, {frames} frames per epoch at {args.image_size} px ({args.model}, {result['device']}): "
        f"plain {s['plain_epoch_s']:.2f} s/epoch, cache cold {s['cache_cold_epoch_s']:.2f} s, "
        f"warm {s['cache_warm_epoch_s']:.2f} s, floor {s['floor_epoch_s']:.2f} s: speed-up x{s['speedup']:.2f} "
        f"(floor x{s['floor_speedup']:.2f}, encoder {100 * s['encoder_share']:.0f} % of the step, cache reads "
        f"+{100 * s['cache_over_floor']:.0f} % over the floor; timed inside the steps: encoder "
        f"{100 * s['encoder_share_timed']:.0f} % of plain's, cache reads +{100 * s['cache_read_over_rest_timed']:.1f} "
        f"% over the rest of the step) "
        f"(cache {stats['bytes'] / 2**20:.1f} MB, {stats['bytes_per_frame'] / 2**20:.2f} MB/frame; "
        f"max loss difference {s['max_loss_diff']:.2e})"
    )
    out = Path(args.out) if args.out else RESULTS / f"feature_cache_{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
