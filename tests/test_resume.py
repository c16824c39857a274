"""Never lose a run: a run stopped by SIGTERM mid-epoch and resumed with `--ckpt last` ends bit-identical to an
uninterrupted one (also across 0 and 2 data workers); `kill -9` during checkpoint saves leaves no truncated file."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEFAULT_CONFIG, fit_args
from sam2train.cli import main
from sam2train.data.demo import write_demo_dataset
from sam2train.data.sampling import EpochSampler
from sam2train.train.resume import restore_resume_state, save_resume_state

EXE = Path(sys.executable).parent / "sam2train"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume_data")
    # 3 videos x 11 two-frame windows: a 33-step epoch, so every run here stops and resumes mid-epoch
    write_demo_dataset(out, videos=3, frames=12, size=(64, 64), objects=2, seed=3, val_videos=0)
    return out


def _args(data: Path, root: Path, version: str, workers: int, *extra: str) -> list[str]:
    run = ("data.stride=1", "trainer.max_steps=4", "trainer.log_every_n_steps=1")
    extra = (*run, "trainer.deterministic=true", "logging.loggers=[csv]", *extra)
    return fit_args(
        root, *extra, data=data, val=False, config=DEFAULT_CONFIG, workers=workers, version=version
    )


def _run_dir(root: Path, version: str) -> Path:
    return root / "sam2train" / version


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _losses(run: Path) -> dict[int, str]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r["train/total"] for r in csv.DictReader(f) if r.get("train/total")}


def _env() -> dict[str, str]:
    """The subprocess computes with as many CPU threads as this process (another thread count sums in another
    order: close, not bit-identical, results)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env.pop("SAM2TRAIN_RUN_VERSION", None)
    return env


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float) -> list[Path]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if found := sorted(folder.glob(pattern)):
            return found
        time.sleep(0.01)
    return []


def test_epoch_sampler_resumes_mid_epoch_and_rolls_over_a_finished_epoch() -> None:
    sampler = EpochSampler(10, shuffle=True, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    order = list(sampler)
    sampler.consumed = 2
    state = sampler.state_dict()
    assert state == {"epoch": 2, "consumed": 2}
    resumed = EpochSampler(10, shuffle=True, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning's count may run ahead: the loaded epoch wins for the first pass
    assert list(resumed) == order[2:]
    fresh = EpochSampler(10, shuffle=True, seed=3, rank=1, world_size=2)
    fresh.set_epoch(3)
    epoch3 = list(fresh)
    resumed.set_epoch(3)
    assert list(resumed) == epoch3  # later passes follow set_epoch again, whole
    finished = EpochSampler(10, shuffle=True, seed=3, rank=1, world_size=2)
    finished.load_state_dict({"epoch": 2, "consumed": 5})  # all 5 of this rank's shard: on to epoch 3
    assert list(finished) == epoch3


def _draw() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(3), np.random.rand(3), random.random()


def test_rng_states_travel_in_a_weights_only_checkpoint_and_are_restored_only_for_fit(tmp_path: Path) -> None:
    checkpoint: dict = {}
    save_resume_state(checkpoint)
    torch.save(checkpoint, tmp_path / "state.ckpt")
    loaded = torch.load(tmp_path / "state.ckpt", weights_only=True)
    expected = _draw()
    restore_resume_state(
        loaded, fitting=False
    )  # validation or prediction from a checkpoint: RNGs as they are
    moved_on = _draw()
    assert not torch.equal(moved_on[0], expected[0])
    restore_resume_state(loaded, fitting=True)
    again = _draw()
    assert (
        torch.equal(again[0], expected[0])
        and np.array_equal(again[1], expected[1])
        and again[2] == expected[2]
    )
    restore_resume_state({}, fitting=True)  # a checkpoint without resume state leaves the RNGs alone


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    assert main(_args(data, tmp_path, "straight", 0)) == 0

    # the same run with 2 workers, stopped for real by SIGTERM once its first checkpoint is on disk
    ckpts = _run_dir(tmp_path, "killed") / "checkpoints"
    cmd = [str(EXE), *_args(data, tmp_path, "killed", 2, "checkpoint.every_n_train_steps=1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert _wait_for("epoch*-step000001.ckpt", ckpts, proc, timeout=120), proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "--ckpt last" in err and str(ckpts / "last.ckpt") in err
    stopped = _load(ckpts / "last.ckpt")
    assert 1 <= stopped["global_step"] < 4  # stopped mid-epoch, after a finished step

    assert main([*_args(data, tmp_path, "resumed", 2), "--ckpt", "last"]) == 0
    straight = _load(_run_dir(tmp_path, "straight") / "checkpoints" / "last.ckpt")
    resumed = _load(_run_dir(tmp_path, "resumed") / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    # same data order, prompts and dropout: the same loss at every step, 0 workers vs 2 workers + resume
    killed = _losses(_run_dir(tmp_path, "killed"))
    assert len(killed) == stopped["global_step"]
    assert {**killed, **_losses(_run_dir(tmp_path, "resumed"))} == _losses(_run_dir(tmp_path, "straight"))


@pytest.mark.slow
def test_kill_9_while_saving_leaves_only_whole_checkpoints(data: Path, tmp_path: Path) -> None:
    ckpts = _run_dir(tmp_path, "k9") / "checkpoints"
    extra = ("trainer.max_steps=30", "checkpoint.every_n_train_steps=1")
    cmd = [str(EXE), *_args(data, tmp_path, "k9", 0, *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert _wait_for("last.ckpt", ckpts, proc, timeout=120), proc.communicate()[1][-3000:]
        # a later save: kill it while its temporary file is being written
        writing = _wait_for(".*.tmp-*", ckpts, proc, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert writing, "no checkpoint save was caught in progress"
    found = sorted(ckpts.glob("*.ckpt"))
    assert "last.ckpt" in [p.name for p in found]
    for path in found:
        assert _load(path)["global_step"] >= 1, path


@pytest.mark.slow
def test_same_seed_same_losses_with_0_or_2_workers(data: Path, tmp_path: Path) -> None:
    for workers in (0, 2):
        assert main(_args(data, tmp_path, f"w{workers}", workers, "trainer.max_steps=3")) == 0
    zero, two = (_losses(_run_dir(tmp_path, f"w{w}")) for w in (0, 2))
    assert len(zero) == 3 and zero == two
