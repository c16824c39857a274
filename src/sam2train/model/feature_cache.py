"""On-disk cache of the frozen image encoder's features (`model.cache_features`), so that later epochs skip it.

What is cached is the image encoder's output (`backbone_fpn`, every level) of one frame, BEFORE the mask decoder's
high-res projections `conv_s0` / `conv_s1`, which `encode_frames` applies next: those belong to the decoder and
may train. `CachedEncoder.encode` loads or computes the encoder output (`run_image_encoder`), then applies the
projections and SAM 2's flattening (`features_from_backbone`), the same two halves as `encode_frames`, so it
returns what `encode_frames` returns, up to fp16 rounding.

Layout under `<root>/<hash of the key>/`:
- `key.json`: the key (checkpoint, config, resolution, dtype, encoder weights' fingerprint, version), for people;
- `layout.json` and `pos.pt`: each level's [C, h, w] and the positional encodings (the same for every frame, so
  stored once, float32); written before any frame;
- `frames/<video>-<hash>/<frame index>.f16`: one frame, every level's [C, h, w] flattened and concatenated in
  float16 (C, h, w order, as the projections take them), then a 16-byte footer (magic, version and a digest of
  the frame id). Read through a memory map.
A frame file is written to a temporary name and renamed into place, so readers (DDP ranks, other runs) see a
whole file or none; a file of the wrong size or with a wrong footer (a copy cut short, a crash on a filesystem
that does not order data before the rename) is a miss and is rewritten. A different checkpoint, config,
resolution, dtype or set of encoder weights gives another directory: nothing is ever invalidated in place.
Size per frame: 256 * (S/4)^2 * 21/16 * 2 bytes (S = image size): 2.8 MB at 256 px, 44 MB at 1024 px.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sam2train.config import Config, ModelConfig
from sam2train.errors import ConfigError
from sam2train.files import atomic_write
from sam2train.model.encoder import FrameFeatures, features_from_backbone, run_image_encoder

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.batch import VideoBatch

CACHE_VERSION = 1
"""Bump when what a frame's cached features mean changes (storage layout, frame preprocessing)."""

FrameKey = tuple[str, int]
"""(video name, frame index in the video): names one frame's features. Must be unique across all sources."""

_MAGIC = b"S2TF" + CACHE_VERSION.to_bytes(4, "little")
_FOOTER_BYTES = 16


# --------------------------------------------------------------------------------------------- config


def check_cache_allowed(cfg: Config) -> None:
    """With `model.cache_features` on, raise ConfigError unless the image encoder is frozen and the training
    frames are not augmented (otherwise cached features would be stale or wrong). No-op when it is off."""
    if cfg.model.cache_features:
        _require_cacheable(cfg)


def _require_cacheable(cfg: Config) -> None:
    if "image_encoder" in cfg.model.trainable_modules:
        raise ConfigError(
            "config key 'model.cache_features': cached features need a frozen image encoder, but "
            "model.trainable_modules contains 'image_encoder'; remove it or set model.cache_features: false"
        )
    if cfg.data.augment:
        raise ConfigError(
            "config key 'model.cache_features': cached features need unaugmented frames (augmentation changes "
            "them every epoch), but data.augment is true; set data.augment: false or model.cache_features: false"
        )


def default_cache_root(cfg: Config) -> Path:
    """`model.cache_dir`, else `<logging.root_dir>/feature_cache`."""
    return Path(cfg.model.cache_dir or Path(cfg.logging.root_dir) / "feature_cache").expanduser()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `module`'s state dict (~1 s per GB of weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cache_key(model: SAM2Base, cfg: ModelConfig, precision: str = "32") -> dict[str, Any]:
    """Everything the cached features depend on. Call it once the model holds its final weights (after a
    Lightning checkpoint is loaded, say): the encoder weights' fingerprint is part of the key, so random or
    resumed weights never meet features of other weights.

    `precision`: the run's `trainer.precision` (autocast changes the encoder's numerics).
    """
    from omegaconf import OmegaConf

    from sam2train.model.build import load_model_config

    checkpoint = None
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint).expanduser().resolve()
        stat = path.stat()
        checkpoint = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    encoder_cfg = load_model_config(cfg.config, cfg.image_size).image_encoder
    return {
        "version": CACHE_VERSION,
        "sam2": importlib.metadata.version("sam2"),
        "config": cfg.config,
        "image_encoder_config": OmegaConf.to_container(encoder_cfg, resolve=True),
        "image_size": cfg.image_size,
        "checkpoint": checkpoint,
        "dtype": str(next(model.image_encoder.parameters()).dtype),
        "precision": str(precision),
        "image_encoder_weights": weights_fingerprint(model.image_encoder),
    }


