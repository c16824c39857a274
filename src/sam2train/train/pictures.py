"""Pictures of validation videos every few epochs: a PNG strip (frames / ground truth / prediction) and a GIF
(ground truth | prediction) in `<run>/pictures/`, the PNG also sent to TensorBoard, wandb and swanlab. One video
per drawing, the next one each time, or the videos `logging.viz_videos` names."""

from __future__ import annotations

import re

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw

from sam2train.batch import VideoBatch, map_fields
from sam2train.data.frames import to_uint8_frames
from sam2train.train.callbacks import run_dir
from sam2train.viz import overlay, save_gif, save_png, strip

IMAGE_TAG = "val/pictures"
"""The key of the strip in TensorBoard, wandb and swanlab (one image per validation run, stepped by global step)."""

ROW_LABELS = ("frames", "ground truth", "prediction")


def first_clip(batch: VideoBatch) -> VideoBatch:
    """Clip 0 of a batch as a batch of one (B = 1), copied so the rest of the batch can be freed."""

    def take(x):
        return x[:1].clone() if isinstance(x, torch.Tensor) else x[:1]

    return map_fields(take, batch)


def _display_size(orig_hw: tuple[int, int], tile: int) -> tuple[int, int]:
    """(width, height) of a cell: the video's aspect ratio, longest side min(tile, original longest side)."""
    h, w = orig_hw
    scale = min(tile, max(h, w)) / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[K, S, S] bool -> [K, h, w] bool (nearest)."""
    out = [
        np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127 for m in masks
    ]
    return np.stack(out) if out else np.zeros((0, size[1], size[0]), dtype=bool)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    box = draw.textbbox((2, 1), text)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(pil).copy()


def video_pictures(
    clip: VideoBatch, mask_logits: torch.Tensor, num_frames_max: int = 8, tile: int = 256
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The strip and GIF frames of clip 0 of `clip`.

    clip: a VideoBatch (images [B,T,3,S,S], masks [B,T,N,S,S], valid [B,T,N]); mask_logits [B,T,N,S,S] (an object
    is predicted where logits > 0), or the bool masks themselves. Cells keep the video's aspect ratio, longest side at most `tile` pixels.
    Returns (strip [H', W', 3] uint8 with rows frames / ground truth / prediction over up to `num_frames_max`
    evenly spaced frames, GIF frames [h, w', 3] uint8 of ground truth | prediction, one per frame of the clip).
    Padded objects are left out; a clip without objects gives plain frames.
    """
    frames = to_uint8_frames(clip.images[0].detach().cpu())  # [T, S, S, 3]
    valid = clip.valid[0].any(0).cpu()  # [N]
    ids = clip.object_ids[0].cpu()[valid].tolist()
    gt = (clip.masks[0].detach().cpu()[:, valid] > 0.5).numpy()  # [T, K, S, S]
    pred = (mask_logits[0].detach().cpu()[:, valid] > 0).numpy()
    size = _display_size(tuple(int(v) for v in clip.orig_sizes[0].tolist()), tile)
    index = clip.frame_indices[0].tolist()

    def cells(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame = np.asarray(Image.fromarray(frames[t]).resize(size, Image.BILINEAR))
        return (
            _label(frame, f"frame {index[t]}"),
            overlay(frame, _resize_masks(gt[t], size), ids),
            overlay(frame, _resize_masks(pred[t], size), ids),
        )

    num = len(frames)
    shown = np.unique(np.linspace(0, num - 1, min(num, max(1, num_frames_max))).round().astype(int))
    columns = [cells(int(t)) for t in shown]
    sheet = strip([[c[row] for c in columns] for row in range(3)], list(ROW_LABELS))
    gif = [strip([[g, p]]) for _, g, p in (cells(t) for t in range(num))]
    return sheet, gif


class ValidationPictures(L.Callback):
    """Every `every_n_epochs` epochs (0: never), at the end of validation (not the sanity check), draws the first
    clip of one validation batch, the next batch at each drawing (drawing k shows batch k modulo the validated
    batches), or of every batch whose video `videos` names (its first window):
    `<run>/pictures/epoch{E:03d}_{video}.png` (rows frames / ground truth / prediction, up to `num_frames_max`
    frames) and `.gif` (ground truth | prediction per frame); the PNG also goes to TensorBoard, wandb and swanlab
    under `val/pictures`. Files and loggers are written on global rank 0 only, from the clips it validated. The
    prediction drawn is the validation step's own (`last_val_prediction` of the module): no second pass over the
    video, which would cost as much time again and, encoding the whole clip at once, several times the memory.
    """

    def __init__(
        self,
        every_n_epochs: int,
        num_frames_max: int = 8,
        tile: int = 256,
        fps: float = 4,
        videos: list[str] | None = None,
    ) -> None:
        if every_n_epochs < 0 or num_frames_max < 1:
            raise ValueError(
                f"every_n_epochs must be >= 0 and num_frames_max >= 1, got {every_n_epochs}, {num_frames_max}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_frames_max = num_frames_max
        self.tile = tile
        self.fps = fps
        self.videos = list(videos) if videos else None
        self._clips: list[tuple[VideoBatch, torch.Tensor]] = []  # clip 0 of a batch, its predicted masks
        self._warned = False

    def _due(self, trainer: L.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def _wanted(self, trainer: L.Trainer, batch: VideoBatch, batch_idx: int) -> bool:
        if self.videos is not None:
            name = batch.video_names[0]
            return name in self.videos and name not in [c.video_names[0] for c, _ in self._clips]
        batches = trainer.num_val_batches[0] if trainer.num_val_batches else 0
        drawing = trainer.current_epoch // self.every_n_epochs  # the same after a resume
        return batches > 0 and batch_idx == drawing % int(batches)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clips = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: VideoBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx == 0 and self._due(trainer) and self._wanted(trainer, batch, batch_idx):
            predicted = getattr(pl_module, "last_val_prediction", None)
            if predicted is None:
                raise RuntimeError(
                    "ValidationPictures needs the module's `last_val_prediction` (clip 0's masks)"
                )
            self._clips.append((first_clip(batch), predicted.cpu()))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        clips, self._clips = self._clips, []
        if not self._due(trainer):
            return
        if self.videos is not None and not clips and not self._warned and trainer.is_global_zero:
            self._warned = True
            rank_zero_warn(f"logging.viz_videos: no validated video is named {', '.join(self.videos)}")
        if trainer.is_global_zero:  # rank 0 draws and writes the clips it validated
            for clip, predicted in clips:
                self._draw(trainer, clip, predicted)

    def _draw(self, trainer: L.Trainer, clip: VideoBatch, predicted: torch.Tensor) -> None:
        sheet, gif = video_pictures(clip, predicted, self.num_frames_max, self.tile)
        video = re.sub(r"[^\w.-]+", "_", clip.video_names[0]) or "video"
        stem = run_dir(trainer) / "pictures" / f"epoch{trainer.current_epoch:03d}_{video}"
        save_png(stem.with_suffix(".png"), sheet)
        save_gif(stem.with_suffix(".gif"), gif, fps=self.fps)
        self._send(trainer, sheet, caption=f"{clip.video_names[0]}, epoch {trainer.current_epoch}")

    @staticmethod
    def _send(trainer: L.Trainer, sheet: np.ndarray, caption: str) -> None:
        """The strip to every logger that takes images; a logger that fails gets a warning, never a crash."""
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                continue
            try:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(IMAGE_TAG, sheet, step, dataformats="HWC")
                elif type(logger).__name__ == "WandbLogger":
                    logger.log_image(key=IMAGE_TAG, images=[sheet], step=step, caption=[caption])
                elif callable(getattr(logger, "log_image", None)):  # swanlab and other loggers with this API
                    logger.log_image(key=IMAGE_TAG, images=[sheet], step=step)
            except Exception as err:  # pictures are a convenience: a logger's failure must not end the run
                rank_zero_warn(f"could not send validation pictures to {type(logger).__name__}: {err!r}")


__all__ = ["IMAGE_TAG", "ValidationPictures", "first_clip", "video_pictures"]
