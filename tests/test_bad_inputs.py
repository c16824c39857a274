"""The bad-input corpus: each case is generated on the fly and run through the `sam2train` command in-process.

Every case has a documented outcome (docs/data-checks.md and the README): an error that names the culprit, exit
status 2 (1 for `check-data` with errors), one line of message and no traceback, within a time bound.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import lightning  # noqa: F401  (imported here so its log handler binds to the session's stderr, not one case's)
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEMO_CONFIG, fit_args
from sam2train.cli import main
from sam2train.data.demo import write_demo_dataset

LIMIT_S = 120


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad_inputs_demo")
    write_demo_dataset(out, videos=3, frames=4, size=(64, 64), objects=1, seed=5)
    return out


def _fit(data: Path, root: Path, *extra: str) -> list[str]:
    return fit_args(root, "logging.viz_every_n_epochs=0", *extra, data=data, image_size=64, steps=1)


def _copy(demo: Path, tmp: Path) -> Path:
    shutil.copytree(demo, tmp / "data")
    return tmp / "data"


def _first(data: Path, pattern: str) -> Path:
    return sorted(data.glob(pattern))[0]


def _truncate_jpeg(data: Path) -> str:
    f = _first(data, "train/JPEGImages/*/00001.jpg")
    f.write_bytes(f.read_bytes()[:300])
    return f.name


def _sixteen_bit_mask(data: Path) -> str:
    f = _first(data, "train/Annotations/*/00001.png")
    Image.fromarray(np.full((64, 64), 1000, dtype=np.uint16)).save(f)
    return f.name


def _empty_dataset(data: Path) -> str:
    for folder in (data / "train" / "JPEGImages").iterdir():
        shutil.rmtree(folder)
    return "train"


def _coco_without_video_id(data: Path) -> str:
    images = [{"id": 1, "file_name": "a.jpg", "order_in_video": 0, "width": 64, "height": 64}]
    (data / "bad.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return "video_id"


def _coco_missing_image(data: Path) -> str:
    images = [
        {"id": 1, "file_name": "missing.jpg", "video_id": 1, "order_in_video": 0, "width": 64, "height": 64}
    ]
    (data / "bad.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return "missing.jpg"


def _coco_bad_rle(data: Path) -> str:
    frame = _first(data, "train/JPEGImages/*/00000.jpg")
    images = [
        {"id": 1, "file_name": str(frame), "video_id": 1, "order_in_video": 0, "width": 64, "height": 64}
    ]
    ann = {"id": 7, "image_id": 1, "category_id": 1, "segmentation": {"size": [64, 64], "counts": 12}}
    (data / "bad.json").write_text(json.dumps({"images": images, "annotations": [ann], "categories": []}))
    return "bad.json"


def _wide_mask(data: Path) -> str:
    f = _first(data, "train/Annotations/*/00002.png")
    m = Image.open(f)
    m.crop((0, 0, m.width - 7, m.height)).save(f)
    return f.name


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _write_ckpt(tmp: Path, state: dict) -> Path:
    path = tmp / "model.pt"
    torch.save(state, path)
    return path


# (id, argv builder (demo data copy, tmp) -> (argv, culprit), expected exit status)
Case = tuple[str, Callable[[Path, Path], tuple[list[str], str]], int]

CASES: list[Case] = [
    # config
    ("unknown key", lambda d, t: (_fit(d, t, "optimizer.lrr=1e-4"), "optimizer.lr"), 2),
    ("wrong type", lambda d, t: (_fit(d, t, "optimizer.lr=fast"), "optimizer.lr"), 2),
    ("negative lr", lambda d, t: (_fit(d, t, "optimizer.lr=-1e-4"), "optimizer.lr"), 2),
    ("clip length 0", lambda d, t: (_fit(d, t, "data.clip_length=0"), "data.clip_length"), 2),
    ("unknown optimizer", lambda d, t: (_fit(d, t, "optimizer.type=SGD"), "optimizer.type"), 2),
    (
        "image size not a multiple of the stride",
        lambda d, t: (_fit(d, t, "model.image_size=100"), "image_size"),
        2,
    ),
    ("unknown trainable group", lambda d, t: (_fit(d, t, "model.trainable_modules=[decoder]"), "decoder"), 2),
    ("missing config file", lambda d, t: (["fit", "--config", str(t / "nope.yaml")], "nope.yaml"), 2),
    (
        "malformed yaml",
        lambda d, t: (
            (t / "bad.yaml").write_text("data: [x\n") and ["fit", "--config", str(t / "bad.yaml")],
            "bad.yaml",
        ),
        2,
    ),
    ("unknown logger", lambda d, t: (_fit(d, t, "logging.loggers=[mlflow]"), "logging.loggers"), 2),
    # data
    ("missing dataset folder", lambda d, t: (_fit(t / "nowhere", t), "nowhere"), 2),
    ("clip longer than every video", lambda d, t: (_fit(d, t, "data.clip_length=50"), "clip"), 2),
    ("empty dataset", lambda d, t: (_fit(d, t), _empty_dataset(d)), 2),
    ("truncated jpeg", lambda d, t: (_fit(d, t), _truncate_jpeg(d)), 2),
    ("16-bit mask ids", lambda d, t: (_fit(d, t), _sixteen_bit_mask(d)), 2),
    ("mask 7 px narrower than its frame", lambda d, t: (_fit(d, t), _wide_mask(d)), 2),
    (
        "coco json without video_id",
        lambda d, t: (_fit(d, t, f"data.train_path={d / 'bad.json'}"), _coco_without_video_id(d)),
        2,
    ),
    (
        "coco image file missing",
        lambda d, t: (_fit(d, t, f"data.train_path={d / 'bad.json'}"), _coco_missing_image(d)),
        2,
    ),
    (
        "coco malformed rle",
        lambda d, t: (_fit(d, t, f"data.train_path={d / 'bad.json'}"), _coco_bad_rle(d)),
        2,
    ),
    (
        "unknown video in the split",
        lambda d, t: (_fit(d, t, "data.train_videos=[no_such_video]"), "no_such_video"),
        2,
    ),
    (
        "check-data finds errors",
        lambda d, t: (
            [
                "check-data",
                "--config",
                str(DEMO_CONFIG),
                f"data.train_path={d / 'train'}",
                f"data.val_path={d / 'val'}",
            ],
            _truncate_jpeg(d),
        ),
        1,
    ),  # fmt: skip
    # checkpoints
    (
        "missing official checkpoint",
        lambda d, t: (_fit(d, t, f"model.checkpoint={t / 'gone.pt'}"), "gone.pt"),
        2,
    ),
    (
        "checkpoint of another model",
        lambda d, t: (
            _fit(
                d,
                t,
                f"model.checkpoint={_write_ckpt(t, {'model': {'image_encoder.trunk.pos_embed': torch.zeros(1)}})}",
            ),
            "model.pt",
        ),
        2,
    ),
    (
        "not a checkpoint file",
        lambda d, t: (
            (t / "junk.pt").write_bytes(b"\x00junk" * 50) and _fit(d, t, f"model.checkpoint={t / 'junk.pt'}"),
            "junk.pt",
        ),
        2,
    ),  # fmt: skip
    ("resume from a missing file", lambda d, t: (_fit(d, t, "--ckpt", str(t / "x.ckpt")), "x.ckpt"), 2),
    ("resume last without a run", lambda d, t: (_fit(d, t, "--ckpt", "last"), "last.ckpt"), 2),
    # other commands
    (
        "predict two prompts",
        lambda d, t: (
            [
                "predict",
                "--checkpoint",
                str(t / "m.pt"),
                "--frames",
                str(d),
                "--out",
                str(t / "o"),
                "--box",
                "1,1,5,5",
                "--points",
                "2,2,1",
            ],
            "--",
        ),
        2,
    ),  # fmt: skip
    (
        "predict missing frames",
        lambda d, t: (
            [
                "predict",
                "--checkpoint",
                str(_touch(t / "m.pt")),
                "--frames",
                str(t / "nf"),
                "--out",
                str(t / "o"),
                "--box",
                "1,1,5,5",
            ],
            "nf",
        ),
        2,
    ),  # fmt: skip
    (
        "evaluate missing predictions",
        lambda d, t: (["evaluate", "--pred", str(t / "np"), "--gt", str(d)], "np"),
        2,
    ),
    (
        "export missing checkpoint",
        lambda d, t: (["export", "--ckpt", str(t / "c.ckpt"), "--out", str(t / "o.pt")], "c.ckpt"),
        2,
    ),
    ("demo-data zero videos", lambda d, t: (["demo-data", str(t / "dd"), "--videos", "0"], "videos"), 2),
]


@pytest.fixture
def time_bound():
    def expire(signum, frame):
        raise TimeoutError(f"a bad-input case ran over {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_the_corpus_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_without_a_traceback(
    case: Case, demo: Path, tmp_path: Path, capsys, time_bound
) -> None:
    _, build, expected = case
    data = _copy(demo, tmp_path)
    argv, culprit = build(data, tmp_path)
    status = main(argv)
    captured = capsys.readouterr()
    assert status == expected, captured.err[-2000:]
    text = captured.err + captured.out
    assert culprit in text
    assert "Traceback" not in captured.err
