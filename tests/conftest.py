"""The shared test harness: where things are (repository configs, the shared real data), a tiny random SAM 2
and the official hiera-t one, the demo dataset written once per session, the one `sam2train fit` argument
list, and synthetic video batches.

Test files import the plain helpers (`fit_args`, `needs_shared_data`, the paths) with `from conftest import
...`: pytest puts this folder on sys.path.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sam2train.batch import (
    PROMPT_BOX,
    PROMPT_MASK,
    PROMPT_POINT,
    Prompts,
    VideoBatch,
    VideoSample,
    collate_videos,
)
from sam2train.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
TINY_CONFIG = str(Path(__file__).resolve().parent / "configs" / "sam2_tiny.yaml")
"""A SAM 2.1 model YAML with hiera-t's architecture at small widths (1.3 M parameters instead of 39 M): a
forward + backward of a 2-frame 128 px clip takes about a tenth of hiera-t's time. For every test that does
not check parity with Meta's code or an official config."""
HIERA_T = "sam2.1_hiera_t"
"""The official config for parity tests and tests of an official architecture."""
TINY_SIZE = 128
PROMPT_KINDS = {"mask": PROMPT_MASK, "box": PROMPT_BOX, "point": PROMPT_POINT, "points": PROMPT_POINT}

# ---------------------------------------------------------------------------------------------- shared data

SHARED_DATA = REPO.parent / "shared" / "data"
"""The project's real data (DAVIS-2016, reference predictions, edge cases): `../shared/data` beside the
repository. Tests that read it skip when it is absent."""
SHARED_DATA_ABSENT = "shared data folder absent"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=SHARED_DATA_ABSENT)
"""Marks a test that reads SHARED_DATA."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """SHARED_DATA; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_ABSENT)
    return SHARED_DATA


# ------------------------------------------------------------------------------------------ demo data, fits


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic demo dataset (`sam2train demo-data`'s writer), written once per session: 4 videos of 6
    frames at 96x128 with 2 objects each, 3 under `train/` and 1 under `val/`. Read-only: copy it to change
    it."""
    from sam2train.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, videos=4, frames=6, size=(96, 128), objects=2, seed=3)
    return out


def fit_args(
    root: Path,
    *extra: str,
    data: Path | None = None,
    val: bool = True,
    config: Path = DEMO_CONFIG,
    model: str = TINY_CONFIG,
    image_size: int = TINY_SIZE,
    clip_length: int | None = 2,
    workers: int = 0,
    steps: int | None = None,
    version: str | None = None,
) -> list[str]:
    """The `sam2train fit` arguments of a short CPU run of `config`, writing its runs under `root`.

    `data`: a demo dataset folder, trained on `data/train` (clips of `clip_length` frames) and, with `val`,
    validated on `data/val` (2-frame clips); None leaves the data to the config. `model`: the model config
    (the tiny SAM 2 unless a test needs an official one). `steps`: one epoch of that many batches and one
    validation batch; None leaves the run's length to the config and `extra`. `version`: the run folder's name
    (default: the next free version). `extra` overrides come last, so they win.
    """
    args = ["fit", "--config", str(config)]
    if data is not None:
        args.append(f"data.train_path={data / 'train'}")
        if val:
            args += [f"data.val_path={data / 'val'}", "data.val_clip_length=2"]
    if clip_length is not None:
        args.append(f"data.clip_length={clip_length}")
    args += [f"data.num_workers={workers}", f"model.config={model}", f"model.image_size={image_size}"]
    if steps is not None:
        args += [
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={steps}",
            "trainer.limit_val_batches=1",
        ]
    args += [f"logging.root_dir={root}", "logging.progress_bar=none"]
    if version is not None:
        args.append(f"logging.version={version}")
    return [*args, *extra]


# ---------------------------------------------------------------------------------------------- models


def build_random_sam2(config: str = TINY_CONFIG, image_size: int = TINY_SIZE, seed: int = 0):
    """A randomly initialised SAM 2 (train mode, CPU), without the random-init warning."""
    from sam2train.model import build_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_model(ModelConfig(config=config, image_size=image_size, checkpoint=None))


@pytest.fixture(scope="session")
def sam2_factory() -> Callable[..., torch.nn.Module]:
    """`build(config=TINY_CONFIG, image_size=128, seed=0)`: a new random SAM 2 (train mode, CPU)."""
    return build_random_sam2


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Lightning-style checkpoint of the tiny random SAM 2 at 128 px (objects always present): fast predicts."""
    from sam2train.config import load_config, to_dict

    model = build_random_sam2(TINY_CONFIG, image_size=128)
    with torch.no_grad():  # random object scores sit near 0: every tracked mask would be -1024
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    path = tmp_path_factory.mktemp("tiny") / "last.ckpt"
    config = to_dict(load_config(None, [f"model.config={TINY_CONFIG}", "model.image_size=128"]))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "sam2train_config": config}, path)
    return path


