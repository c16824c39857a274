"""`sam2train check-data`: every problem of a dataset listed with its file, exit 1 on errors, `--fast`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, needs_shared_data
from layouts import davis_to_coco, davis_to_sav, davis_to_ytvos, make_davis, rle, sav_like_meta, save_palette
from sam2train.cli import main
from sam2train.config import load_config
from sam2train.data.check import ERROR, INFO, WARNING, check_sources

_HEADER = re.compile(r"^(errors|warnings|info) \(\d+\):$")


def write_config(tmp_path: Path, **data) -> Path:
    """A config YAML with only a `data:` section (the rest defaults)."""
    path = tmp_path / "config.yaml"
    lines = ["data:"] + [f"  {k}: {json.dumps(v)}" for k, v in data.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def check(capsys, config: Path, *args: str) -> tuple[int, dict[str, list[str]], str]:
    """Run `sam2train check-data`; (exit status, {severity: listed lines}, summary line)."""
    status = main(["check-data", "--config", str(config), *args])
    out = capsys.readouterr().out.splitlines()
    found: dict[str, list[str]] = {ERROR: [], WARNING: [], INFO: []}
    section = None
    for line in out:
        head = _HEADER.match(line)
        if head:
            section = {"errors": ERROR, "warnings": WARNING, "info": INFO}[head.group(1)]
        elif line.startswith("  ") and section is not None:
            found[section].append(line.strip())
    return status, found, out[-1]


def listed(lines: list[str], *parts: str) -> bool:
    """One of `lines` holds every part."""
    return any(all(p in line for p in parts) for line in lines)


# ---------------------------------------------------------------------------------------------- clean data
@pytest.mark.parametrize("layout", ["davis", "coco_video", "sav", "youtube_vos"])
def test_clean_dataset_exits_0(tmp_path, capsys, layout):
    davis = make_davis(tmp_path / "davis", n_videos=2)
    path = {
        "davis": lambda: davis,
        "coco_video": lambda: davis_to_coco(davis, davis / "ann.json"),
        "sav": lambda: davis_to_sav(davis, tmp_path / "sav"),
        "youtube_vos": lambda: davis_to_ytvos(davis, tmp_path / "ytvos"),
    }[layout]()
    config = write_config(tmp_path, train_path=str(path), val_path=str(path), clip_length=3)
    status, found, summary = check(capsys, config)
    assert status == 0 and found[ERROR] == [] and found[WARNING] == []
    assert summary == "0 errors, 0 warnings in 4 videos (20 frames)"  # train and val: 2 videos each
    assert listed(found[INFO], "frames that have no masks", "video0 (1 of 5)")
    assert listed(found[INFO], "first appear after the first annotated frame", "video1 [3]")


# ---------------------------------------------------------------------------------------------- bad data
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _narrow(path: Path, px: int) -> None:
    labels = np.array(Image.open(path))
    save_palette(path, labels[:, : labels.shape[1] - px])


@pytest.fixture
def bad_data(tmp_path: Path) -> Path:
    """A DAVIS train set and a COCO-video val set, each with several problems; config with clip_length 3."""
    davis = make_davis(tmp_path / "davis", n_videos=4, n_frames=5)  # frame 3 unannotated
    jpg, png = davis / "JPEGImages", davis / "Annotations"
    _truncate(jpg / "video0" / "00001.jpg")
    _narrow(png / "video0" / "00002.png", 5)
    _narrow(png / "video1" / "00000.png", 1)
    void_only = np.zeros((64, 64), dtype=np.uint8)
    void_only[:, :3] = 255
    save_palette(png / "video1" / "00004.png", void_only)
    (jpg / "video2" / "00002.jpg").unlink()  # frames 0, 1, 3, 4
    (png / "video2" / "00002.png").unlink()
    for t in (0, 1):  # video3 keeps 2 annotated frames: too short for clip_length 3
        (png / "video3" / f"{t:05d}.png").unlink()

    coco_src = make_davis(tmp_path / "coco", n_videos=1, seed=1)
    ann = davis_to_coco(coco_src, coco_src / "val.json")
    content = json.loads(ann.read_text())
    content["images"][1]["order_in_video"] = content["images"][0]["order_in_video"]
    content["annotations"][0]["segmentation"]["counts"] = "0"  # valid characters, runs do not add up
    content["annotations"][1]["segmentation"]["counts"] = 5  # schema error
    ann.write_text(json.dumps(content))
    return write_config(tmp_path, train_path=str(davis), val_path=str(ann), clip_length=3)


def test_every_problem_is_listed_with_its_file(capsys, bad_data):
    status, found, summary = check(capsys, bad_data)
    assert status == 1
    errors, warnings = found[ERROR], found[WARNING]
    assert listed(errors, "video0/00001.jpg", "[video0]", "image file is truncated")
    assert listed(errors, "video0/00002.png", "mask is 59x64 but its frame is 64x64 (more than 2 px off)")
    assert listed(errors, "val.json", "annotations[0]", "malformed RLE: runs sum to 0")
    assert listed(errors, "val.json", "annotations[1]", "'counts' must be a string or a list of ints")
    assert listed(errors, "val.json", "share order_in_video 0")
    assert listed(warnings, "video1/00000.png", "mask is 63x64 but its frame is 64x64; resized")
    assert listed(warnings, "video1/00004.png", "void-only mask")
    assert listed(warnings, "video2/00003.jpg", "1 gap in frame numbers: 00001.jpg -> 00003.jpg")
    assert listed(
        warnings, "JPEGImages/video3", "video skipped: 2 annotated frames, fewer than data.clip_length=3"
    )
    assert listed(warnings, "val.json", "1 gap in order_in_video: 0 -> 2")  # order 1 became a second 0
    assert len(errors) == 5 and len(warnings) == 5, found
    assert summary == "5 errors, 5 warnings in 5 videos (24 frames)"


def test_fast_skips_full_decodes(capsys, bad_data):
    status, found, summary = check(capsys, bad_data, "--fast")
    assert status == 1  # the 5 px mask and the JSON schema stop a run whatever the mode
    assert not listed(found[ERROR], "00001.jpg") and not listed(found[ERROR], "runs sum to")
    assert listed(found[ERROR], "video0/00002.png", "more than 2 px off")
    assert listed(found[ERROR], "annotations[1]", "'counts' must be")
    assert summary.startswith("3 errors, 5 warnings")


def test_split_and_check_sources(tmp_path, capsys, bad_data):
    status, found, _ = check(capsys, bad_data, "--split", "val")
    assert status == 1 and all("val.json" in line for line in found[ERROR])
    cfg = load_config(bad_data, ["data.val_path=null"])
    problems = check_sources(cfg, fast=True)
    assert {p.severity for p in problems} == {ERROR, WARNING, INFO}
    narrow = next(p for p in problems if p.path.name == "00000.png" and p.video == "video1")
    assert narrow.severity == WARNING and "resized" in narrow.message
    assert main(["check-data", "--config", str(bad_data), "--split", "val", "data.val_path=null"]) == 2


def test_no_video_long_enough_is_an_error(tmp_path, capsys):
    davis = make_davis(tmp_path / "davis", n_videos=1)
    status, found, _ = check(capsys, write_config(tmp_path, train_path=str(davis), clip_length=8))
    assert status == 1
    assert listed(found[ERROR], "no usable video with at least data.clip_length=8 annotated frames")


def test_youtube_vos_disagreements_with_meta_json(tmp_path, capsys):
    ytvos = davis_to_ytvos(make_davis(tmp_path / "davis", n_videos=3), tmp_path / "ytvos")
    meta = json.loads((ytvos / "meta.json").read_text())
    meta["videos"]["video0"]["objects"]["7"] = {"category": "dog", "frames": ["00000"]}
    meta["videos"]["video1"]["objects"]["3"]["frames"].remove("00020")  # in the PNG, not listed: a warning
    (ytvos / "meta.json").write_text(json.dumps(meta))
    (ytvos / "Annotations" / "video2" / "00005.png").unlink()
    (ytvos / "JPEGImages" / "extra").mkdir()
    status, found, summary = check(capsys, write_config(tmp_path, train_path=str(ytvos), clip_length=2))
    assert status == 1
    assert listed(
        found[ERROR], "Annotations/video0 [video0]", "object 7 ('dog') is listed in meta.json but is in none"
    )
    assert listed(
        found[ERROR],
        "video2/00005.png [video2]",
        "frame 00005 is listed in meta.json (object 1) but has no mask PNG",
    )
    assert listed(
        found[WARNING], "video1/00020.png [video1]", "object 3 is in PNGs of frames meta.json does not list"
    )
    assert listed(found[WARNING], "JPEGImages/extra [extra]", "video skipped: not listed in meta.json")
    assert summary == "2 errors, 2 warnings in 3 videos (15 frames)"


def test_sav_real_keys_and_automatic_masklets(tmp_path, capsys):
    sav = davis_to_sav(make_davis(tmp_path / "davis", n_videos=2, unannotated=()), tmp_path / "sav")
    for name in ("video0", "video1"):
        masklet = json.loads((sav / f"{name}_manual.json").read_text())["masklet"]
        ids = list(range(len(masklet[0])))
        content = {**sav_like_meta(masklet, ids), "fps": 24}
        (sav / f"{name}_manual.json").write_text(json.dumps(content))
        auto = {**content, "masklet": [[rle(np.ones((64, 64), bool))] for _ in masklet], "masklet_id": [0]}
        (sav / f"{name}_auto.json").write_text(json.dumps(auto))
    (sav / "video2_auto.json").write_text((sav / "video0_auto.json").read_text())
    status, found, summary = check(capsys, write_config(tmp_path, train_path=str(sav), clip_length=3))
    assert status == 0 and found[ERROR] == []
    assert listed(found[WARNING], "video2_auto.json [video2]", "video skipped: only automatic masklets")
    assert summary == "0 errors, 1 warning in 3 videos (10 frames)"
    for p in sav.glob("*_manual.json"):
        p.unlink()
    status, found, _ = check(capsys, write_config(tmp_path, train_path=str(sav), clip_length=3))
    assert listed(found[WARNING], "no *_manual.json: reading the automatic masklets (*_auto.json)")


# ---------------------------------------------------------------------------------------------- real data
@needs_shared_data
def test_sparse_annotations_one_pixel_narrow_mask_is_a_warning(tmp_path, capsys):
    path = SHARED_DATA / "edge_cases" / "sparse_annotations"
    status, found, summary = check(capsys, write_config(tmp_path, train_path=str(path), clip_length=1))
    assert status == 0 and summary == "0 errors, 1 warning in 2 videos (20 frames)"
    assert listed(found[WARNING], "judo/00005.png", "[judo]", "mask is 853x480 but its frame is 854x480")
    assert listed(found[INFO], "judo [2, 3, 4]")
