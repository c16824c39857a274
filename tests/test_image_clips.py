"""Images made clips (`data.image_clip`: single, repeat, pseudo_video), mixed with videos in one run: shapes,
determinism per seed, rectangular batches, a 2-step fit and inspect-data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import DEMO_CONFIG, fit_args
from layouts import make_davis
from sam2train.batch import collate_videos
from sam2train.cli import main
from sam2train.config import load_config
from sam2train.data.datamodule import open_data
from sam2train.data.pseudo_video import pseudo_video
from sam2train.data.sampling import EpochSampler
from test_sources_images import to_image_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image_clips")
    davis = make_davis(root / "davis", n_frames=6, unannotated=())
    return {"davis": davis, "images": to_image_folder(davis, root / "images")}


def _cfg(*over: str):
    return load_config(
        DEMO_CONFIG, ["model.image_size=64", "data.val_path=null", "data.num_workers=0", *over]
    )


def _images(data, mode: str, *over: str):
    cfg = _cfg(f"data.train_path={data['images']}", f"data.image_clip={mode}", "data.clip_length=3", *over)
    return open_data(cfg, train=True)[1]


@pytest.mark.parametrize(("mode", "frames"), [("single", 1), ("repeat", 3), ("pseudo_video", 3)])
def test_clip_shapes_and_determinism_per_seed(data, mode, frames) -> None:
    ds = _images(data, mode)
    assert len(ds) == 12  # one window per annotated image
    a, b = ds[5], ds[5]
    k = a.masks.shape[1]
    assert a.images.shape == (frames, 3, 64, 64) and a.images.dtype == torch.uint8
    assert a.masks.shape == (frames, k, 64, 64) and a.ignore.shape == (frames, 64, 64) and k >= 1
    assert a.frame_indices.tolist() == list(range(frames)) and a.num_video_frames == frames
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and a.seed == b.seed
    assert not torch.equal(ds[5].images, ds[len(ds) + 5].images)  # the next epoch draws again
    other = _images(data, mode, "seed=1")
    assert not torch.equal(other[5].images, a.images)


def test_repeat_augments_each_copy_and_pseudo_video_moves_the_objects(data) -> None:
    still = _images(data, "repeat", "data.augment=false")[3]
    assert all(torch.equal(still.images[t], still.images[0]) for t in range(3))
    moved = _images(data, "repeat")[3]
    assert not torch.equal(moved.images[1], moved.images[0])  # Meta's per-frame augmentation
    clip = _images(data, "pseudo_video", "data.augment=false")[3]
    assert torch.equal(clip.images[0], still.images[0]) and torch.equal(clip.masks[0], still.masks[0])
    assert not torch.equal(clip.masks[2], clip.masks[0])


def test_pseudo_video_is_smooth_occludes_and_is_seeded() -> None:
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 20:44, 20:44] = True
    void = torch.zeros(64, 64, dtype=torch.bool)
    void[:, :3] = True
    frames, clip, holes = pseudo_video(image, masks, void, 5, torch.Generator().manual_seed(0))
    assert frames.shape == (5, 3, 64, 64) and clip.shape == (5, 2, 64, 64) and holes.shape == (5, 64, 64)
    assert torch.equal(frames[0], image) and holes[0].equal(void & ~masks.any(0))
    assert not (clip[:, 0] & clip[:, 1]).any()  # a pixel belongs to one object: the upper one occludes
    assert (clip[0].sum((1, 2)) < masks.sum((1, 2))).any()  # the overlap went to the upper object
    centres = [torch.nonzero(clip[t, 1]).float().mean(0) for t in range(5)]
    steps = [float((centres[t + 1] - centres[t]).norm()) for t in range(4)]
    assert max(steps) < 12 and sum(steps) > 0.5  # it moves, a little each frame
    again = pseudo_video(image, masks, void, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((frames, clip, holes), again))
    other = pseudo_video(image, masks, void, 5, torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], frames)


def test_the_sampler_keeps_each_batch_one_clip_length_on_every_rank() -> None:
    groups = [1] * 7 + [3] * 12
    lengths = []
    for rank in range(2):
        sampler = EpochSampler(
            len(groups), True, seed=0, rank=rank, world_size=2, groups=groups, batch_size=2
        )
        order = list(sampler)
        assert len(order) == len(sampler) == 10  # 7 -> 8 and 12 -> 12, over 2 ranks
        batches = [[groups[i % len(groups)] for i in order[b : b + 2]] for b in range(0, len(order), 2)]
        assert all(len(set(b)) == 1 for b in batches)
        lengths.append([b[0] for b in batches])
        sampler.load_state_dict({"epoch": 0, "consumed": 4})
        assert list(sampler) == order[4:]
    assert lengths[0] == lengths[1] and Counter(lengths[0]) == {1: 2, 3: 3}
    plain = EpochSampler(19, True, seed=0, groups=[3] * 19, batch_size=2)
    assert list(plain) == list(EpochSampler(19, True, seed=0))  # one length: today's order


def _mixed(data, mode: str) -> list[dict]:
    return [
        {"path": str(data["davis"]), "format": "davis", "name": "videos"},
        {"path": str(data["images"]), "weight": 0.5, "name": "images"},
    ]


def test_mixed_single_images_and_videos_make_rectangular_batches(data) -> None:
    cfg = _cfg(
        "data.train_path=null",
        f"data.train={json.dumps(_mixed(data, 'single'))}",
        "data.clip_length=2",
        "data.stride=1",
        "data.image_clip=single",
        "data.batch_size=2",
    )
    dataset = open_data(cfg, train=True)[1]
    sampler = EpochSampler(len(dataset), True, 0, groups=dataset.clip_lengths(), batch_size=2)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate_videos)
    shapes = Counter(batch.images.shape[1] for batch in loader)  # collate refuses mixed lengths
    assert set(shapes) == {1, 2} and sum(shapes.values()) == len(sampler) // 2


def test_fit_on_images_and_videos_then_inspect_a_pseudo_video(data, tmp_path, capsys) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"base: {json.dumps(str(DEMO_CONFIG))}\n"
        "data:\n"
        "  train_path: null\n"
        f"  train: {json.dumps(_mixed(data, 'single'))}\n"
        f"  val_path: {json.dumps(str(data['davis']))}\n"
        "  val_clip_length: 3\n"
        "  image_clip: single\n"
        "  batch_size: 2\n"
        "  stride: 1\n"
    )
    extra = ("trainer.validate_first=false", "scheduler.warmup_steps=0")
    assert main(fit_args(tmp_path, *extra, config=config, clip_length=2, steps=2)) == 0
    assert (tmp_path / "demo" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    # the two steps trained a batch of videos and one of one-frame images (prompted with a box, not its mask)
    cfg = load_config(config, ["data.clip_length=2"])
    dataset = open_data(cfg, train=True)[1]
    lengths = dataset.clip_lengths()
    order = list(EpochSampler(len(dataset), True, cfg.seed, groups=lengths, batch_size=2))
    assert {lengths[i] for i in order[:4]} == {1, 2}
    sheet = tmp_path / "sheet.png"
    args = ["inspect-data", "--config", str(config), "--out", str(sheet), "data.image_clip=pseudo_video"]
    assert main([*args, "data.clip_length=3", "model.image_size=64"]) == 0
    out = capsys.readouterr().out
    assert "train data data.train[1] (images)" in out and sheet.is_file()
    assert "images made clips of 3 frame(s): pseudo_video (data.image_clip)" in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:model.checkpoint is null:UserWarning")
def test_image_pretraining_benchmark_runs_both_arms_at_a_toy_budget(shared_data, tmp_path) -> None:
    """benchmarks/image_pretraining.py end to end: 2 steps per arm at 128 px, 1 held-out sequence, 4 frames."""
    import importlib.util

    import yaml

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "image_pretraining", REPO / "benchmarks" / "image_pretraining.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(
        [
            *(
                "--steps",
                "2",
                "--every",
                "1",
                "--image-size",
                "128",
                "--frames-limit",
                "4",
                "--heldout",
                "libby",
            ),
            *(
                "--data",
                str(shared_data / "davis2016"),
                "--out-dir",
                str(tmp_path),
                "--run-root",
                str(tmp_path),
            ),
            *("data.num_workers=0", "data.val_clip_length=4", "trainer.limit_val_batches=1"),
            *("checkpoint.save_last=false", "logging.progress_bar=none", "logging.viz_every_n_epochs=0"),
            "checkpoint.monitor=train/total",  # saved every step, before any validation
        ]
    )
    result = json.loads(out.read_text())
    assert result["images"] == 878 and result["weight"] == 0.5 and result["image_clip"] == "pseudo_video"
    for arm in ("video", "video_images"):
        entry = result["arms"][arm]
        assert [c["step"] for c in entry["checkpoints"]] == [1, 2] and entry["mean_last_two"]["steps"] == [
            1,
            2,
        ]
        assert 0.0 <= entry["mean_last_two"]["heldout"] <= 1.0
    mixed = yaml.safe_load(Path(result["arms"]["video_images"]["run_dir"], "config.yaml").read_text())
    assert mixed["data"]["train"][1]["weight"] == 0.5
    diff = (
        result["arms"]["video_images"]["mean_last_two"]["heldout"]
        - result["arms"]["video"]["mean_last_two"]["heldout"]
    )
    assert result["difference"] == pytest.approx(diff, abs=1e-6)


def test_one_frame_image_clips_tell_ddp_that_memory_may_go_unused(tmp_path) -> None:
    from sam2train.train.trainer import resolve_strategy

    over = [
        f"logging.root_dir={tmp_path}",
        "trainer.strategy=ddp",
        "model.trainable_modules=[memory_attention]",
    ]
    assert resolve_strategy(load_config(DEMO_CONFIG, over))._ddp_kwargs["find_unused_parameters"] is False
    single = load_config(DEMO_CONFIG, [*over, "data.image_clip=single"])
    assert resolve_strategy(single)._ddp_kwargs["find_unused_parameters"] is True
