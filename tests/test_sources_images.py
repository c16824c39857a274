"""Image sources (`coco_images`, `sa1b`, `image_folder`), DAVIS layout names (`data.images_dir` / `data.masks_dir`)
and every bad input of the image readers, on tiny files written here from one DAVIS dataset."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import DEMO_CONFIG
from layouts import make_davis, save_palette
from sam2train.config import load_config
from sam2train.data.check import ERROR, INFO, WARNING, check_sources
from sam2train.data.sources import ReadOptions, detect_format, open_source
from sam2train.data.sources.coco_images import CocoImageSource
from sam2train.data.sources.davis import DavisSource
from sam2train.data.sources.image_folder import ImageFolderSource
from sam2train.data.sources.sa1b import Sa1bSource
from sam2train.errors import DataError


def _frames(davis: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(name `<video>_<stem>`, frame file, label array) of every annotated frame of a flat DAVIS dataset."""
    out = []
    for vdir in sorted((davis / "JPEGImages").iterdir()):
        for png in sorted((davis / "Annotations" / vdir.name).glob("*.png")):
            out.append((f"{vdir.name}_{png.stem}", vdir / f"{png.stem}.jpg", np.array(Image.open(png))))
    return out


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def to_image_folder(davis: Path, dst: Path) -> Path:
    for name, frame, labels in _frames(davis):
        (dst / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(frame, dst / "images" / f"{name}.jpg")
        save_palette(dst / "masks" / f"{name}.png", labels)
    return dst


def to_coco_images(davis: Path, dst: Path) -> Path:
    """COCO JSON whose annotations list each frame's objects in id order (so ids 1..K are the palette's)."""
    images, anns = [], []
    for i, (_name, frame, labels) in enumerate(_frames(davis)):
        h, w = labels.shape
        images.append(
            {"id": i + 1, "file_name": f"{frame.parent.name}/{frame.name}", "height": h, "width": w}
        )
        for obj in sorted(set(np.unique(labels).tolist()) - {0, 255}):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "segmentation": _rle(labels == obj), "iscrowd": 0}
            )
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    return dst


def to_sa1b(davis: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name, frame, labels in _frames(davis):
        shutil.copy(frame, dst / f"{name}.jpg")
        anns = [
            {
                "id": obj * 10,
                "segmentation": _rle(labels == obj),
                "area": int((labels == obj).sum()),
                "predicted_iou": 0.9,
                "stability_score": 0.95,
            }
            for obj in sorted(set(np.unique(labels).tolist()) - {0, 255})
        ]
        h, w = labels.shape
        image = {"image_id": 1, "file_name": f"{name}.jpg", "height": h, "width": w}
        (dst / f"{name}.json").write_text(json.dumps({"image": image, "annotations": anns}))
    return dst


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_davis(tmp_path_factory.mktemp("davis"), void=False)


def _convert(kind: str, davis: Path, tmp: Path) -> tuple[Path, dict]:
    if kind == "coco_images":
        return to_coco_images(davis, tmp / "coco.json"), {"images_root": davis / "JPEGImages"}
    if kind == "sa1b":
        return to_sa1b(davis, tmp / "sa1b"), {}
    return to_image_folder(davis, tmp / "folder"), {}


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("coco_images", CocoImageSource), ("sa1b", Sa1bSource), ("image_folder", ImageFolderSource)],
)
def test_each_image_reader_gives_the_davis_masks(kind, cls, davis, tmp_path) -> None:
    path, options = _convert(kind, davis, tmp_path)
    assert detect_format(path)[0] == kind
    src = open_source(path, **options)
    assert isinstance(src, cls) and src.still_images
    ref = DavisSource(davis)
    expected = {f"{v.name}_{v.frames[p].image.stem}": (v, p) for v in ref.videos for p in v.annotated}
    names = {Path(v.name).stem if kind == "coco_images" else v.name for v in src.videos}
    assert len(src.videos) == len(expected) == 8
    for image in src.videos:
        key = image.name.replace("/", "_").removesuffix(".jpg")
        video, pos = expected[key]
        want = ref.load_masks(video, pos)
        got = src.load_masks(image, 0)
        assert len(image.frames) == 1 and image.frames[0].annotated and image.size == video.size
        assert got.ids.tolist() == want.ids.tolist() == image.object_ids
        assert np.array_equal(got.masks, want.masks) and not got.void.any()
        assert np.array_equal(src.load_image(image, 0), ref.load_image(video, pos))
        part = src.load_objects(image, [image.object_ids[-1]])
        assert part.ids.tolist() == [image.object_ids[-1]]
        assert np.array_equal(part.masks[0], want.masks[-1])
    assert names


