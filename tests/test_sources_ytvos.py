"""YouTube-VOS reader: DAVIS palette folders checked against meta.json, detection, and every bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from layouts import davis_to_ytvos, make_davis, save_palette
from sam2train.data.sources import open_source
from sam2train.data.sources.davis import DavisSource
from sam2train.data.sources.youtube_vos import YouTubeVosSource
from sam2train.errors import DataError


@pytest.fixture
def davis(tmp_path: Path) -> Path:
    return make_davis(
        tmp_path / "davis"
    )  # video0: objects 1, 2; video1: 1, 2 and 3 from frame 2; frame 3 bare


@pytest.fixture
def ytvos(davis: Path, tmp_path: Path) -> Path:
    return davis_to_ytvos(davis, tmp_path / "ytvos")


def _meta(root: Path) -> dict:
    return json.loads((root / "meta.json").read_text())


def _write_meta(root: Path, meta: dict) -> None:
    (root / "meta.json").write_text(json.dumps(meta))


def test_reads_the_davis_videos_every_fifth_frame(davis: Path, ytvos: Path) -> None:
    src = open_source(ytvos)
    ref = DavisSource(davis)
    assert isinstance(src, YouTubeVosSource) and [v.name for v in src.videos] == ["video0", "video1"]
    for v, r in zip(src.videos, ref.videos):
        assert v.object_ids == r.object_ids and v.size == r.size
        assert [f.index for f in v.frames] == [5 * f.index for f in r.frames] == [0, 5, 10, 15, 20]
        assert v.annotated == r.annotated == [0, 1, 2, 4]  # frame 15 has a JPG but no PNG: unannotated
        for pos in v.annotated:
            a, b = src.load_masks(v, pos), ref.load_masks(r, pos)
            assert a.ids.tolist() == b.ids.tolist() and np.array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(src.load_image(v, 2), ref.load_image(r, 2))
    later = src.videos[1]  # object 3 first appears on the third annotated frame
    assert src.load_masks(later, 0).ids.tolist() == [1, 2] and src.load_masks(later, 2).ids.tolist() == [
        1,
        2,
        3,
    ]
    assert src.categories["video1"] == {1: "cat1", 2: "cat2", 3: "cat3"}
    clone = pickle.loads(pickle.dumps(src))
    assert not hasattr(clone, "_meta") and np.array_equal(
        clone.load_masks(later, 2).masks, src.load_masks(later, 2).masks
    )


def test_detection_format_override_and_video_selection(ytvos: Path) -> None:
    assert isinstance(open_source(ytvos, format="youtube_vos", videos=["video1"]), YouTubeVosSource)
    davis = open_source(ytvos, format="davis")  # meta.json ignored
    assert type(davis) is DavisSource and len(davis.videos) == 2
    assert [v.name for v in YouTubeVosSource(ytvos, videos=["video1"]).videos] == ["video1"]
    with pytest.raises(DataError, match=r"meta\.json: no video named 'vidoe1'; did you mean 'video1'"):
        open_source(ytvos, videos=["vidoe1"])
    with pytest.raises(DataError, match="images_root applies to JSON formats only; youtube_vos"):
        open_source(ytvos, images_root=ytvos)


def test_folders_meta_json_does_not_list_are_skipped(ytvos: Path) -> None:
    shutil.copytree(ytvos / "JPEGImages" / "video0", ytvos / "JPEGImages" / "extra")
    with pytest.warns(UserWarning, match=r"skipped 1 video\(s\): extra: not listed in .*meta\.json"):
        src = open_source(ytvos)
    assert [v.name for v in src.videos] == ["video0", "video1"] and "extra" in src.skipped


def _drop_frame(root: Path) -> None:
    (root / "JPEGImages" / "video1" / "00010.jpg").unlink()
    (root / "Annotations" / "video1" / "00010.png").unlink()


def _drop_png(root: Path) -> None:
    (root / "Annotations" / "video1" / "00010.png").unlink()


def _extra_object(root: Path) -> None:
    meta = _meta(root)
    meta["videos"]["video0"]["objects"]["4"] = {"category": "dog", "frames": ["00000"]}
    _write_meta(root, meta)


def _unlisted_object(root: Path) -> None:
    meta = _meta(root)
    del meta["videos"]["video1"]["objects"]["2"]
    _write_meta(root, meta)


def _ghost_video(root: Path) -> None:
    meta = _meta(root)
    meta["videos"]["ghost"] = {"objects": {"1": {"category": "x", "frames": ["00000"]}}}
    _write_meta(root, meta)


def _no_masks(root: Path) -> None:
    for p in (root / "Annotations" / "video0").glob("*.png"):
        p.unlink()


def _empty_masks(root: Path) -> None:
    for p in (root / "Annotations" / "video0").glob("*.png"):
        save_palette(p, np.zeros((64, 64), np.uint8))


def _bad_key(root: Path) -> None:
    meta = _meta(root)
    meta["videos"]["video0"]["objects"]["one"] = {"frames": []}
    _write_meta(root, meta)


def _bad_frames(root: Path) -> None:
    meta = _meta(root)
    meta["videos"]["video0"]["objects"]["1"]["frames"] = "00000"
    _write_meta(root, meta)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _drop_frame,
            r"video1.00010\.jpg: video video1: frame 00010 is listed in meta\.json \(object 1\) but has no image",
        ),
        (
            _drop_png,
            r"video1.00010\.png: video video1: frame 00010 is listed in meta\.json \(object 1\) but has no mask PNG$",
        ),
        (
            _extra_object,
            r"Annotations.video0: video video0: object 4 \('dog'\) is listed in meta\.json but is in none of its 4 PNGs",
        ),
        (
            _unlisted_object,
            r"video1.00000\.png: video video1: mask holds object id 2, which meta\.json does not list \(it lists \[1, 3\]\)",
        ),
        (
            _ghost_video,
            r"meta\.json: video ghost is listed, but its frames folder .*JPEGImages.ghost is missing",
        ),
        (_no_masks, r"Annotations.video0: video video0: meta\.json lists objects \[1, 2\], but no mask PNGs"),
        (
            _empty_masks,
            r"video video0: object 1 \('cat1'\) is listed in meta\.json but is in none of its 4 PNGs",
        ),
        (_bad_key, r"meta\.json: videos\['video0'\]: objects\['one'\]: object ids must be ints > 0"),
        (
            _bad_frames,
            r"meta\.json: videos\['video0'\]: objects\['1'\]: 'frames' must be a list of frame names",
        ),
        (lambda r: _write_meta(r, {"video": {}}), r"meta\.json: missing key 'videos'"),
        (lambda r: (r / "meta.json").write_text("{"), r"meta\.json: not valid JSON"),
    ],
)
def test_bad_input_names_the_file_and_video(ytvos: Path, edit, message) -> None:
    edit(ytvos)
    with pytest.raises(DataError, match=message):
        open_source(ytvos)


def test_valid_split_gets_a_hint(ytvos: Path) -> None:
    """The valid split has a PNG only where each object first appears, though meta.json lists all its frames."""
    for video, keep in (("video0", {"00000"}), ("video1", {"00000", "00010"})):
        for p in (ytvos / "Annotations" / video).glob("*.png"):
            if p.stem not in keep:
                p.unlink()
    with pytest.raises(DataError, match=r"has no mask PNG \(the valid and test splits annotate only"):
        open_source(ytvos)


def test_a_video_without_objects_is_skipped(ytvos: Path) -> None:
    meta = _meta(ytvos)
    meta["videos"]["video0"]["objects"] = {}
    _write_meta(ytvos, meta)
    _empty_masks(ytvos)
    with pytest.warns(UserWarning, match=r"video0: no object in any annotated frame"):
        src = open_source(ytvos)
    assert [v.name for v in src.videos] == ["video1"]
