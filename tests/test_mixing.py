"""Several training sources mixed by weight (`data.train`): per-epoch proportions, determinism, resume, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from conftest import DEFAULT_CONFIG, DEMO_CONFIG, fit_args
from layouts import davis_to_sav, davis_to_ytvos, make_davis
from sam2train.cli import main
from sam2train.config import load_config
from sam2train.data.datamodule import SAM2LightningDataModule, open_data
from sam2train.data.sampling import EpochSampler, MixedClips, apportion
from sam2train.errors import ConfigError, DataError


class Items(Dataset):
    """A stand-in for ClipDataset: item `epoch * size + i` -> (name, epoch, i)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: int) -> tuple[str, int, int]:
        draw, i = divmod(item, self.size)
        return self.name, draw, i


def _mix(sizes=(40, 10, 25), weights=(1.0, 2.0, 1.0), seed=0) -> MixedClips:
    names = [f"s{k}" for k in range(len(sizes))]
    return MixedClips([Items(n, s) for n, s in zip(names, sizes)], weights, seed, names)


def _epoch(mix: MixedClips, epoch: int) -> list[tuple[str, int, int]]:
    return [mix[epoch * len(mix) + k] for k in range(len(mix))]


def test_apportion_is_exact_and_sums_to_the_total() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [2, 1]) == [5, 2]
    assert apportion(75, [1.0, 2.0, 1.0]) == [19, 37, 19]
    assert apportion(6, [0.1, 0.2, 0.3]) == [1, 2, 3]  # no float rounding: 0.1 + 0.2 != 0.3 is harmless
    assert sum(apportion(1001, [0.3, 1e-3, 7])) == 1001


def test_each_epoch_draws_sources_in_proportion_to_weight() -> None:
    mix = _mix()
    assert len(mix) == 75 and mix.counts == [19, 37, 19] and mix.repeats == [1, 4, 1]
    for epoch in range(3):
        items = _epoch(mix, epoch)
        share = Counter(name for name, _, _ in items)
        for name, weight in zip(mix.names, (1, 2, 1)):
            assert abs(share[name] / len(items) - weight / 4) <= 1 / len(items)
        # a downsampled source: distinct windows; an upsampled one: every window 3 or 4 times
        s0 = [i for name, _, i in items if name == "s0"]
        assert len(set(s0)) == len(s0) == 19
        s1 = Counter(i for name, _, i in items if name == "s1")
        assert set(s1) == set(range(10)) and set(s1.values()) == {3, 4}
        # every entry is its own draw: no two read the same item of a part (the same clip and augmentation)
        assert len(set(items)) == len(items)


def test_draws_never_repeat_across_epochs_and_subsets_change() -> None:
    mix = _mix()
    seen = [set(_epoch(mix, e)) for e in range(4)]
    assert all(not (seen[a] & seen[b]) for a in range(4) for b in range(a + 1, 4))
    subsets = [frozenset(i for name, _, i in _epoch(mix, e) if name == "s0") for e in range(4)]
    assert len(set(subsets)) > 1
    covered = set().union(*subsets)
    assert len(covered) > 19  # later epochs reach the windows earlier ones left out


def test_the_mix_is_a_pure_function_of_seed_epoch_and_index() -> None:
    a, b = _mix(seed=3), _mix(seed=3)
    order = [7 * len(a) + k for k in (70, 3, 41, 0, 74)]
    assert [a[k] for k in order] == [b[k] for k in reversed(order)][::-1]  # any order, any instance
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(_mix(seed=4), 2) != _epoch(a, 2)


def test_one_source_is_the_source_alone() -> None:
    mix = MixedClips([Items("only", 12)], [0.5], seed=1, names=["only"])
    assert [mix[k] for k in range(36)] == [Items("only", 12)[k] for k in range(36)]


def test_a_starved_source_is_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"no clip in an epoch of 101: s1 \(weight 0\.001\)"):
        _mix(sizes=(100, 1), weights=(1.0, 0.001))