def test_coco_crowd_annotations_are_void_not_objects(davis, tmp_path) -> None:
    path = to_coco_images(davis, tmp_path / "coco.json")
    data = json.loads(path.read_text())
    h, w = 64, 64
    crowd = np.zeros((h, w), bool)
    crowd[50:60, 50:60] = True
    flat = crowd.flatten(order="F").astype(int)
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    runs = {
        "size": [h, w],
        "counts": counts if flat[0] == 0 else [0, *counts],
    }  # uncompressed, as COCO crowds
    data["annotations"].append({"id": 999, "image_id": 1, "segmentation": runs, "iscrowd": 1})
    # a polygon object (COCO's usual form) on image 2
    data["annotations"].append(
        {"id": 1000, "image_id": 2, "segmentation": [[40, 40, 60, 40, 60, 60, 40, 60]]}
    )
    path.write_text(json.dumps(data))
    src = open_source(path, images_root=davis / "JPEGImages")
    first = next(v for v in src.videos if v.name == "video0/00000.jpg")
    fm = src.load_masks(first, 0)
    assert first.object_ids == [1, 2] and np.array_equal(fm.void, crowd & ~fm.masks.any(0))
    second = next(v for v in src.videos if v.name == "video0/00001.jpg")
    assert second.object_ids == [1, 2, 3] and src.load_masks(second, 0).masks[2][45, 45]


def test_sa1b_thresholds_leave_annotations_out(davis, tmp_path) -> None:
    root = to_sa1b(davis, tmp_path / "sa1b")
    js = root / "video1_00002.json"
    data = json.loads(js.read_text())
    data["annotations"][0]["predicted_iou"] = 0.5
    data["annotations"][1]["stability_score"] = 0.5
    js.write_text(json.dumps(data))
    both = ReadOptions(min_predicted_iou=0.8, min_stability_score=0.8)
    (image,) = open_source(root, videos=["video1_00002"], options=both).videos
    assert image.object_ids == [1]  # only the third annotation is left, renumbered
    src = open_source(root, videos=["video1_00002"])
    assert src.videos[0].object_ids == [1, 2, 3]
    tiny = ReadOptions(max_area_fraction=0.01)
    with pytest.raises(DataError, match="no usable image .*3 images with no annotation above the thresholds"):
        open_source(root, videos=["video1_00002", "video0_00000", "video0_00001"], options=tiny)


def test_image_folder_reads_binary_masks_and_void(davis, tmp_path) -> None:
    root = to_image_folder(davis, tmp_path / "folder")
    labels = np.zeros((64, 64), np.uint8)
    labels[10:20, 10:20] = 255
    Image.fromarray(labels, mode="L").save(root / "masks" / "video0_00000.png")  # 0/255: object 1
    pal = np.array(Image.open(root / "masks" / "video0_00001.png"))
    pal[:, :2] = 255
    save_palette(root / "masks" / "video0_00001.png", pal)  # palette: 255 is void
    src = open_source(root)
    by_name = {v.name: v for v in src.videos}
    fm = src.load_masks(by_name["video0_00000"], 0)
    assert fm.ids.tolist() == [1] and fm.masks[0].sum() == 100 and not fm.void.any()
    fm = src.load_masks(by_name["video0_00001"], 0)
    assert fm.ids.tolist() == [1, 2] and fm.void[:, :2].all()


