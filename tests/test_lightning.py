"""SAM2LightningModule: forward inputs, optimisers and schedules, precision, resume with --ckpt last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import SequentialLR, StepLR

from conftest import fit_args
from sam2train.batch import as_video_batch
from sam2train.cli import main
from sam2train.config import load_config
from sam2train.data.demo import write_demo_dataset
from sam2train.errors import ConfigError
from sam2train.train.module import SAM2LightningModule
from sam2train.train.trainer import resolve_precision


@pytest.fixture(scope="module")
def module() -> SAM2LightningModule:
    m = SAM2LightningModule(load_config(None, ["model.image_size=128"]))
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        m.build()
    return m.eval()


def test_build_freezes_what_is_not_trainable(module: SAM2LightningModule) -> None:
    assert module.param_report["memory_attention"][1] == module.param_report["memory_attention"][0] > 0
    assert module.param_report["image_encoder"][1] == 0
    assert all(not p.requires_grad for p in module.model.sam_mask_decoder.parameters())


def test_forward_accepts_tensors_and_meta_batches(module: SAM2LightningModule) -> None:
    pytest.importorskip("tensordict")
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    torch.manual_seed(0)
    t, s = 2, 128
    images = torch.randn(2, t, 3, s, s)
    masks = torch.zeros(2, t, 2, s, s)
    masks[0, :, 0, 10:60, 10:50] = 1
    masks[0, :, 1, 70:120, 60:110] = 1
    masks[1, :, 0, 30:90, 30:90] = 1
    with torch.no_grad():
        out = module(images, masks)
    assert out.mask_logits.shape == (2, t, 2, s, s)
    # Meta's collate: objects of all videos on one axis, (frame, video) per object
    obj_to_frame = torch.tensor([[[f, 0], [f, 0], [f, 1]] for f in range(t)], dtype=torch.int)
    meta_masks = torch.stack([masks[0, :, 0], masks[0, :, 1], masks[1, :, 0]], dim=1).bool()
    meta = BatchedVideoDatapoint(
        img_batch=images.transpose(0, 1),
        obj_to_frame_idx=obj_to_frame,
        masks=meta_masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(t, 3, 3, dtype=torch.long),
            frame_orig_size=torch.full((t, 3, 2), s, dtype=torch.long),
            batch_size=[t],
        ),
        dict_key="video",
        batch_size=[t],
    )
    batch = as_video_batch(meta)
    assert batch.valid[1, :, 1].sum() == 0 and batch.valid[0].all()
    with torch.no_grad():
        from_meta = module(meta)
    torch.testing.assert_close(from_meta.mask_logits[0], out.mask_logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_meta.mask_logits[1, :, 0], out.mask_logits[1, :, 0], atol=1e-5, rtol=0)


def test_adam_with_step_lr_per_epoch() -> None:
    m = SAM2LightningModule(
        load_config(None, ["optimizer.type=Adam", "scheduler.type=StepLR", "model.image_size=128"])
    )
    with pytest.warns(UserWarning):
        m.build()
    conf = m.configure_optimizers()
    assert type(conf["optimizer"]) is torch.optim.Adam
    assert (
        isinstance(conf["lr_scheduler"]["scheduler"], StepLR) and conf["lr_scheduler"]["interval"] == "epoch"
    )
    trainable = sum(p.numel() for g in conf["optimizer"].param_groups for p in g["params"])
    assert trainable == sum(tr for _, tr in m.param_report.values())


def test_warmup_then_cosine_per_step() -> None:
    cfg = load_config(
        None,
        ["scheduler.warmup_steps=4", "scheduler.interval=step", "scheduler.T_max=10", "model.image_size=128"],
    )
    m = SAM2LightningModule(cfg)
    with pytest.warns(UserWarning):
        m.build()
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 1e-4
    assert isinstance(sched, SequentialLR) and conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] < lrs[4] == pytest.approx(1e-4)
    assert lrs[4] > lrs[9] > lrs[13] and lrs[14] == pytest.approx(1e-6)  # T_max steps after warmup


def test_half_precision_on_cpu_is_an_error_naming_the_key() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_precision("auto", "auto") == "32-true"
    with pytest.raises(ConfigError, match="trainer.precision"):
        resolve_precision("16-mixed", "auto")


def test_resume_from_last(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    write_demo_dataset(data, videos=3, frames=4, size=(64, 64), objects=1, seed=0)
    extra = ["model.trainable_modules=[memory_attention]", "trainer.limit_train_batches=1"]
    extra += ["trainer.validate_first=true", "logging.viz_every_n_epochs=0"]
    common = fit_args(tmp_path / "runs", *extra, data=data)
    assert main([*common, "trainer.max_epochs=1"]) == 0
    first = capsys.readouterr().out
    assert "before training" in first and "val/J&F" in first
    assert main([*common, "trainer.max_epochs=2", "--ckpt", "last"]) == 0
    runs = sorted((tmp_path / "runs" / "demo").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # a resume continues in its own run folder
    final = json.loads((runs[0] / "final_metrics.json").read_text())
    assert final["global_steps"] == 2 and final["epochs"] == 2  # continued from the first run's step 1