def test_sampler_resume_continues_the_same_mixed_epoch() -> None:
    mix = _mix()
    sampler = EpochSampler(len(mix), shuffle=True, seed=5, rank=1, world_size=2)
    sampler.set_epoch(3)
    whole = [mix[i] for i in sampler]
    sampler.consumed = 11
    resumed = EpochSampler(len(mix), shuffle=True, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(sampler.state_dict())
    fresh = _mix()  # a new process: nothing cached
    assert [fresh[i] for i in resumed] == whole[11:]


# ---------------------------------------------------------------------------------------------- datamodule
@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small sources in three formats: DAVIS (2 videos), YouTube-VOS (3), SA-V (1)."""
    root = tmp_path_factory.mktemp("mix")
    davis = make_davis(root / "davis", n_videos=2, n_frames=6, unannotated=())
    ytvos = davis_to_ytvos(make_davis(root / "d2", n_videos=3, n_frames=5, seed=2), root / "ytvos")
    sav = davis_to_sav(make_davis(root / "d3", n_videos=1, n_frames=8, unannotated=(), seed=3), root / "sav")
    return {"davis": davis, "ytvos": ytvos, "sav": sav}


def _train(sources: dict[str, Path], weights=(1.0, 1.0, 2.0), **edit) -> list[dict]:
    entries = [
        {"path": str(sources["davis"]), "weight": weights[0]},
        {"path": str(sources["ytvos"]), "format": "youtube_vos", "weight": weights[1], "name": "yt"},
        {"path": str(sources["sav"]), "weight": weights[2]},
    ]
    for i, change in edit.items():
        entries[int(i[1:])].update(change)
    return entries


def write_config(tmp_path: Path, train: list[dict], **data) -> Path:
    path = tmp_path / "mix.yaml"
    lines = ["data:", f"  train: {json.dumps(train)}"] + [f"  {k}: {json.dumps(v)}" for k, v in data.items()]
    lines += ["model:", "  image_size: 64"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(tmp_path: Path, train: list[dict], *extra: str):
    path = write_config(tmp_path, train, clip_length=2, stride=1, num_workers=0, max_objects=2)
    return load_config(path, list(extra))


def test_datamodule_mixes_every_source(sources, tmp_path) -> None:
    opened, mixed = open_data(_cfg(tmp_path, _train(sources)), train=True)
    assert [o.spec.name for o in opened] == ["davis", "yt", "sav"]
    assert [o.spec.key for o in opened] == ["data.train[0]", "data.train[1]", "data.train[2]"]
    assert isinstance(mixed, MixedClips) and mixed.sizes == [10, 9, 7] and len(mixed) == 26
    assert mixed.counts == [7, 6, 13]  # weights 1:1:2 of 26
    names = Counter(mixed[26 + k].video_name.startswith("video") for k in range(26))
    assert names[True] == 26  # every source's videos are video0..
    per_source = Counter(mixed.locate(26 + k)[0] for k in range(26))
    assert per_source == {0: 7, 1: 6, 2: 13}


def _first_batches(cfg, epoch: int, state: dict | None = None, n: int = 4) -> list:
    dm = SAM2LightningDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    if state is not None:
        loader.sampler.load_state_dict(state)
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _same(a, b) -> bool:
    return (
        a.video_names == b.video_names and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    )


def test_loader_is_deterministic_and_resumes_mid_epoch(sources, tmp_path) -> None:
    cfg = _cfg(tmp_path, _train(sources), "data.batch_size=2")
    straight = _first_batches(cfg, epoch=1)
    again = _first_batches(cfg, epoch=1)
    assert all(_same(a, b) for a, b in zip(straight, again))
    resumed = _first_batches(cfg, epoch=5, state={"epoch": 1, "consumed": 4}, n=2)  # 2 batches of 2 done
    assert all(_same(a, b) for a, b in zip(straight[2:], resumed))
    other = _first_batches(_cfg(tmp_path, _train(sources), "data.batch_size=2", "seed=1"), epoch=1)
    assert not all(_same(a, b) for a, b in zip(straight, other))


def test_a_bad_source_is_named(sources, tmp_path) -> None:
    missing = _train(sources, e1={"path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"data\.train\[1\] \(yt\): dataset path not found: .*nowhere"):
        open_data(_cfg(tmp_path, missing), train=True)
    short = _cfg(tmp_path, _train(sources), "data.clip_length=5")  # the YouTube-VOS videos have 4 masks each
    with pytest.raises(
        DataError, match=r"data\.train\[1\] \(yt\): no usable video in yt: every video has fewer"
    ):
        open_data(short, train=True)
    twins = _train(sources, e2={"name": "davis"})
    with pytest.raises(
        ConfigError, match=r"'data\.train\[0\]' and 'data\.train\[2\]' are both named 'davis'"
    ):
        open_data(_cfg(tmp_path, twins), train=True)
    with pytest.raises(
        ConfigError, match=r"'data\.train' and 'data\.train_path'/'data\.train_videos' are both set"
    ):
        open_data(_cfg(tmp_path, _train(sources), f"data.train_path={sources['davis']}"), train=True)
    with pytest.raises(DataError, match=r"data\.train\[1\] \(yt\): .*meta\.json: no video named 'nope'"):
        open_data(_cfg(tmp_path, _train(sources, e1={"videos": ["nope"]})), train=True)


def test_check_data_and_inspect_data_cover_every_source(sources, tmp_path, capsys) -> None:
    config = write_config(tmp_path, _train(sources), clip_length=2, stride=1)
    assert main(["check-data", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "train data.train[0] (davis): " in out and "train data.train[1] (yt): " in out
    assert "(youtube_vos, full decode): 3 videos" in out and "(sav, full decode): 1 video" in out
    assert "weight 2" in out and out.splitlines()[-1] == "0 errors, 0 warnings in 6 videos (35 frames)"

    sheet = tmp_path / "sheet.png"
    assert main(["inspect-data", "--config", str(config), "--out", str(sheet)]) == 0
    out = capsys.readouterr().out
    for line in ("train data data.train[0] (davis)", "train data data.train[2] (sav)", "clips per epoch: 26"):
        assert line in out
    assert "yt 6 (23.1%, 9 windows)" in out and sheet.is_file()


def test_check_data_names_the_bad_source(sources, tmp_path, capsys) -> None:
    bad = _train(sources, e1={"path": str(tmp_path / "nowhere")})
    assert main(["check-data", "--config", str(write_config(tmp_path, bad, clip_length=2))]) == 1
    out = capsys.readouterr().out
    assert "nowhere: dataset path not found (data.train[1] (yt))" in out


def test_fit_trains_on_mixed_sources_and_validates_on_youtube_vos(sources, tmp_path, capsys) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"base: {json.dumps(str(DEMO_CONFIG))}\n"
        "data:\n"
        "  train_path: null\n"
        f"  train: {json.dumps(_train(sources))}\n"
        f"  val_path: {json.dumps(str(sources['ytvos']))}\n"
        "  val_clip_length: 2\n"
        "  clip_length: 2\n"
        "  num_workers: 0\n"
    )
    extra = ("trainer.validate_first=false", "scheduler.warmup_steps=0")
    assert main(fit_args(tmp_path, *extra, config=config, clip_length=None, steps=2)) == 0
    assert (tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_mixed_run_resumed_mid_epoch_matches_an_uninterrupted_one(sources, tmp_path) -> None:
    config = tmp_path / "resume.yaml"
    config.write_text(
        f"base: {json.dumps(str(DEFAULT_CONFIG))}\n"
        "data:\n"
        f"  train: {json.dumps(_train(sources))}\n"
        "  clip_length: 2\n"
        "  stride: 1\n"
        "  num_workers: 0\n"
    )

    def fit(version: str, steps: int, *extra: str) -> dict:
        run = (f"trainer.max_steps={steps}", "trainer.deterministic=true", "checkpoint.every_n_train_steps=1")
        extra = (*run, "logging.loggers=[csv]", *extra)
        args = fit_args(tmp_path, *extra, config=config, clip_length=None, version=version)
        assert main(args) == 0
        last = tmp_path / "sam2train" / version / "checkpoints" / "last.ckpt"
        return torch.load(last, map_location="cpu", weights_only=True)

    straight = fit("straight", 4)
    stopped = fit("resumed", 2)
    assert stopped["global_step"] == 2  # an epoch here has 26 steps: stopped mid-epoch
    resumed = fit("resumed", 4, "--ckpt", "last")
    assert resumed["global_step"] == straight["global_step"] == 4
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
