"""The demo dataset generator: layout, determinism, the motions it promises, and its argument checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2train.data.demo import MARKER, write_demo_dataset
from sam2train.viz import PALETTE

SMALL = {"videos": 2, "frames": 6, "size": (48, 64), "objects": 2}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


def _labels(video_dir: Path) -> np.ndarray:
    """[T, H, W] uint8 label maps of one video's annotations."""
    return np.stack([np.asarray(Image.open(f)) for f in sorted(video_dir.glob("*.png"))])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, write_demo_dataset(out)


@pytest.fixture(scope="module")
def demo_labels(demo: tuple[Path, dict]) -> dict[str, np.ndarray]:
    out, _ = demo
    return {d.name: _labels(d) for d in sorted(out.glob("*/Annotations/*"))}


def test_layout(demo: tuple[Path, dict]) -> None:
    out, summary = demo
    assert summary["train_videos"] == [f"demo_{i:03d}" for i in range(6)]
    assert summary["val_videos"] == ["demo_006", "demo_007"]
    assert summary["files"] == len(list(out.rglob("*.*")))
    for part in ("train", "val"):
        videos = sorted(p.name for p in (out / part / "JPEGImages").iterdir())
        assert videos == sorted(p.name for p in (out / part / "Annotations").iterdir())
        assert videos == summary[f"{part}_videos"]
        for name in videos:
            jpgs = sorted((out / part / "JPEGImages" / name).iterdir())
            pngs = sorted((out / part / "Annotations" / name).iterdir())
            assert [f.name for f in jpgs] == [f"{i:05d}.jpg" for i in range(24)]
            assert [f.stem for f in pngs] == [f.stem for f in jpgs]
            with Image.open(jpgs[0]) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 256))
            with Image.open(pngs[0]) as mask:
                assert mask.mode == "P"
                assert np.array_equal(np.asarray(mask.getpalette(), np.uint8).reshape(-1, 3), PALETTE)
                assert set(np.unique(np.asarray(mask))) == {0, 1, 2, 3}  # every object visible in frame 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["complete"] and marker["params"]["seed"] == 0


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _hashes(write_demo_dataset(tmp_path / "a", **SMALL)["root"])
    b = _hashes(write_demo_dataset(tmp_path / "b", **SMALL)["root"])
    c = _hashes(write_demo_dataset(tmp_path / "c", seed=1, **SMALL)["root"])
    assert len(a) == 2 * 2 * 6 + 1
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k != MARKER)


def test_an_object_leaves_the_frame_and_comes_back(demo_labels: dict[str, np.ndarray]) -> None:
    returns = []
    for name, labels in demo_labels.items():
        area = np.stack([(labels == k).sum(axis=(1, 2)) for k in (1, 2, 3)])  # [K, T]
        for k, a in enumerate(area):
            gone = np.nonzero(a == 0)[0]
            if len(gone) and a[0] > 0 and (a[gone[0] :] > 0).any():
                returns.append((name, k + 1))
    assert returns


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    return (ys.min(), xs.min(), ys.max(), xs.max()) if len(ys) else None


def test_objects_occlude_each_other(demo_labels: dict[str, np.ndarray]) -> None:
    occlusions = 0
    for labels in demo_labels.values():
        for frame in labels:
            boxes = [_bbox(frame == k) for k in (1, 2, 3)]
            for i in range(3):
                for j in range(i + 1, 3):
                    bi, bj = boxes[i], boxes[j]
                    if bi and bj and bi[0] <= bj[2] and bj[0] <= bi[2] and bi[1] <= bj[3] and bj[1] <= bi[3]:
                        occlusions += 1  # label maps make visible masks disjoint by construction
    assert occlusions > 0


def test_many_small_objects_all_visible_in_frame_0(tmp_path: Path) -> None:
    out = write_demo_dataset(tmp_path / "d", videos=1, frames=2, size=(40, 72), objects=20)["root"]
    labels = _labels(out / "train" / "Annotations" / "demo_000")
    assert set(np.unique(labels[0])) == set(range(21))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"videos": 0}, "videos"),
        ({"frames": 0}, "frames"),
        ({"objects": 0}, "objects"),
        ({"objects": 255}, "objects"),
        ({"objects": 2.0}, "objects"),
        ({"size": (0, 256)}, "size"),
        ({"size": (256,)}, "size"),
        ({"size": (16, 16), "objects": 20}, "size"),
        ({"seed": -1}, "seed"),
        ({"videos": 2, "val_videos": 2}, "val_videos"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        write_demo_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_split_defaults_and_single_video(tmp_path: Path) -> None:
    two = write_demo_dataset(tmp_path / "two", videos=2, frames=1, size=(32, 32), objects=1)
    assert (two["train_videos"], two["val_videos"]) == (["demo_000"], ["demo_001"])
    one = write_demo_dataset(tmp_path / "one", videos=1, frames=1, size=(32, 32), objects=1)
    assert (one["train_videos"], one["val_videos"]) == (["demo_000"], [])
    assert (tmp_path / "one" / "val" / "JPEGImages").is_dir()


def test_refuses_foreign_or_different_output(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="user"):
        write_demo_dataset(user, **SMALL)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]

    out = tmp_path / "demo"
    first = _hashes(write_demo_dataset(out, **SMALL)["root"])
    (out / "train" / "JPEGImages" / "demo_000" / "00000.jpg").unlink()  # an interrupted run is repaired
    assert _hashes(write_demo_dataset(out, **SMALL)["root"]) == first
    with pytest.raises(FileExistsError, match="seed=0"):
        write_demo_dataset(out, **{**SMALL, "seed": 3})