@pytest.fixture(scope="session")
def tiny_sam2():
    """The random tiny SAM 2 (TINY_CONFIG) at 128 px, built once per session. Do not modify: use
    `fresh_tiny_sam2`."""
    return build_random_sam2()


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout and stochastic depth off, in place: two passes that draw in a different order (chunked and
    unchunked, ours and Meta's) then compute the same thing."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` in train mode with every parameter trainable."""
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@pytest.fixture
def fresh_tiny_sam2(tiny_sam2):
    """A private copy of `tiny_sam2` (train mode, everything trainable) that a test may change."""
    return trainable_copy(tiny_sam2)


@pytest.fixture(scope="session")
def hiera_t_sam2():
    """Random official hiera-t SAM 2.1 at 128 px, built once per session, for parity and official-config
    tests. Do not modify: use `fresh_hiera_t_sam2`."""
    return build_random_sam2(HIERA_T)


@pytest.fixture
def fresh_hiera_t_sam2(hiera_t_sam2):
    """A private copy of `hiera_t_sam2` (train mode, everything trainable) that a test may change."""
    return trainable_copy(hiera_t_sam2)


# ---------------------------------------------------------------------------------------------- video batches


def _blob_masks(t: int, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """[t, n, size, size] 0/1: one rectangle per object, drifting a few pixels per frame, never empty."""
    masks = torch.zeros(t, n, size, size)
    for j in range(n):
        h, w = (int(v) for v in torch.randint(size // 6, size // 3, (2,), generator=gen))
        y, x = (int(v) for v in torch.randint(0, size - max(h, w) - t * 2, (2,), generator=gen))
        for i in range(t):
            masks[i, j, y + i : y + i + h, x + 2 * i : x + 2 * i + w] = 1.0
    return masks


def prompts_from_masks(masks: torch.Tensor, kinds: list[str]) -> Prompts:
    """First-frame prompts for masks [N, H, W]: 'mask', 'box' (tight box), 'point' (one positive click at the
    box centre) or 'points' (that click plus a negative click outside the object)."""
    n = masks.shape[0]
    kind = torch.zeros(n, dtype=torch.long)
    coords = torch.zeros(n, 2, 2)
    labels = torch.full((n, 2), -1, dtype=torch.long)
    boxes = torch.zeros(n, 4)
    for j, name in enumerate(kinds):
        ys, xs = masks[j].nonzero(as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        boxes[j] = box
        kind[j] = PROMPT_KINDS[name]
        if name in ("point", "points"):
            coords[j, 0] = (box[:2] + box[2:]) / 2
            labels[j, 0] = 1
        if name == "points":
            outside = (~masks[j].bool()).nonzero()[0]
            coords[j, 1] = outside.flip(0).float()
            labels[j, 1] = 0
    return Prompts(kind=kind, point_coords=coords, point_labels=labels, boxes=boxes, masks=masks.clone())


@pytest.fixture
def make_video_batch() -> Callable[..., VideoBatch]:
    """Factory: `make(kinds=[["mask", "box"], ["point"]], t=3, size=128, seed=0, num_video_frames=None)` gives a
    VideoBatch of random frames and drifting rectangles, one clip per inner list, padded by `collate_videos`."""

    def make(
        kinds: list[list[str]] | None = None,
        t: int = 3,
        size: int = TINY_SIZE,
        seed: int = 0,
        num_video_frames: int | None = None,
    ) -> VideoBatch:
        gen = torch.Generator().manual_seed(seed)
        samples = []
        for b, clip_kinds in enumerate(kinds or [["mask"]]):
            n = len(clip_kinds)
            masks = _blob_masks(t, n, size, gen)
            samples.append(
                VideoSample(
                    images=torch.randn(t, 3, size, size, generator=gen),
                    masks=masks,
                    ignore=torch.zeros(t, size, size, dtype=torch.bool),
                    prompts=prompts_from_masks(masks[0], clip_kinds),
                    video_name=f"synthetic_{b}",
                    frame_indices=torch.arange(t),
                    object_ids=torch.arange(1, n + 1),
                    orig_size=(size, size),
                    num_video_frames=num_video_frames or t,
                )
            )
        return collate_videos(samples)

    return make
