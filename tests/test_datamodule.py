"""SAM2LightningDataModule end to end: batches, layouts, determinism, worker errors, inspect-data."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch

from conftest import DEMO_CONFIG
from layouts import davis_to_coco, davis_to_per_object, davis_to_ytvos
from sam2train.batch import PROMPT_NONE, VideoBatch
from sam2train.cli import main
from sam2train.config import load_config
from sam2train.data.datamodule import SAM2LightningDataModule, open_split
from sam2train.data.demo import write_demo_dataset
from sam2train.errors import DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, videos=4, frames=8, size=(64, 96), objects=3, seed=1)
    return out


def _cfg(train: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.train_path={train}",
            "data.clip_length=3",
            "data.stride=2",
            "data.num_workers=0",
            "model.image_size=64",
            "data.max_objects=3",
            *extra,
        ],
    )


def _batches(cfg, n: int = 3, epoch: int = 0) -> list[VideoBatch]:
    dm = SAM2LightningDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_batches_have_the_contract_shapes(demo: Path) -> None:
    batch = _batches(_cfg(demo / "train", "data.batch_size=2", "prompts.type=mixed"), n=1)[0]
    b, t, n = batch.shape
    assert (b, t) == (2, 3) and 1 <= n <= 3
    assert batch.images.shape == (2, 3, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert batch.masks.shape == (2, 3, n, 64, 64) and set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.valid.shape == (2, 3, n) and batch.valid.dtype == torch.bool
    assert batch.ignore.shape == (2, 3, 64, 64)
    assert batch.prompts.kind.shape == (2, n) and batch.prompts.masks.shape == (2, n, 64, 64)
    # every valid object is non-empty and prompted on the first frame; padding is invalid and unprompted
    for bi in range(2):
        for ni in range(n):
            if batch.valid[bi, 0, ni]:
                assert batch.masks[bi, 0, ni].any() and batch.prompts.kind[bi, ni] != PROMPT_NONE
                assert batch.object_ids[bi, ni] > 0
            else:
                assert batch.prompts.kind[bi, ni] == PROMPT_NONE and batch.object_ids[bi, ni] == -1
    assert batch.orig_sizes.tolist() == [[64, 96]] * 2 and batch.num_video_frames.tolist() == [8, 8]
    assert all(name.startswith("demo_") for name in batch.video_names)


def test_same_seed_same_batches_with_zero_or_two_workers(demo: Path) -> None:
    a = _batches(_cfg(demo / "train", "data.num_workers=0"))
    b = _batches(_cfg(demo / "train", "data.num_workers=2"))
    for x, y in zip(a, b):
        assert x.video_names == y.video_names and torch.equal(x.frame_indices, y.frame_indices)
        assert torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks)
        assert torch.equal(x.prompts.kind, y.prompts.kind)
    other_epoch = _batches(_cfg(demo / "train"), epoch=1)
    assert any(not torch.equal(x.images, y.images) for x, y in zip(a, other_epoch))


def test_the_layouts_give_identical_samples(demo: Path, tmp_path: Path) -> None:
    import shutil

    per_object = davis_to_per_object(demo / "train", tmp_path / "per_object")
    shutil.copytree(demo / "train", tmp_path / "coco")
    coco = davis_to_coco(tmp_path / "coco", tmp_path / "coco" / "train.json")
    ytvos = davis_to_ytvos(demo / "train", tmp_path / "ytvos")  # frame numbers x5, the same annotated frames
    configs = [
        _cfg(path, "prompts.type=point", "prompts.num_neg_points=1")
        for path in (demo / "train", per_object, coco, ytvos)
    ]
    samples = [open_split(cfg, train=True)[1][i] for cfg in configs for i in (0, 5)]
    assert samples[-1].frame_indices.tolist() == [5 * i for i in samples[1].frame_indices.tolist()]
    for k in range(2):
        ref = samples[k]
        for other in samples[2 + k :: 2]:
            assert other.video_name == ref.video_name
            assert torch.equal(other.object_ids, ref.object_ids) and torch.equal(other.masks, ref.masks)
            assert torch.equal(other.images, ref.images)
            assert torch.equal(other.prompts.point_coords, ref.prompts.point_coords)
            assert torch.equal(other.prompts.point_labels, ref.prompts.point_labels)


def test_validation_is_whole_videos_with_mask_prompts(demo: Path) -> None:
    cfg = _cfg(demo / "train", f"data.val_path={demo / 'val'}", "prompts.type=point")
    dm = SAM2LightningDataModule(cfg)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 1 and batches[0].shape[:2] == (1, 8)
    assert (batches[0].prompts.kind == 0).all()  # prompts.val_type: mask
    again = list(dm.val_dataloader())
    assert torch.equal(again[0].images, batches[0].images)


def test_a_corrupt_frame_in_a_worker_names_the_file(demo: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo / "train", root)
    cfg = _cfg(root, "data.num_workers=2", "data.stride=1")
    dm = SAM2LightningDataModule(cfg)
    dm.setup("fit")
    victim = sorted((root / "JPEGImages").glob("*/00001.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after setup: found when a worker decodes it
    with pytest.raises(DataError) as err:
        for _ in dm.train_dataloader():
            pass
    # the traceback's frames hold the loader's iterator: left to the garbage collector, its workers are joined
    # after their queues are gone, 5 s of timeout each, charged to whichever later test collects it
    traceback.clear_frames(err.tb)
    assert victim.name in str(err.value) and victim.parent.name in str(err.value)


def test_setup_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        SAM2LightningDataModule(_cfg(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(DataError, match="data.train_path"):
        SAM2LightningDataModule(load_config(None, [])).setup("fit")


def test_inspect_data_prints_statistics_and_writes_a_sheet(demo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sheet.png"
    args = ["inspect-data", "--config", str(DEMO_CONFIG), f"data.train_path={demo / 'train'}"]
    args += ["--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "videos: 3" in printed and "annotated_frames: 24" in printed and "mask_area_percent" in printed
    from PIL import Image

    assert Image.open(out).size[0] > 3 * 64
