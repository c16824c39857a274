"""End to end on demo data: `sam2train fit` writes checkpoint, config and metrics; `validate` reads them back;
the same run under DDP with 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fit_args
from sam2train.cli import main

LOGGED = ("trainer.log_every_n_steps=1", "scheduler.warmup_steps=0")
"""Every step logged, the learning rate from the first step."""


def test_fit_writes_checkpoint_config_metrics_and_validate_reads_them(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(fit_args(tmp_path, *LOGGED, data=demo_data, steps=2)) == 0
    run = tmp_path / "demo" / "version_0"
    ckpts = run / "checkpoints"
    assert (
        (ckpts / "last.ckpt").is_file()
        and (ckpts / "config.yaml").is_file()
        and (run / "config.yaml").is_file()
    )
    best = [p for p in ckpts.glob("epoch*.ckpt")]
    assert len(best) == 1
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["sam2train_config"]["model"]["image_size"] == 128
    assert any(k.startswith("model.memory_attention.") for k in state["state_dict"])
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_steps"] == 2 and final["monitor"] == "val/J&F"
    assert final["best_model_path"] == str(best[0])
    assert final["parameters"]["total"] > final["parameters"]["per_group"]["memory_attention"]["total"] > 0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "train/total",
        "train/bce",
        "train/dice",
        "train/iou",
        "train/temporal",
        "val/total",
        "val/J",
        "val/F",
        "val/J&F",
        "lr",
    ):
        assert key in header
    assert (run / "curves.png").is_file()
    capsys.readouterr()

    args = ["validate", "--config", str(ckpts / "config.yaml"), "--ckpt", str(ckpts / "last.ckpt")]
    assert main([*args, "logging.version=check"]) == 0
    printed = capsys.readouterr().out
    assert "val/total:" in printed and "val/J&F:" in printed


def test_fit_with_missing_data_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert main(fit_args(tmp_path, data=missing, val=False)) == 2
    assert str(missing) in capsys.readouterr().err


def test_resume_with_missing_checkpoint_names_it(demo_data: Path, tmp_path: Path, capsys) -> None:
    assert main(fit_args(tmp_path, "--ckpt", str(tmp_path / "x.ckpt"), data=demo_data, steps=2)) == 2
    assert "x.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(demo_data: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "sam2train"
    cmd = [str(exe), *fit_args(tmp_path, *LOGGED, data=demo_data, steps=2)]
    cmd += ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "logging.version=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SAM2TRAIN_RUN_VERSION", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "demo" / "ddp"
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_steps"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_fit_runs_the_fast_data_check_first(demo_data: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    bad = sorted((data / "train" / "Annotations").glob("*/00002.png"))[0]
    mask = Image.open(bad)
    mask.crop((0, 0, mask.width - 6, mask.height)).save(bad)  # 6 px narrower than its frame: an error
    args = fit_args(tmp_path / "runs", *LOGGED, data=data, steps=2)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data error" in err and bad.name in err and bad.parent.name in err
    assert not (tmp_path / "runs").exists()  # stopped before any run folder was made