def frame_keys(batch: VideoBatch, start: int = 0, stop: int | None = None) -> list[FrameKey]:
    """Frame ids of `batch.images[:, start:stop].flatten(0, 1)` (clip-major, as `_ChunkedFrames` encodes)."""
    stop = batch.images.shape[1] if stop is None else stop
    indices = batch.frame_indices[:, start:stop].tolist()
    return [(name, int(i)) for name, row in zip(batch.video_names, indices) for i in row]


# --------------------------------------------------------------------------------------------- storage


class FeatureCache:
    """Per-frame image-encoder features in float16 files under `root/<hash of key>` (see the module docstring).

    `key`: a JSON-serialisable dict of everything the features depend on (`cache_key`). Safe for several
    processes reading and writing at once; `hits` / `misses` count `get` results.
    """

    def __init__(self, root: Path | str, key: dict[str, Any]) -> None:
        text = json.dumps(key, sort_keys=True, default=str)
        self.key = key
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.directory = Path(root).expanduser() / self.digest
        self.hits = self.misses = 0
        self._shapes: list[tuple[int, int, int]] | None = None
        self._pos: list[torch.Tensor] | None = None
        if not (self.directory / "key.json").is_file():
            with atomic_write(self.directory / "key.json") as f:
                f.write(json.dumps(key, indent=1, sort_keys=True).encode())
        self._load_layout()

    @property
    def shapes(self) -> list[tuple[int, int, int]] | None:
        """Per level (C, h, w), highest resolution first; None until the first frame is written."""
        return self._shapes

    @property
    def frame_numel(self) -> int:
        assert self._shapes is not None
        return sum(c * h * w for c, h, w in self._shapes)

    def pos(self) -> list[torch.Tensor]:
        """Per level [C, h, w] float32 positional encodings (the same for every frame)."""
        assert self._pos is not None, "no layout yet: write a frame first"
        return self._pos

    def _load_layout(self) -> None:
        layout, pos = self.directory / "layout.json", self.directory / "pos.pt"
        if layout.is_file() and pos.is_file():
            self._shapes = [tuple(s) for s in json.loads(layout.read_text())["shapes"]]
            self._pos = torch.load(pos, map_location="cpu", weights_only=True)

    def set_layout(self, shapes: Sequence[tuple[int, int, int]], pos: Sequence[torch.Tensor]) -> None:
        """Record the levels' shapes and the positional encodings (per level [C, h, w]) before the first frame."""
        shapes = [tuple(int(v) for v in s) for s in shapes]
        if self._shapes is None:
            self._load_layout()
        if self._shapes is not None:
            if shapes != self._shapes:
                raise RuntimeError(
                    f"{self.directory}: cached levels {self._shapes} but the encoder gives {shapes}"
                )
            return
        with atomic_write(self.directory / "pos.pt") as f:
            torch.save([p.detach().float().cpu().contiguous() for p in pos], f)
        with atomic_write(self.directory / "layout.json") as f:
            f.write(json.dumps({"shapes": shapes}).encode())
        self._load_layout()

    def frame_path(self, frame: FrameKey) -> Path:
        video, index = frame
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", video)[:64]
        tag = hashlib.sha1(video.encode()).hexdigest()[:10]  # keeps names that sanitise alike apart
        return self.directory / "frames" / f"{safe}-{tag}" / f"{int(index)}.f16"

    def _footer(self, frame: FrameKey) -> bytes:
        digest = hashlib.blake2b(f"{self.digest}|{frame[0]}|{int(frame[1])}".encode(), digest_size=8)
        return _MAGIC + digest.digest()

    def get(self, frame: FrameKey) -> torch.Tensor | None:
        """The frame's features as one flat [D] float16 CPU tensor backed by a memory map (D = sum C*h*w), or
        None when absent, incomplete or not this frame's."""
        found = self._read(frame)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def _read(self, frame: FrameKey) -> torch.Tensor | None:
        if self._shapes is None:
            self._load_layout()  # another process may have written the first frame since
        if self._shapes is None:
            return None
        try:
            f = open(self.frame_path(frame), "rb")
        except FileNotFoundError:
            return None
        with f:  # size and map from one open file: a concurrent rename cannot mix two versions
            if os.fstat(f.fileno()).st_size != 2 * self.frame_numel + _FOOTER_BYTES:
                return None
            data = np.memmap(f, dtype=np.uint8, mode="c")  # copy-on-write: a writable tensor, file untouched
        if data[-_FOOTER_BYTES:].tobytes() != self._footer(frame):
            return None
        return torch.from_numpy(data[:-_FOOTER_BYTES].view(np.float16))

    def put(self, frame: FrameKey, flat: torch.Tensor) -> None:
        """Store one frame's features, a flat [D] tensor (cast to float16)."""
        if flat.numel() != self.frame_numel:
            raise ValueError(f"frame {frame}: {flat.numel()} values, the layout holds {self.frame_numel}")
        data = flat.detach().to(device="cpu", dtype=torch.float16).contiguous().numpy()
        with atomic_write(self.frame_path(frame)) as f:
            f.write(memoryview(data).cast("B"))
            f.write(self._footer(frame))


