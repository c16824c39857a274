"""The GPU code paths, exercised on the CPU: bf16 autocast through the video pass with both losses computed in
float32, the feature cache's float16 features under autocast, the non-finite guard under bf16-mixed, 16-mixed
refused on the CPU, uint8 clips through pin_memory, 2-step bf16-mixed fits of every shipped recipe (slow), and
the GPU settings keys: optimizer.fused, trainer.matmul_precision, trainer.cudnn_benchmark and
model.compile_memory_attention (its compile: slow)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch

from conftest import DEFAULT_CONFIG, TINY_CONFIG, fit_args
from sam2train.batch import VideoBatch, collate_videos
from sam2train.cli import main
from sam2train.config import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    PromptsConfig,
    TrainerConfig,
)
from sam2train.data.datamodule import open_split
from sam2train.errors import ConfigError
from sam2train.losses import LossOutput
from sam2train.model import run_video
from sam2train.model.encoder import encode_frames
from sam2train.model.feature_cache import CachedEncoder, FeatureCache, cache_key, frame_keys
from sam2train.train import gpu
from sam2train.train.module import SAM2LightningModule
from sam2train.train.optim import build_optimizer

SIZE = 64
RECIPES = sorted((Path(__file__).resolve().parents[1] / "src" / "sam2train" / "recipes").glob("*.yaml"))
BF16 = ("trainer.precision=bf16-mixed", "trainer.accelerator=cpu", "model.checkpoint=null")
DATA_TO_DEMO = tuple(
    f"data.{k}=null" for k in ("format", "images_root", "train_videos", "val_videos", "train")
)


def _config(demo: Path, loss: str = "sam2train", **model: object) -> Config:
    return Config(
        data=DataConfig(train_path=str(demo / "train"), clip_length=2, max_objects=2, augment=False),
        model=ModelConfig(config=TINY_CONFIG, image_size=SIZE, checkpoint=None, **model),
        prompts=PromptsConfig(type="mask"),
        loss=LossConfig(type=loss),
    )


def _batch(cfg: Config) -> VideoBatch:
    _, dataset = open_split(cfg, train=True)
    return collate_videos([dataset[0]])


def _module(cfg: Config) -> SAM2LightningModule:
    module = SAM2LightningModule(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights on purpose
        module.build()
    return module.train()


# ------------------------------------------------------------------------------------- autocast, dtypes


@pytest.mark.parametrize("loss", ["sam2train", "sam2"])
def test_video_pass_under_bf16_autocast_and_both_losses_in_float32(demo_data: Path, loss: str) -> None:
    cfg = _config(demo_data, loss)
    module, batch = _module(cfg), _batch(cfg)
    assert batch.images.dtype == torch.uint8  # clips leave the loader as uint8, normalised on the device
    seen: dict[str, set[torch.dtype]] = {}

    def record(stage: str):
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            seen.setdefault(stage, set()).add(output.dtype)

        return hook

    for name, child in module.model.named_modules():
        if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
            child.register_forward_hook(record(name.split(".")[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(batch)
        result = module.compute_loss(out, batch)
    # autocast reaches every stage of the pass: each one's linear layers and convolutions run in bf16
    for stage in ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder"):
        assert seen.get(stage) == {torch.bfloat16}, (stage, seen)
    assert result.total.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in result.terms.values())
    # the same outputs in float32 without autocast give the same loss: the loss casts up and runs in float32
    as_float = type(out)(**{k: _to_float(v) for k, v in vars(out).items()})
    again = module.compute_loss(as_float, batch)
    torch.testing.assert_close(result.total.detach(), again.total.detach(), rtol=1e-5, atol=1e-6)
    result.total.backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def _to_float(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().float()
    if isinstance(value, list):
        return [_to_float(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def test_feature_cache_keeps_float16_on_disk_and_gives_float32_features_under_autocast(
    demo_data: Path, tmp_path: Path
) -> None:
    cfg = _config(demo_data, cache_features=True)
    module, batch = _module(cfg), _batch(cfg)
    model = module.model
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    cached = CachedEncoder(model, FeatureCache(tmp_path, cache_key(model, cfg.model, "bf16-mixed")))
    images = batch.images[0].float() / 255  # any normalisation: the same on both calls
    keys = frame_keys(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cold = cached.encode(images, keys)
        warm = cached.encode(images, keys)
        direct = encode_frames(model, images, frozen=True)
        out = run_video(model, batch, encoder=cached)
    assert cached.cache.misses == len(keys) and cached.cache.hits >= len(keys)
    files = list(tmp_path.rglob("*.f16"))
    assert len(files) == len(keys)
    # fp16 on disk, but the pass gets what the encoder gives under autocast: the same dtypes, close values
    assert [f.dtype for f in warm.feats] == [f.dtype for f in direct.feats]
    assert torch.float16 not in {f.dtype for f in [*warm.feats, *warm.pos]}
    for a, b in zip(warm.feats, direct.feats):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0.05)
    for a, b in zip(cold.feats, warm.feats):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # a miss goes through the same fp16 rounding
    assert bool(torch.isfinite(out.mask_logits.float()).all())


# ------------------------------------------------------------------------------------- fits


def _column(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_nan_guard_skips_the_step_under_bf16_mixed(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SAM2LightningModule.compute_loss
    seen: list[int] = []

    def poisoned(self, out, batch):  # the second training batch's loss is NaN
        result = original(self, out, batch)
        if self.training:
            seen.append(len(seen))
            if len(seen) == 2:
                return LossOutput(result.total * float("nan"), result.terms)
        return result

    monkeypatch.setattr(SAM2LightningModule, "compute_loss", poisoned)
    extra = (*BF16, "data.stride=1", "trainer.log_every_n_steps=1", "logging.loggers=[csv]")
    args = fit_args(tmp_path, *extra, data=demo_data, val=False, config=DEFAULT_CONFIG, model=TINY_CONFIG,
                    image_size=SIZE, steps=3, version="run")  # fmt: skip
    assert main(args) == 0
    run = next(tmp_path.rglob("run"))
    assert _column(run, "train/skipped_steps")[-1] == 1


def test_16_mixed_on_the_cpu_is_a_config_error(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    extra = ("trainer.precision=16-mixed", "trainer.accelerator=cpu")
    assert main(fit_args(tmp_path, *extra, data=demo_data, model=TINY_CONFIG, image_size=SIZE, steps=1)) == 2
    err = capsys.readouterr().err
    assert "trainer.precision" in err and "16-mixed needs a CUDA GPU" in err and "bf16-mixed" in err


def test_uint8_clips_go_through_pin_memory_unchanged(
    demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(_config(demo_data))
    pinned: list[torch.dtype] = []

    def fake_pin(self: torch.Tensor, *args: object) -> torch.Tensor:  # no CUDA here: record, copy
        pinned.append(self.dtype)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    out = batch.pin_memory()
    assert isinstance(out, VideoBatch) and out.images.dtype == torch.uint8
    assert torch.equal(out.images, batch.images) and torch.equal(out.masks, batch.masks)
    assert torch.uint8 in pinned and len(pinned) >= 6  # images, masks, valid, ignore, prompts, ids ...


def _recipe_fit(recipe: Path, data: Path, root: Path) -> list[float]:
    extra = (*BF16, *DATA_TO_DEMO, "trainer.accumulate_grad_batches=1", "trainer.log_every_n_steps=1",
             "logging.loggers=[csv]", "logging.viz_every_n_epochs=0", "trainer.devices=1")  # fmt: skip
    args = fit_args(root, *extra, data=data, config=recipe, model=TINY_CONFIG, image_size=SIZE, steps=2,
                    version="run")  # fmt: skip
    assert main(args) == 0, recipe.stem
    losses = _column(next(root.rglob("run")), "train/total")
    assert losses and all(torch.isfinite(torch.tensor(losses))), (recipe.stem, losses)
    return losses


def test_demo_recipe_fits_under_bf16_mixed(demo_data: Path, tmp_path: Path) -> None:
    _recipe_fit(next(r for r in RECIPES if r.stem == "demo"), demo_data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_fits_2_steps_under_bf16_mixed(recipe: Path, demo_data: Path, tmp_path: Path) -> None:
    _recipe_fit(recipe, demo_data, tmp_path)


# ------------------------------------------------------------------------------------- GPU settings keys


def _cfg(**sections: object) -> Config:
    return Config(**sections)


def test_fused_optimizer_on_cuda_by_default_and_where_asked() -> None:
    assert gpu.use_fused_optimizer(_cfg(), "cuda") is True
    assert gpu.use_fused_optimizer(_cfg(), "cpu") is False
    assert gpu.use_fused_optimizer(_cfg(optimizer=OptimizerConfig(fused=False)), "cuda") is False
    assert gpu.use_fused_optimizer(_cfg(optimizer=OptimizerConfig(fused=True)), "cpu") is True
    scaled = TrainerConfig(precision="16-mixed", gradient_clip_val=1.0)
    assert gpu.use_fused_optimizer(_cfg(trainer=scaled), "cuda") is False  # null: off where it cannot clip
    with pytest.raises(ConfigError, match="optimizer.fused.*16-mixed"):
        gpu.use_fused_optimizer(_cfg(trainer=scaled, optimizer=OptimizerConfig(fused=True)), "cuda")
    unclipped = TrainerConfig(precision="16-mixed", gradient_clip_val=None)
    assert gpu.use_fused_optimizer(_cfg(trainer=unclipped), "cuda") is True


def test_build_optimizer_fused_and_its_refusal(tiny_sam2, monkeypatch: pytest.MonkeyPatch) -> None:
    opt = build_optimizer(tiny_sam2, OptimizerConfig(), fused=True)
    assert opt.defaults["fused"] is True
    assert build_optimizer(tiny_sam2, OptimizerConfig()).defaults["fused"] is None

    class Refusing(torch.optim.AdamW):
        def __init__(self, *args: object, fused: bool | None = None, **kwargs: object) -> None:
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on supported devices")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Refusing)
    with pytest.raises(ConfigError, match="config key 'optimizer.fused'.*supported devices"):
        build_optimizer(tiny_sam2, OptimizerConfig(), fused=True)


@pytest.fixture
def restore_backends():
    precision, bench, tf32 = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
    )
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = bench, tf32


def test_matmul_precision_high_on_cuda_untouched_on_cpu(
    monkeypatch: pytest.MonkeyPatch, restore_backends: None
) -> None:
    torch.set_float32_matmul_precision("highest")
    assert gpu.apply_matmul_precision(_cfg()) is None  # CPU here: untouched
    assert torch.get_float32_matmul_precision() == "highest"
    assert gpu.apply_matmul_precision(_cfg(trainer=TrainerConfig(matmul_precision="medium"))) == "medium"
    assert torch.get_float32_matmul_precision() == "medium"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.apply_matmul_precision(_cfg()) == "high"
    assert torch.get_float32_matmul_precision() == "high"
    with pytest.raises(ConfigError, match="trainer.matmul_precision"):
        TrainerConfig(matmul_precision="fast")


def test_cudnn_benchmark_when_the_sizes_are_fixed(
    monkeypatch: pytest.MonkeyPatch, demo_data: Path, tmp_path: Path, restore_backends: None
) -> None:
    capped = DataConfig(max_objects=3)
    assert gpu.cudnn_benchmark(_cfg(data=capped)) is False  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.cudnn_benchmark(_cfg(data=capped)) is True
    assert gpu.cudnn_benchmark(_cfg(data=DataConfig(max_objects=None))) is False  # object count unbounded
    assert gpu.cudnn_benchmark(_cfg(data=capped, trainer=TrainerConfig(deterministic=True))) is False
    assert gpu.cudnn_benchmark(_cfg(trainer=TrainerConfig(cudnn_benchmark=True))) is True
    monkeypatch.undo()
    from sam2train.train.trainer import make_trainer

    torch.backends.cudnn.benchmark = False
    make_trainer(_cfg(trainer=TrainerConfig(accelerator="cpu", cudnn_benchmark=True),
                      logging=_logging(tmp_path)))  # fmt: skip
    assert torch.backends.cudnn.benchmark is True  # Lightning applies the trainer's `benchmark`


def _logging(root: Path) -> object:
    from sam2train.config import LoggingConfig

    return LoggingConfig(root_dir=str(root), loggers=["csv"])


@pytest.mark.slow
def test_compiled_memory_attention_gives_the_same_loss(demo_data: Path) -> None:
    """model.compile_memory_attention on the CPU (Inductor's C++ backend): it compiles, and a training step's
    loss and gradients match the eager module's (its dropout off on both sides)."""
    from sam2train.model.memory_saving import compile_memory_attention, memory_attention_compiled

    cfg = _config(demo_data)
    batch = _batch(cfg)
    results = []
    for compiled in (False, True):
        module = _module(cfg)
        module.model.memory_attention.eval()  # no dropout: Inductor draws its own random numbers
        if compiled:
            compile_memory_attention(module.model, device="cpu")
            assert memory_attention_compiled(module.model)
        loss = module.compute_loss(module(batch), batch).total
        loss.backward()
        grad = module.model.memory_attention.layers[0].self_attn.q_proj.weight.grad
        results.append((loss.detach(), grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-5)
