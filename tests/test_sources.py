"""Dataset readers: real DAVIS data (../shared/data), synthetic data in every layout, every bad input."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, needs_shared_data
from layouts import davis_to_coco, davis_to_per_object, davis_to_sav, make_davis, rle, save_palette
from sam2train.data.sources import open_source
from sam2train.data.sources.coco_video import CocoVideoSource
from sam2train.data.sources.davis import DavisSource
from sam2train.data.sources.json_rle import rle_counts
from sam2train.data.sources.sav import SavSource
from sam2train.errors import DataError


def video(source, name):
    return next(v for v in source.videos if v.name == name)


# ---------------------------------------------------------------------------------------------- real data
@needs_shared_data
def test_davis2016_binary_masks_are_object_1():
    src = open_source(SHARED_DATA / "davis2016", videos=["blackswan"])
    assert isinstance(src, DavisSource) and src.resolution == "480p"
    (v,) = src.videos
    assert v.name == "blackswan" and v.object_ids == [1] and v.size == (480, 854)
    assert len(v) == 50 and v.annotated == list(range(50)) and v.frames[7].index == 7
    fm = src.load_masks(v, 0)
    assert fm.ids.tolist() == [1] and fm.masks.shape == (1, 480, 854) and fm.masks[0].any()
    assert not fm.void.any()  # 255 is the object in DAVIS-2016, not void
    img = src.load_image(v, 0)
    assert img.shape == (480, 854, 3) and img.dtype == np.uint8


@needs_shared_data
def test_davis2017_palette_void_and_annotations_without_frames():
    with pytest.warns(UserWarning, match=r"blackswan: annotations but no frames folder"):
        src = open_source(SHARED_DATA / "edge_cases" / "davis2017_interactive")
    assert [v.name for v in src.videos] == ["bear", "tennis"]
    assert "blackswan" in src.skipped
    tennis = video(src, "tennis")
    assert tennis.object_ids == [1, 2]
    fm = src.load_masks(tennis, 0)
    assert fm.ids.tolist() == [1, 2] and fm.void.any()
    assert not (fm.masks.any(0) & fm.void).any()


@needs_shared_data
def test_sparse_annotations_and_one_pixel_narrow_mask():
    with pytest.warns(UserWarning, match=r"judo.*00005\.png: mask is 853x480 but its frame is 854x480"):
        src = open_source(SHARED_DATA / "edge_cases" / "sparse_annotations")
    bike, judo = video(src, "bike"), video(src, "judo")
    assert len(bike) == 4 and bike.annotated == [0] and bike.object_ids == [1, 2]
    assert judo.annotated == [0, 5, 8, 13] and judo.object_ids == [1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already reported at setup: no second warning
        fm = src.load_masks(judo, 5)
    assert fm.ids.tolist() == [2] and fm.masks.shape == (1, 480, 854)
    assert src.load_masks(judo, 13).ids.tolist() == [4]
    with pytest.raises(DataError, match=r"judo: frame 00001\.jpg has no masks"):
        src.load_masks(judo, 1)


# ---------------------------------------------------------------------------------------------- layouts
@pytest.fixture
def davis(tmp_path: Path) -> Path:
    return make_davis(tmp_path / "davis")


def _dump(src) -> list:
    out = []
    for v in src.videos:
        frames = [(f.index, f.image.name, f.annotated) for f in v.frames]
        masks = [src.load_masks(v, p) for p in v.annotated]
        out.append((v.name, v.size, v.object_ids, frames, [(m.ids.tolist(), m.masks, m.void) for m in masks]))
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for va, vb in zip(a, b):
        assert va[:4] == vb[:4]
        for (ia, ma, da), (ib, mb, db) in zip(va[4], vb[4]):
            assert ia == ib and np.array_equal(ma, mb) and np.array_equal(da, db)


def test_same_video_in_every_layout(davis: Path, tmp_path: Path):
    palette = open_source(davis)
    assert [v.object_ids for v in palette.videos] == [[1, 2], [1, 2, 3]]
    assert palette.videos[0].annotated == [0, 1, 2, 4]
    ref = _dump(palette)
    per_object = open_source(davis_to_per_object(davis, tmp_path / "per_object"))
    coco = open_source(davis_to_coco(davis, davis / "coco.json"))
    coco_raw = open_source(davis_to_coco(davis, davis / "coco_raw.json", uncompressed=True))
    sav = open_source(davis_to_sav(davis, tmp_path / "sav"))
    assert isinstance(coco, CocoVideoSource) and isinstance(sav, SavSource)
    for other in (per_object, coco, coco_raw, sav):
        _assert_same(ref, _dump(other))
        np.testing.assert_array_equal(
            palette.load_image(palette.videos[1], 2), other.load_image(other.videos[1], 2)
        )


def test_per_object_zero_based_folders_shift_ids(davis: Path, tmp_path: Path):
    src = DavisSource(davis_to_per_object(davis, tmp_path / "sav_val", zero_based=True))
    assert src.object_id_offset == 1 and [v.object_ids for v in src.videos] == [[1, 2], [1, 2, 3]]
    _assert_same(_dump(open_source(davis)), _dump(src))


def test_void_and_pickle(tmp_path: Path):
    src = open_source(make_davis(tmp_path / "d", void=True))
    fm = src.load_masks(src.videos[0], 0)
    assert fm.void[:, :2].all() and not fm.void[:, 2:].any() and fm.ids.tolist() == [1, 2]
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(clone.load_masks(clone.videos[0], 0).masks, fm.masks)


def test_resolution_subfolders(davis: Path, tmp_path: Path):
    root = tmp_path / "res"
    for res in ("480p", "Full-Resolution"):
        for sub in ("JPEGImages", "Annotations"):
            shutil.copytree(davis / sub, root / sub / res)
    assert DavisSource(root).resolution == "480p"
    assert DavisSource(root, resolution="Full-Resolution").image_root.name == "Full-Resolution"
    shutil.rmtree(root / "JPEGImages" / "480p")
    assert open_source(root).resolution == "Full-Resolution"


def test_sav_every_fourth_frame(tmp_path: Path):
    make_davis(tmp_path / "d", n_videos=1, n_frames=9, unannotated=())
    sav = davis_to_sav(tmp_path / "d", tmp_path / "sav")
    path = sav / "video0_manual.json"
    content = json.loads(path.read_text())
    del content["fps"]  # default: annotations every 4th frame
    content["masklet"] = content["masklet"][::4]
    path.write_text(json.dumps(content))
    src = open_source(path)
    (v,) = src.videos
    assert v.annotated == [0, 4, 8] and len(v) == 9 and v.object_ids == [1, 2]
    assert src.load_masks(v, 4).ids.tolist() == [1, 2]
    assert pickle.loads(pickle.dumps(src))._cache is None


def test_coco_polygons_categories_and_or(tmp_path: Path):
    make_davis(tmp_path, n_videos=1, n_frames=2, unannotated=())
    images = [
        {"id": i + 10, "file_name": f"JPEGImages/video0/{i:05d}.jpg", "video_id": 7, "order_in_video": i}
        for i in range(2)
    ]
    left, right = [0, 0, 10, 0, 10, 10, 0, 10], [20, 0, 30, 0, 30, 10, 20, 10]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 3, "segmentation": [left]},
        {"id": 2, "image_id": 10, "category_id": 3, "segmentation": [right]},
    ]
    path = tmp_path / "poly.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    src = open_source(path)
    (v,) = src.videos
    assert v.name == "7" and v.object_ids == [3] and v.annotated == [0]
    fm = src.load_masks(v, 0)
    assert fm.ids.tolist() == [3] and fm.masks[0, 5, 5] and fm.masks[0, 5, 25] and not fm.masks[0, 5, 15]


def test_rle_counts_matches_pycocotools():
    mask = np.zeros((40, 30), dtype=bool)
    mask[3:25, 7:29] = True
    runs = rle_counts(rle(mask)["counts"])
    assert sum(runs) == mask.size and sum(runs[1::2]) == mask.sum()


# ---------------------------------------------------------------------------------------------- bad input
def _coco(tmp_path: Path, edit) -> Path:
    make_davis(tmp_path / "d", n_videos=1, n_frames=3, unannotated=())
    path = davis_to_coco(tmp_path / "d", tmp_path / "d" / "c.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_missing_paths(tmp_path: Path):
    with pytest.raises(DataError, match="dataset path not found: .*nowhere"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.JPEGImages"):
        open_source(tmp_path / "empty")
    with pytest.raises(DataError, match="JSON file not found: .*x.json"):
        CocoVideoSource(tmp_path / "x.json")
    with pytest.raises(DataError, match="SA-V JSON or folder not found"):
        SavSource(tmp_path / "y.json")


def test_unknown_video_names_closest(davis: Path):
    with pytest.raises(DataError, match=r"no video named 'vidoe1'; did you mean 'video1'"):
        open_source(davis, videos=["vidoe1"])


def test_mask_without_frame_and_bad_headers(davis: Path):
    save_palette(davis / "Annotations" / "video0" / "00009.png", np.ones((64, 64), np.uint8))
    with pytest.raises(DataError, match=r"00009\.png has no frame"):
        open_source(davis)
    (davis / "Annotations" / "video0" / "00009.png").unlink()
    (davis / "JPEGImages" / "video1" / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read frame .*video1.00002\.jpg"):
        open_source(davis)


def test_truncated_image_fails_at_load(davis: Path):
    path = davis / "JPEGImages" / "video0" / "00001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = open_source(davis)  # the header is intact
    with pytest.raises(DataError, match=r"cannot read image .*video0.00001\.jpg"):
        src.load_image(src.videos[0], 1)


def test_mask_size_mismatch(davis: Path):
    save_palette(davis / "Annotations" / "video1" / "00000.png", np.ones((64, 60), np.uint8))
    with pytest.raises(DataError, match=r"video1.00000\.png: mask is 60x64 but its frame is 64x64"):
        open_source(davis)


def test_frames_of_different_sizes_and_bad_mask_mode(davis: Path):
    Image.new("RGB", (64, 32)).save(davis / "JPEGImages" / "video0" / "00004.jpg")
    with pytest.raises(DataError, match=r"video0.00004\.jpg is 64x32"):
        open_source(davis)
    Image.new("RGB", (64, 64)).save(davis / "JPEGImages" / "video0" / "00004.jpg")
    Image.new("RGB", (64, 64)).save(davis / "Annotations" / "video0" / "00004.png")
    with pytest.raises(DataError, match=r"video0.00004\.png has mode RGB"):
        open_source(davis)


def test_videos_without_objects_skipped_in_one_warning(davis: Path, tmp_path: Path):
    for p in (davis / "Annotations" / "video0").glob("*.png"):
        save_palette(p, np.zeros((64, 64), np.uint8))
    shutil.copytree(davis / "JPEGImages" / "video1", davis / "JPEGImages" / "video2")
    with pytest.warns(
        UserWarning, match=r"skipped 2 video\(s\): video0: no object.*video2: no annotation folder"
    ):
        src = open_source(davis)
    assert [v.name for v in src.videos] == ["video1"] and set(src.skipped) == {"video0", "video2"}
    shutil.rmtree(davis / "Annotations" / "video1")
    with pytest.raises(DataError, match="no usable video.*video1: no annotation folder"):
        open_source(davis)


def test_unknown_json(tmp_path: Path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(DataError, match=r"other\.json: unknown JSON layout"):
        open_source(path)
    path.write_text("{broken")
    with pytest.raises(DataError, match=r"other\.json: not valid JSON"):
        open_source(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][1].pop("video_id"), r"c\.json: images\[1\] \(id=2\): missing key 'video_id'"),
        (
            lambda d: d["annotations"][2].pop("image_id"),
            r"c\.json: annotations\[2\] \(id=3\): missing key 'image_id'",
        ),
        (
            lambda d: d["annotations"][0]["segmentation"].update(counts="#bad"),
            r"annotations\[0\] \(id=1\): malformed RLE",
        ),
        (
            lambda d: d["annotations"][1]["segmentation"].update(counts=[1, 2, 3]),
            r"annotations\[1\] \(id=2\): malformed RLE: runs must be ints",
        ),
        (
            lambda d: d["annotations"][0]["segmentation"].update(size=[64, 50]),
            r"annotations\[0\] \(id=1\), frame .*00000\.jpg: mask is 50x64",
        ),
        (
            lambda d: d["annotations"][0].update(image_id=99),
            r"annotations\[0\] \(id=1\): image_id 99 is not in 'images'",
        ),
        (lambda d: d["images"][0].update(file_name="gone.jpg"), r"frame file not found: .*gone\.jpg"),
        (
            lambda d: d["images"][1].update(order_in_video=0),
            r"video video0: images 1 and 2 share order_in_video",
        ),
    ],
)
def test_coco_bad_input_names_the_entry(tmp_path: Path, edit, message):
    with pytest.raises(DataError, match=message):
        open_source(_coco(tmp_path, edit))


def test_coco_rle_broken_inside_fails_at_load(tmp_path: Path):
    path = _coco(tmp_path, lambda d: d["annotations"][0]["segmentation"].update(counts="0000"))
    src = open_source(path)  # the schema is fine; the runs are checked when decoded
    with pytest.raises(DataError, match=r"c\.json: annotations\[0\] \(id=1\): malformed RLE: runs sum to 0"):
        src.load_masks(src.videos[0], 0)


def test_sav_bad_input(davis: Path, tmp_path: Path):
    sav = davis_to_sav(davis, tmp_path / "sav")
    path = sav / "video0_manual.json"
    content = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in content.items() if k != "video_height"}))
    with pytest.raises(DataError, match=r"video0_manual\.json: missing key 'video_height'"):
        open_source(path)
    content["masklet"][1][0]["counts"] = 5
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"video0_manual\.json: masklet\[1\]\[0\]: malformed RLE"):
        open_source(path, format="sav")
    content["masklet"][1][0] = rle(np.zeros((64, 64), bool))
    path.write_text(json.dumps(content))
    (sav / "video0" / "00002.jpg").unlink()
    with pytest.raises(
        DataError, match=r"masklet\[2\] annotates frame 2, but .*video0.00002\.jpg is missing"
    ):
        open_source(sav)
    shutil.rmtree(sav / "video0")
    with pytest.warns(UserWarning, match=r"video0: no frames folder"):
        src = open_source(sav)
    assert [v.name for v in src.videos] == ["video1"]


def test_grayscale_label_masks_and_binary_masks(davis: Path):
    # mode L: values other than 0/255 are ids (255 void); a video with only 0/255 is binary: 255 is object 1
    for p in (davis / "Annotations" / "video0").glob("*.png"):
        labels = np.array(Image.open(p))
        Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), mode="L").save(p)
    for p in (davis / "Annotations" / "video1").glob("*.png"):
        labels = np.array(Image.open(p))
        labels[0, :] = 255
        Image.fromarray(labels, mode="L").save(p)
    src = open_source(davis)
    binary, labelled = src.videos
    assert binary.object_ids == [1] and labelled.object_ids == [1, 2, 3]
    fm = src.load_masks(binary, 0)
    assert fm.ids.tolist() == [1] and not fm.void.any()
    fm = src.load_masks(labelled, 2)
    assert fm.ids.tolist() == [1, 2, 3] and fm.void[0].all() and not fm.void[1:].any()


def test_unreadable_mask_names_the_file(davis: Path):
    (davis / "Annotations" / "video1" / "00001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"cannot read mask .*video1.00001\.png"):
        open_source(davis)


def test_coco_zero_track_ids_shift_and_instance_id(tmp_path: Path):
    def to_instance_zero_based(d):
        for a in d["annotations"]:
            a["instance_id"] = a.pop("track_id") - 1

    src = open_source(_coco(tmp_path, to_instance_zero_based))
    assert src.object_id_offset == 1 and src.videos[0].object_ids == [1, 2]


def test_bad_arguments(davis: Path):
    with pytest.raises(DataError, match="unknown data format 'yolo'"):
        open_source(davis, format="yolo")
    with pytest.raises(DataError, match="images_root applies to JSON formats only"):
        open_source(davis, images_root=davis)
    with pytest.raises(DataError, match=r"no resolution subfolders, but resolution '480p'"):
        DavisSource(davis, resolution="480p")


def test_the_registry_and_the_config_name_the_same_formats():
    from sam2train.config import DATA_FORMATS
    from sam2train.data.sources import READERS

    assert tuple(READERS) == DATA_FORMATS