# --------------------------------------------------------------------------------------------- encoder


class CachedEncoder:
    """`encode_frames` through a FeatureCache: cached frames are read, the others encoded and written.

    Every frame, hit or miss, goes through the same float16 rounding, so a run sees the same features in its
    first epoch as in the later ones. The image encoder must be frozen (checked on every call).
    """

    def __init__(self, model: SAM2Base, cache: FeatureCache) -> None:
        self.model = model
        self.cache = cache
        self._pos: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}

    def encode(self, images: torch.Tensor, frame_keys: Sequence[FrameKey]) -> FrameFeatures:
        """FrameFeatures of `images` [F, 3, S, S] (normalised), frame f named `frame_keys[f]`; features in the
        image encoder's dtype on `images`' device."""
        model, cache = self.model, self.cache
        n = images.shape[0]
        if n == 0 or len(frame_keys) != n:
            raise ValueError(f"{n} images and {len(frame_keys)} frame keys: need as many, at least one")
        if any(p.requires_grad for p in model.image_encoder.parameters()):
            raise RuntimeError(
                "the feature cache needs a frozen image encoder (model.cache_features with 'image_encoder' in "
                "model.trainable_modules): its features would go stale as it trains"
            )
        device, dtype = images.device, next(model.image_encoder.parameters()).dtype
        cached = [cache.get(k) for k in frame_keys]
        miss = [i for i, c in enumerate(cached) if c is None]
        fresh = self._encode_misses(images, [frame_keys[i] for i in miss], miss) if miss else None
        rows = self._rows(cached, miss, fresh, device, dtype)
        levels = [
            chunk.view(n, c, h, w).to(dtype)
            for chunk, (c, h, w) in zip(
                rows.split([c * h * w for c, h, w in cache.shapes], dim=1), cache.shapes
            )
        ]
        pos = [p.expand(n, -1, -1, -1) for p in self._positions(device, dtype)]
        return features_from_backbone(model, levels, pos)

    def _encode_misses(self, images: torch.Tensor, keys: list[FrameKey], miss: list[int]) -> torch.Tensor:
        """Encode the missing frames, write them, and return them as [m, D] float16 on the images' device."""
        fpn, pos = run_image_encoder(
            self.model, images[torch.tensor(miss, device=images.device)], frozen=True
        )
        flat = torch.cat([x.flatten(1) for x in fpn], dim=1)
        half = flat.to(torch.float16)
        if bool(torch.isinf(half).any()) and not bool(torch.isinf(flat).any()):
            raise FloatingPointError(
                "image encoder features exceed the float16 range of the feature cache; "
                "set model.cache_features: false"
            )
        self.cache.set_layout([tuple(x.shape[1:]) for x in fpn], [p[0] for p in pos])
        on_cpu = half.cpu()
        for key, row in zip(keys, on_cpu):
            self.cache.put(key, row)
        return half

    @staticmethod
    def _rows(
        cached: list[torch.Tensor | None],
        miss: list[int],
        fresh: torch.Tensor | None,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
    ) -> torch.Tensor:
        """[F, D] on `device`: cached rows copied through one host buffer, fresh rows placed. Off the CPU the buffer
        is float16 and pinned (half the bytes to transfer; the cast happens on the device); on the CPU it is
        `dtype` itself, filled straight from the memory maps (one pass instead of a copy and then a cast)."""
        if fresh is not None and len(miss) == len(cached):
            return fresh
        first = next(c for c in cached if c is not None)
        cpu = device.type == "cpu"
        kind = dtype if cpu else torch.float16
        host = torch.empty(len(cached), first.numel(), dtype=kind, pin_memory=device.type == "cuda")
        for i, c in enumerate(cached):
            if c is not None:
                host[i].copy_(c)
        rows = host.to(device, non_blocking=True)
        if fresh is not None:
            rows[torch.tensor(miss, device=device)] = fresh.to(rows.dtype)
        return rows

    def _positions(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per level [1, C, h, w] encodings on `device`, kept per (device, dtype)."""
        if (device, dtype) not in self._pos:
            self._pos[(device, dtype)] = [p[None].to(device=device, dtype=dtype) for p in self.cache.pos()]
        return self._pos[(device, dtype)]


def open_cached_encoder(model: SAM2Base, cfg: Config) -> CachedEncoder:
    """The CachedEncoder for a run: refuses a trainable image encoder or augmentation (ConfigError), keys the
    cache by `cache_key(model, cfg.model, cfg.trainer.precision)` under `default_cache_root(cfg)`. Call it once
    the model holds its final weights."""
    _require_cacheable(cfg)
    key = cache_key(model, cfg.model, cfg.trainer.precision)
    return CachedEncoder(model, FeatureCache(default_cache_root(cfg), key))