# ------------------------------------------------------------------------------------------------ layout names
def _rename(davis: Path, dst: Path, images: str, masks: str) -> Path:
    shutil.copytree(davis / "JPEGImages", dst / images)
    shutil.copytree(davis / "Annotations", dst / masks)
    return dst


def test_davis_reads_images_and_masks_folders_with_one_info_line(davis, tmp_path, caplog) -> None:
    root = _rename(davis, tmp_path / "vos", "images", "masks")
    assert detect_format(root)[0] == "davis"
    with caplog.at_level(logging.INFO, logger="sam2train"):
        src = open_source(root)
    said = [r.getMessage() for r in caplog.records if "reading" in r.getMessage()]
    assert said == [
        f"{root}: reading 'images' for JPEGImages and 'masks' for Annotations (data.images_dir / "
        "data.masks_dir name them)"
    ]
    ref = DavisSource(davis)
    assert [v.name for v in src.videos] == [v.name for v in ref.videos]
    assert np.array_equal(src.load_masks(src.videos[1], 2).masks, ref.load_masks(ref.videos[1], 2).masks)


def test_layout_names_from_the_config_in_fit_check_and_errors(davis, tmp_path) -> None:
    root = _rename(davis, tmp_path / "vos", "frames", "labels")
    with pytest.raises(
        DataError, match=r"dataset folder not found: .*JPEGImages \(DAVIS layout: <root>/JPEGImages"
    ):
        open_source(root, format="davis")
    src = open_source(root, options=ReadOptions(images_dir="frames", masks_dir="labels"))
    assert len(src.videos) == 2
    with pytest.raises(
        DataError, match=r"labels2 \(DAVIS layout: <root>/frames/<video>/<frame>.jpg and <root>/labels2/"
    ):
        open_source(root, options=ReadOptions(images_dir="frames", masks_dir="labels2"))
    over = [
        f"data.train_path={root}",
        f"data.val_path={root}",
        "data.images_dir=frames",
        "data.masks_dir=labels",
    ]
    cfg = load_config(DEMO_CONFIG, over + ["data.clip_length=2"])
    assert [p for p in check_sources(cfg, True, ["train"]) if p.severity == ERROR] == []
    cfg = load_config(DEMO_CONFIG, [*over[:2], "data.images_dir=frames", "data.masks_dir=masks"])
    errors = [p for p in check_sources(cfg, True, ["train"]) if p.severity == ERROR]
    assert errors and "<root>/masks/<video>/<frame>.png" in errors[0].message
    moved = _rename(davis, tmp_path / "vos2", "images", "masks")
    cfg = load_config(DEMO_CONFIG, [f"data.train_path={moved}", "data.clip_length=2"])
    infos = [p.message for p in check_sources(cfg, True, ["train"]) if p.severity == INFO]
    assert any("reading 'images' for JPEGImages" in m for m in infos)


# ------------------------------------------------------------------------------------------------ bad input
def test_an_image_without_annotations_is_skipped_and_listed_once(davis, tmp_path) -> None:
    davis = Path(shutil.copytree(davis, tmp_path / "davis"))
    path = to_coco_images(davis, tmp_path / "coco.json")
    data = json.loads(path.read_text())
    data["images"] += [{"id": 100 + k, "file_name": f"video0/extra{k}.jpg"} for k in range(2)]
    for k in range(2):
        shutil.copy(
            davis / "JPEGImages" / "video0" / "00000.jpg", davis / "JPEGImages" / "video0" / f"extra{k}.jpg"
        )
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning) as caught:
        src = open_source(path, images_root=davis / "JPEGImages")
    lines = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert lines == [f"{path}: skipped 2 images without annotations: video0/extra0.jpg, video0/extra1.jpg"]
    assert len(src.videos) == 8
    cfg = load_config(DEMO_CONFIG, [f"data.train_path={path}", f"data.images_root={davis / 'JPEGImages'}"])
    problems = check_sources(cfg, True, ["train"])
    assert [p.severity for p in problems if "extra" in p.video] == [WARNING, WARNING]
    assert not [p for p in problems if p.severity == ERROR]  # clip_length does not apply to images


