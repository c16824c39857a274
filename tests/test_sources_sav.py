"""SA-V training JSONs against Meta's own reader (`JSONRawDataset` + `JSONSegmentLoader`): real SA-V keys,
manual vs automatic masklets, null rows, objects that appear later, and bad input."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from layouts import davis_to_sav, make_davis, rle, sav_like_meta
from sam2train.data.sources import open_source
from sam2train.data.sources.sav import SavSource
from sam2train.errors import DataError


def video(source, name):
    return next(v for v in source.videos if v.name == name)


@pytest.fixture
def sav(tmp_path: Path) -> tuple[Path, Path]:
    """(JSON folder, frames folder) as SA-V train after Meta's frame extraction: 9 frames at 24 fps, masklets
    every 4th frame (rows 0, 4, 8) in real SA-V JSONs; video1's object 3 appears on frame 2 (empty before)."""
    davis = make_davis(tmp_path / "d", n_videos=2, n_frames=9, unannotated=())
    full = davis_to_sav(davis, tmp_path / "full")
    gt, frames = tmp_path / "sav_train", tmp_path / "JPEGImages_24fps"
    gt.mkdir()
    for name in ("video0", "video1"):
        shutil.copytree(full / name, frames / name)
        masklet = json.loads((full / f"{name}_manual.json").read_text())["masklet"][::4]
        ids = list(range(len(masklet[0])))
        (gt / f"{name}_manual.json").write_text(json.dumps(sav_like_meta(masklet, ids)))
    return gt, frames


