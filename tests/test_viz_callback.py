"""ValidationPictures: the strip and GIF of one validation video, written to the run folder and TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import fit_args
from sam2train.cli import main
from sam2train.data.demo import write_demo_dataset
from sam2train.train.pictures import IMAGE_TAG, video_pictures

GAP = 2  # sam2train.viz.strip's default gap between cells


def test_pictures_have_three_rows_and_a_gt_pred_gif(make_video_batch) -> None:
    clip = make_video_batch(kinds=[["mask", "box"]], t=5, size=64)
    logits = torch.where(clip.masks > 0.5, 5.0, -5.0)
    sheet, gif = video_pictures(clip, logits, num_frames_max=3)
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 3 * (64 + GAP) + GAP
    assert len(gif) == 5 and gif[0].shape == (64 + 2 * GAP, 2 * (64 + GAP) + GAP, 3)
    # ground truth and prediction agree here, so both halves of each GIF frame are the same picture
    assert np.array_equal(gif[2][GAP:-GAP, GAP : GAP + 64], gif[2][GAP:-GAP, 2 * GAP + 64 : -GAP])


def test_pictures_of_a_clip_without_objects(make_video_batch) -> None:
    clip = make_video_batch(kinds=[[]], t=2, size=64)
    sheet, gif = video_pictures(clip, torch.zeros(1, 2, 0, 64, 64))
    assert sheet.shape[0] == 3 * (64 + GAP) + GAP and len(gif) == 2


def test_fit_writes_pictures_and_a_tensorboard_image(tmp_path: Path, monkeypatch) -> None:
    """The pictures of a fit, drawn from the validation step's own prediction: the model runs in eval mode once
    per validation batch, never again for the pictures."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    import sam2train.model.video as video
    from sam2train.train.module import SAM2LightningModule

    calls = {"eval_passes": 0, "validation_steps": 0}
    run_video, validation_step = video.run_video, SAM2LightningModule.validation_step

    def counted_run_video(model, *args, **kwargs):
        calls["eval_passes"] += not model.training
        return run_video(model, *args, **kwargs)

    def counted_validation_step(self, *args, **kwargs):
        calls["validation_steps"] += 1
        return validation_step(self, *args, **kwargs)

    monkeypatch.setattr(video, "run_video", counted_run_video)
    monkeypatch.setattr(SAM2LightningModule, "validation_step", counted_validation_step)
    data = tmp_path / "data"
    write_demo_dataset(data, videos=2, frames=3, size=(48, 64), objects=2, seed=1)
    extra = ("data.val_clip_length=3", "scheduler.warmup_steps=0", "logging.viz_every_n_epochs=1")
    assert main(fit_args(tmp_path / "runs", *extra, data=data, steps=1, version="v")) == 0
    assert calls["validation_steps"] >= 1 and calls["eval_passes"] == calls["validation_steps"], calls
    run = tmp_path / "runs" / "demo" / "v"
    pngs = sorted((run / "pictures").glob("epoch000_*.png"))
    gifs = sorted((run / "pictures").glob("epoch000_*.gif"))
    assert [p.stem for p in pngs] == [g.stem for g in gifs] == ["epoch000_demo_001"]
    with Image.open(pngs[0]) as png:
        assert png.height == 3 * (48 + GAP) + GAP  # frames, ground truth, prediction at the video's 48 x 64
        assert png.width > 3 * 64  # a label column and the 3 frames
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 3 and gif.size == (2 * (64 + GAP) + GAP, 48 + 2 * GAP)

    events = EventAccumulator(str(run), size_guidance={IMAGES: 0})
    events.Reload()
    assert IMAGE_TAG in events.Tags()["images"]
    image = events.Images(IMAGE_TAG)[-1]
    assert (image.height, image.width) == (3 * (48 + GAP) + GAP, png.width) and image.step == 1