def test_an_rle_of_another_size_names_the_file_and_annotation(davis, tmp_path) -> None:
    path = to_coco_images(davis, tmp_path / "coco.json")
    data = json.loads(path.read_text())
    data["annotations"][3]["segmentation"] = _rle(np.ones((32, 64), bool))
    path.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"coco\.json: annotations\[3\] \(id=4\): RLE is 64x32 but image 00001.jpg is 64x64"
    ):
        open_source(path, images_root=davis / "JPEGImages")
    root = to_sa1b(davis, tmp_path / "sa1b")
    js = root / "video0_00000.json"
    sa = json.loads(js.read_text())
    sa["annotations"][1]["segmentation"] = _rle(np.ones((64, 60), bool))
    js.write_text(json.dumps(sa))
    with pytest.raises(
        DataError, match=r"video0_00000\.json: annotations\[1\] \(id=20\): RLE is 60x64 but image"
    ):
        open_source(root)


def test_a_polygon_of_two_points_is_an_error(davis, tmp_path) -> None:
    path = to_coco_images(davis, tmp_path / "coco.json")
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[1, 1, 10, 10]]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[0\] \(id=1\): malformed polygon: .*>= 3 points"):
        open_source(path, images_root=davis / "JPEGImages")


def test_an_empty_annotations_list_is_an_error(davis, tmp_path) -> None:
    path = to_coco_images(davis, tmp_path / "coco.json")
    data = json.loads(path.read_text())
    data["annotations"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"coco\.json: 'annotations' is empty: no usable image"):
        open_source(path, format="coco_images", images_root=davis / "JPEGImages")
    cfg = load_config(DEMO_CONFIG, [f"data.train_path={path}", f"data.images_root={davis / 'JPEGImages'}"])
    (problem,) = check_sources(cfg, True, ["train"])
    assert problem.severity == ERROR and "'annotations' is empty" in problem.message


def test_an_sa1b_json_without_annotations_is_an_error(davis, tmp_path) -> None:
    root = to_sa1b(davis, tmp_path / "sa1b")
    (root / "video0_00000.json").write_text(json.dumps({"image": {"image_id": 1}}))
    with pytest.raises(DataError, match=r"video0_00000\.json: missing key 'annotations'"):
        open_source(root)
    cfg = load_config(DEMO_CONFIG, [f"data.train_path={root}"])
    errors = [p for p in check_sources(cfg, True, ["train"]) if p.severity == ERROR]
    assert len(errors) == 1 and errors[0].path == root / "video0_00000.json"
    (root / "video0_00001.jpg").unlink()
    with pytest.raises(DataError, match=r"video0_00000\.json: missing key|video0_00001\.json: no image"):
        open_source(root)


def test_a_mask_whose_image_is_missing_is_an_error(davis, tmp_path) -> None:
    root = to_image_folder(davis, tmp_path / "folder")
    (root / "images" / "video1_00004.jpg").unlink()
    with pytest.raises(
        DataError, match=r"mask .*masks/video1_00004\.png has no image: no .*images/video1_00004"
    ):
        open_source(root)
    cfg = load_config(DEMO_CONFIG, [f"data.train_path={root}"])
    (error,) = [p for p in check_sources(cfg, False, ["train"]) if p.severity == ERROR]
    assert error.path == root / "masks" / "video1_00004.png" and "mask has no image" in error.message
