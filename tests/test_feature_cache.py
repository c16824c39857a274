"""The feature cache: features read back match a fresh `encode_frames` (fp16 rounding), a second pass skips the
image encoder, a key change or a damaged file is a miss, concurrent writers never expose a partial file, and
configs that would make cached features wrong are refused."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sam2train.config import Config, DataConfig, ModelConfig
from sam2train.errors import ConfigError
from sam2train.model import apply_trainable, encode_frames, run_video
from sam2train.model import video as video_module
from sam2train.model.feature_cache import (
    CachedEncoder,
    FeatureCache,
    cache_key,
    check_cache_allowed,
    frame_keys,
    open_cached_encoder,
)

SIZE = 128
MODEL_CFG = ModelConfig(image_size=SIZE, checkpoint=None)
KEYS = [("bear", 0), ("bear", 1), ("dance/twirl", 7)]  # a name with a slash must not make a subfolder


@pytest.fixture(scope="module")
def frozen_sam2(tiny_sam2):
    """tiny_sam2 with a frozen image encoder (memory modules trainable), eval mode."""
    model = copy.deepcopy(tiny_sam2).eval()
    apply_trainable(model, ["memory_attention", "memory_encoder"])
    return model


@pytest.fixture(scope="module")
def key(frozen_sam2) -> dict:
    return cache_key(frozen_sam2, MODEL_CFG)


@pytest.fixture
def encoder_frames(frozen_sam2):
    """Number of frames in each call of the image encoder during the test."""
    calls: list[int] = []
    handle = frozen_sam2.image_encoder.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0])
    )
    yield calls
    handle.remove()


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _assert_fp16_close(got, ref) -> None:
    assert got.sizes == ref.sizes
    for a, b in zip(got.feats, ref.feats):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3 * float(b.abs().max()))
    for a, b in zip(got.pos, ref.pos):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _assert_equal(a, b) -> None:
    for x, y in zip(a.feats + a.pos, b.feats + b.pos):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_cached_features_match_fresh_compute(frozen_sam2, key, tmp_path: Path) -> None:
    images = _images()
    ref = encode_frames(frozen_sam2, images)
    encoder = CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key))
    first = encoder.encode(images, KEYS)  # all misses: computed, rounded to fp16, written
    second = encoder.encode(images, KEYS)  # all hits: read back
    _assert_fp16_close(first, ref)
    _assert_equal(second, first)  # hits and misses go through the same rounding
    assert (encoder.cache.misses, encoder.cache.hits) == (3, 3)
    files = sorted(p.relative_to(encoder.cache.directory) for p in encoder.cache.directory.rglob("*.f16"))
    assert len(files) == 3 and all(len(p.parts) == 3 for p in files)


def test_second_pass_does_not_run_the_image_encoder(frozen_sam2, key, tmp_path: Path, encoder_frames) -> None:
    images = _images()
    CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key)).encode(images, KEYS)
    assert encoder_frames == [3]
    fresh = CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key))  # a new process would start like this
    fresh.encode(images, KEYS)
    fresh.encode(images[[2, 0]], [KEYS[2], KEYS[0]])
    assert encoder_frames == [3]
    mixed = fresh.encode(images[[1]].expand(2, -1, -1, -1), [KEYS[1], ("other", 0)])
    assert encoder_frames == [3, 1]  # only the miss is encoded
    _assert_equal(mixed, fresh.encode(images[[1, 1]], [KEYS[1], ("other", 0)]))


def test_key_change_is_a_miss(frozen_sam2, key, tmp_path: Path, encoder_frames) -> None:
    images = _images(1)
    CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key)).encode(images, KEYS[:1])

    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"x" * 10)
    with_ckpt = cache_key(frozen_sam2, replace(MODEL_CFG, checkpoint=str(ckpt)))
    ckpt.write_bytes(b"x" * 11)  # the same path, another file
    changed_ckpt = cache_key(frozen_sam2, replace(MODEL_CFG, checkpoint=str(ckpt)))
    other_weights = copy.deepcopy(frozen_sam2)
    with torch.no_grad():
        other_weights.image_encoder.trunk.patch_embed.proj.bias.add_(1e-3)
    keys = [
        key,
        with_ckpt,
        changed_ckpt,
        cache_key(frozen_sam2, replace(MODEL_CFG, image_size=160)),
        cache_key(frozen_sam2, replace(MODEL_CFG, config="sam2.1_hiera_s")),
        cache_key(frozen_sam2, MODEL_CFG, precision="bf16-mixed"),
        cache_key(other_weights, MODEL_CFG),
        {**key, "version": -1},
    ]
    digests = {FeatureCache(tmp_path, k).digest for k in keys}
    assert len(digests) == len(keys)
    assert (
        FeatureCache(tmp_path, cache_key(frozen_sam2, MODEL_CFG)).digest == FeatureCache(tmp_path, key).digest
    )

    CachedEncoder(frozen_sam2, FeatureCache(tmp_path, with_ckpt)).encode(images, KEYS[:1])
    assert encoder_frames == [1, 1]


def test_partial_or_foreign_file_is_not_read(frozen_sam2, key, tmp_path: Path, encoder_frames) -> None:
    images = _images()
    cache = FeatureCache(tmp_path, key)
    first = CachedEncoder(frozen_sam2, cache).encode(images, KEYS)
    truncated, foreign, leftover = (cache.frame_path(k) for k in KEYS)
    size = truncated.stat().st_size
    truncated.write_bytes(truncated.read_bytes()[: size // 2])  # a copy cut short
    foreign.write_bytes(leftover.read_bytes())  # the right size, but another frame's footer
    # a writer that died before its rename leaves a temporary file, and no frame file
    leftover.rename(leftover.with_name(f".{leftover.name}.999.dead.tmp"))

    again = CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key))
    _assert_equal(again.encode(images, KEYS), first)
    assert encoder_frames == [3, 3]  # all three recomputed
    assert truncated.stat().st_size == size and leftover.is_file()  # and rewritten whole
    reread = CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key))
    _assert_equal(reread.encode(images, KEYS), first)  # the rewritten files read back as they were written
    assert (reread.cache.hits, reread.cache.misses) == (3, 0) and encoder_frames == [3, 3]


def test_concurrent_writers_never_expose_a_partial_file(key, tmp_path: Path) -> None:
    writer = FeatureCache(tmp_path, key)
    shapes = [(4, 8, 8), (8, 4, 4)]
    writer.set_layout(shapes, [torch.zeros(s) for s in shapes])
    frame = ("clip", 3)
    rows = [torch.full((writer.frame_numel,), float(v), dtype=torch.float16) for v in range(4)]
    seen: list[torch.Tensor | None] = []

    def write(row: torch.Tensor) -> None:
        for _ in range(30):
            writer.put(frame, row)

    def read() -> None:
        reader = FeatureCache(tmp_path, key)
        for _ in range(60):
            got = reader.get(frame)
            seen.append(None if got is None else got.clone())

    threads = [threading.Thread(target=write, args=(r,)) for r in rows] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    whole = [s for s in seen if s is not None]
    assert whole and all(bool((s == s[0]).all()) and float(s[0]) in (0.0, 1.0, 2.0, 3.0) for s in whole)
    assert not list(writer.directory.rglob("*.tmp"))


def test_trainable_projections_keep_their_gradient(frozen_sam2, key, tmp_path: Path) -> None:
    model = copy.deepcopy(frozen_sam2)
    apply_trainable(model, ["sam_mask_decoder"])
    encoder = CachedEncoder(model, FeatureCache(tmp_path, key))
    images = _images(2)
    encoder.encode(images, KEYS[:2])
    feats = encoder.encode(images, KEYS[:2]).feats  # from the cache
    (feats[0].sum() + feats[1].sum()).backward()
    assert model.sam_mask_decoder.conv_s0.weight.grad is not None
    assert model.sam_mask_decoder.conv_s1.weight.grad is not None
    assert not any(p.grad is not None for p in model.image_encoder.parameters())


def test_trainable_image_encoder_is_refused(frozen_sam2, key, tmp_path: Path) -> None:
    model = copy.deepcopy(frozen_sam2)
    apply_trainable(model, ["image_encoder"])
    with pytest.raises(RuntimeError, match="frozen image encoder"):
        CachedEncoder(model, FeatureCache(tmp_path, key)).encode(_images(1), KEYS[:1])


def test_check_cache_allowed(frozen_sam2, tmp_path: Path) -> None:
    ok = Config(
        model=ModelConfig(image_size=SIZE, cache_features=True, cache_dir=str(tmp_path)),
        data=DataConfig(augment=False),
    )
    check_cache_allowed(ok)
    trains_encoder = replace(
        ok, model=replace(ok.model, trainable_modules=["image_encoder", "memory_encoder"])
    )
    with pytest.raises(ConfigError, match="'model.cache_features'.*'image_encoder'"):
        check_cache_allowed(trains_encoder)
    augmented = replace(ok, data=DataConfig(augment=True))
    with pytest.raises(ConfigError, match="'model.cache_features'.*data.augment"):
        check_cache_allowed(augmented)
    check_cache_allowed(replace(augmented, model=replace(ok.model, cache_features=False)))  # off: no check
    with pytest.raises(ConfigError, match="data.augment"):
        open_cached_encoder(frozen_sam2, augmented)
    encoder = open_cached_encoder(frozen_sam2, ok)
    assert encoder.cache.directory.parent == tmp_path


def test_run_video_through_the_cache(frozen_sam2, key, tmp_path: Path, make_video_batch, monkeypatch) -> None:
    """run_video with its encoder call routed to the cache (as the benchmark does until run_video takes one)."""
    batch = make_video_batch(kinds=[["mask", "box"], ["point"]], t=2)
    assert frame_keys(batch) == [
        ("synthetic_0", 0),
        ("synthetic_0", 1),
        ("synthetic_1", 0),
        ("synthetic_1", 1),
    ]
    assert frame_keys(batch, 1, 2) == [("synthetic_0", 1), ("synthetic_1", 1)]
    with torch.no_grad():
        ref = run_video(frozen_sam2, batch)
        cached = CachedEncoder(frozen_sam2, FeatureCache(tmp_path, key))
        monkeypatch.setattr(
            video_module,
            "encode_frames",
            lambda model, images, frozen=None: cached.encode(images, frame_keys(batch)),
        )
        out = run_video(frozen_sam2, batch)
    assert cached.cache.misses == 4
    torch.testing.assert_close(out.mask_logits, ref.mask_logits, rtol=0, atol=0.05)
    assert bool(((out.mask_logits > 0) == (ref.mask_logits > 0)).float().mean() > 0.999)


@pytest.mark.slow
def test_benchmark_script_tiny(tmp_path: Path) -> None:
    """benchmarks/feature_cache.py end to end on a tiny budget: 2 clips of 2 frames at 128 px, 2 epochs."""
    import importlib.util
    import json
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "feature_cache.py"
    spec = importlib.util.spec_from_file_location("feature_cache_benchmark", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    out = tmp_path / "result.json"
    args = [
        "--image-size=128",
        "--epochs=2",
        "--max-clips=2",
        "--clip-length=2",
        "--threads=1",
        "--device=cpu",
    ]
    result = script.main([*args, f"--cache-dir={tmp_path / 'cache'}", f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["clips"] == 2 and result["frames_per_epoch"] == 4
    assert len(result["plain"]["epoch_s"]) == len(result["cache"]["epoch_s"]) == 2
    stats = result["cache_stats"]
    assert stats["misses"] == stats["files"] >= 2 and stats["hits"] + stats["misses"] == 8
    assert stats["bytes_per_frame"] == 256 * (32 * 32 + 16 * 16 + 8 * 8) * 2 + 16
    s = result["summary"]
    assert s["speedup"] == pytest.approx(s["plain_epoch_s"] / s["cache_warm_epoch_s"])
    assert s["max_loss_diff"] < 1e-2  # the same training, up to fp16 features
