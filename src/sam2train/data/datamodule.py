"""SAM2LightningDataModule: opens and validates the configured sources at setup, serves clip loaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import Config
from .batch import collate_videos
from .dataset import ClipDataset
from .sampling import EpochSampler, build_index
from .source_base import DataError, VideoSource
from .sources import open_source


def open_split(cfg: Config, train: bool) -> tuple[VideoSource, ClipDataset]:
    """Open the train or val source and its clip dataset; errors name the path and key."""
    data = cfg.data
    path, videos, key = (
        (data.train_path, data.train_videos, "data.train_path")
        if train
        else (data.val_path, data.val_videos, "data.val_path")
    )
    if path is None:
        raise DataError(f"config key '{key}' is not set")
    source = open_source(path, format=data.format, images_root=data.images_root, videos=videos)
    if not source.videos:
        raise DataError(f"{key}={path}: no usable video (skipped: {source_skipped(source)})")
    length = data.clip_length if train else data.val_clip_length
    index = build_index(source.videos, length, data.stride, train=train, source_name=str(path))
    return source, ClipDataset(source, index, cfg, train=train)


def source_skipped(source: VideoSource) -> str:
    skipped = getattr(source, "skipped", {}) or {}
    return ", ".join(f"{k} ({v})" for k, v in skipped.items()) or "none"


class SAM2LightningDataModule(L.LightningDataModule):
    """Training clips and validation videos from `config.data`, batched as VideoBatch.

    Every source is opened and checked in `setup` (in the main process, before training starts), so a missing
    file, an unreadable frame header or a bad JSON stops the run with a message naming it.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.train_set: ClipDataset | None = None
        self.val_set: ClipDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            _, self.train_set = open_split(self.config, train=True)
        if (
            stage in (None, "fit", "validate")
            and self.val_set is None
            and self.config.data.val_path is not None
        ):
            _, self.val_set = open_split(self.config, train=False)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset: ClipDataset, train: bool) -> DataLoader:
        data = self.config.data
        rank, world = self._rank()
        sampler = EpochSampler(
            len(dataset), shuffle=train, seed=self.config.seed, rank=rank, world_size=world
        )
        # whole-video validation clips differ in length: one video per batch
        batch_size = data.batch_size if train or data.val_clip_length is not None else 1
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=collate_videos,
            pin_memory=data.pin_memory and torch.cuda.is_available(),
            persistent_workers=data.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []
        return self._loader(self.val_set, train=False)