def _edit(path: Path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _meta_dataset(monkeypatch: pytest.MonkeyPatch):
    """Meta's `JSONRawDataset`; its module imports pandas, which it does not use for SA-V and we do not install."""
    try:
        importlib.import_module("pandas")
    except ModuleNotFoundError:
        monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    return importlib.import_module("training.dataset.vos_raw_dataset").JSONRawDataset


def _assert_like_meta(src: SavSource, gt: Path, frames: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same videos, same annotated frames and, for every masklet, the same mask as Meta's reader."""
    meta = _meta_dataset(monkeypatch)(img_folder=str(frames), gt_folder=str(gt), ann_every=4)
    assert meta.video_names == [v.name for v in src.videos]
    for idx, name in enumerate(meta.video_names):
        meta_video, loader = meta.get_video(idx)
        ours = video(src, name)
        assert [f.frame_idx for f in meta_video.frames] == [ours.frames[p].index for p in ours.annotated]
        ids = src._ids[name]
        for pos in ours.annotated:
            segments = loader.load(ours.frames[pos].index)
            fm = src.load_masks(ours, pos)
            assert sorted(segments) == list(range(len(ids)))
            for column, obj in enumerate(ids):
                assert np.array_equal(fm.get(obj), segments[column].numpy().astype(bool)), (name, pos, obj)


def test_real_sav_keys_match_meta_reader(sav, monkeypatch) -> None:
    gt, frames = sav
    src = open_source(gt, images_root=frames)
    assert isinstance(src, SavSource)
    later = video(src, "video1")
    assert [f.index for f in later.frames] == list(range(9)) and later.annotated == [0, 4, 8]
    assert later.object_ids == [1, 2, 3] and later.size == (64, 64)
    assert src.load_masks(later, 0).ids.tolist() == [1, 2]  # object 3 is an empty RLE before it appears
    assert src.load_masks(later, 4).ids.tolist() == [1, 2, 3]
    _assert_like_meta(src, gt, frames, monkeypatch)


def test_masklet_id_gives_the_object_ids(sav) -> None:
    gt, frames = sav
    _edit(gt / "video1_manual.json", lambda c: c.update(masklet_id=[4, 7, 9]))
    src = open_source(gt, images_root=frames)
    v = video(src, "video1")
    assert v.object_ids == [5, 8, 10] and src.load_masks(v, 4).ids.tolist() == [5, 8, 10]


def test_manual_json_is_read_when_auto_json_is_beside_it(sav, monkeypatch) -> None:
    gt, frames = sav
    for name in ("video0", "video1"):  # automatic masklets: other masks, another object count
        auto = json.loads((gt / f"{name}_manual.json").read_text())
        auto["masklet"] = [[rle(np.ones((64, 64), bool))] for _ in auto["masklet"]]
        auto.update(masklet_id=[0], masklet_type=["auto"])
        (gt / f"{name}_auto.json").write_text(json.dumps(auto))
    src = open_source(gt, images_root=frames)
    assert [v.object_ids for v in src.videos] == [[1, 2], [1, 2, 3]]
    _assert_like_meta(src, gt, frames, monkeypatch)  # Meta reads <video>_manual.json too

    shutil.copytree(frames / "video0", frames / "video2")
    shutil.copy(gt / "video0_auto.json", gt / "video2_auto.json")
    with pytest.warns(UserWarning, match=r"video2: only automatic masklets \(video2_auto\.json\)"):
        src = open_source(gt, images_root=frames)
    assert [v.name for v in src.videos] == ["video0", "video1"] and "video2" in src.skipped

    for p in gt.glob("*_manual.json"):
        p.unlink()
    with pytest.warns(UserWarning, match=r"no \*_manual\.json: reading the automatic masklets"):
        src = open_source(gt, images_root=frames)  # a folder of _auto.json only is detected as SA-V
    assert [v.object_ids for v in src.videos] == [[1]] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one file named explicitly: no warning
        (v,) = open_source(gt / "video2_auto.json", images_root=frames).videos
    assert v.name == "video2"


def test_null_rows_and_null_entries_are_unannotated_as_in_meta(sav, monkeypatch) -> None:
    gt, frames = sav

    def nulls(c: dict) -> None:
        c["masklet"][1][0] = None  # one masklet missing on frame 4: Meta drops the frame
        c["masklet"][2] = None

    _edit(gt / "video0_manual.json", nulls)
    src = open_source(gt, images_root=frames)
    assert video(src, "video0").annotated == [0]
    _assert_like_meta(src, gt, frames, monkeypatch)


def test_meta_loader_shapes_list_json_and_masks_key(sav) -> None:
    gt, frames = sav
    path = gt / "video1_manual.json"
    masklet = json.loads(path.read_text())["masklet"]
    path.write_text(json.dumps(masklet))  # a bare list of rows, without sizes: the RLEs give the size
    with pytest.raises(DataError, match="unknown JSON layout"):
        open_source(path, images_root=frames)
    (v,) = open_source(path, format="sav", images_root=frames).videos
    assert v.object_ids == [1, 2, 3] and v.annotated == [0, 4, 8]
    path.write_text(json.dumps({"masks": masklet, "fps": 6}))
    (v,) = open_source(path, format="sav", images_root=frames).videos
    assert v.annotated == [0, 4, 8]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(masklet_id=[0, 0]),
            r"'masklet_id' must list 2 distinct ints >= 0 \(one per masklet\)",
        ),
        (lambda c: c.update(masklet_id=[0]), r"'masklet_id' must list 2 distinct ints"),
        (lambda c: c.update(masklet_id=[-1, 0]), r"'masklet_id' must list 2 distinct ints"),
        (
            lambda c: c.update(video_height=64.5),
            r"'video_height' and 'video_width' must be whole numbers > 0",
        ),
        (lambda c: c.pop("video_width"), r"missing key 'video_width'"),
        (lambda c: c.update(masklet={"0": []}), r"'masklet' must be a list \(frames\) of lists \(objects\)"),
        (lambda c: c["masklet"][1].pop(), r"masklet\[1\] has 1 objects, the first annotated row has 2"),
        (lambda c: c.update(fps=5), r"'fps' must divide 24"),
    ],
)
def test_bad_input_names_the_file(sav, change, message) -> None:
    gt, frames = sav
    _edit(gt / "video0_manual.json", change)
    with pytest.raises(DataError, match=r"video0_manual\.json: " + message):
        open_source(gt, images_root=frames)


def test_rle_sizes_must_agree_without_video_size(sav) -> None:
    gt, frames = sav
    path = gt / "video0_manual.json"
    masklet = json.loads(path.read_text())["masklet"]
    masklet[2][1] = rle(np.zeros((64, 60), bool))
    path.write_text(json.dumps({"masklet": masklet}))
    with pytest.raises(
        DataError, match=r"masklet\[2\]\[1\]: RLE size \[64, 60\] is not the first RLE's size \[64, 64\]"
    ):
        open_source(gt, images_root=frames)
