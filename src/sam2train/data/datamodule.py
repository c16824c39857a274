"""SAM2LightningDataModule: opens and validates the configured sources at setup, serves clip loaders.

Training reads `data.train_path`, or every source of `data.train` mixed by weight (`MixedClips`); either way the
loader's EpochSampler shuffles, shards and resumes the epoch, and each item is a pure function of
(seed, epoch, index). Image sources index one window per image; when their clips and the videos' differ in length
(`data.image_clip: single`), each batch holds clips of one length (`EpochSampler(groups=...)`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from sam2train.batch import VideoSample, collate_videos
from sam2train.config import Config
from sam2train.data.dataset import ClipDataset
from sam2train.data.sampling import EpochSampler, MixedClips, build_index
from sam2train.data.sources import ReadOptions, open_source
from sam2train.data.sources.base import SourceSpec, VideoSource, configured_sources
from sam2train.errors import DataError

log = logging.getLogger("sam2train")


@dataclass
class OpenedSource:
    """A configured source, opened and validated, with its clip dataset."""

    spec: SourceSpec
    source: VideoSource
    dataset: ClipDataset


def open_one(spec: SourceSpec, cfg: Config, train: bool) -> OpenedSource:
    """Open one source and index its clips; a DataError names the source (its config key and name)."""
    data = cfg.data
    try:
        source = open_source(
            spec.path,
            format=spec.format,
            images_root=spec.images_root,
            videos=spec.videos,
            options=ReadOptions.from_config(data),
        )
        if not source.videos:
            raise DataError(f"{spec.path}: no usable video (skipped: {source_skipped(source)})")
        length = data.clip_length if train else data.val_clip_length
        stride = data.stride
        if source.still_images:  # one window per image, made a clip by data.image_clip
            length, stride = (1, 1) if train else (None, 1)
        index = build_index(source.videos, length, stride, train=train, source_name=spec.name)
    except DataError as exc:
        raise DataError(f"{spec.where}: {exc}") from None
    return OpenedSource(spec, source, ClipDataset(source, index, cfg, train=train))


def open_data(cfg: Config, train: bool) -> tuple[list[OpenedSource], Dataset[VideoSample]]:
    """Every source of the train (or val) split, opened and validated, and the dataset the loader reads: the one
    source's ClipDataset, or several mixed by `weight` (`MixedClips`) when `data.train` lists them."""
    specs = configured_sources(cfg, train)
    if not specs:
        raise DataError(f"config key '{'data.train_path' if train else 'data.val_path'}' is not set")
    opened = [open_one(spec, cfg, train) for spec in specs]
    if not train or cfg.data.train is None:
        return opened, opened[0].dataset
    mixed = MixedClips(
        [o.dataset for o in opened], [o.spec.weight for o in opened], cfg.seed, [o.spec.name for o in opened]
    )
    log.info("training sources, clips per epoch of %d: %s", len(mixed), mix_summary(mixed))
    return opened, mixed


def mix_summary(mixed: MixedClips) -> str:
    """`davis 120 (40.0%, 80 windows), ytvos ...`: each source's clips per epoch, share and index size."""
    total = len(mixed)
    return ", ".join(
        f"{name} {n} ({100 * n / total:.1f}%, {size} windows)"
        for name, n, size in zip(mixed.names, mixed.counts, mixed.sizes)
    )


def open_split(cfg: Config, train: bool) -> tuple[VideoSource, ClipDataset]:
    """The source and clip dataset of a single-source split (`data.train_path` or `data.val_path`, or a
    `data.train` of one entry); errors name the path and key. Several sources: see `open_data`."""
    opened, _ = open_data(cfg, train)
    if len(opened) > 1:
        raise DataError(f"data.train lists {len(opened)} sources; open_data opens several")
    return opened[0].source, opened[0].dataset


def source_skipped(source: VideoSource) -> str:
    skipped = getattr(source, "skipped", {}) or {}
    return ", ".join(f"{k} ({v})" for k, v in skipped.items()) or "none"


def worker_init(worker_id: int, rank: int = 0) -> None:
    """Data workers ignore Ctrl-C (a terminal sends it to the whole process group: the main process stops the
    run and shuts them down) and exit quietly on SIGTERM, so a SIGTERM sent to every process (SLURM, systemd)
    lets the main process finish its step and save instead of failing on a worker killed by a signal. Then
    Lightning's worker seeding."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    pl_worker_init_function(worker_id, rank=rank)


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)


class ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch. Lightning's fit loop saves the `state_dict` of a loader that has
    one in every checkpoint and loads it on resume, before it first iterates the loader.

    The position saved is `progress()` batches, the batches the training loop has finished in this epoch, read at
    save time: batches that data workers or Lightning's fetcher have prefetched are not consumed and come again
    after a resume. Each pass draws the epoch `epoch()` names (the sampler keeps a loaded epoch for its first pass).
    """

    def __init__(
        self, *args: Any, progress: Callable[[], int], epoch: Callable[[], int], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.epoch = epoch

    def __iter__(self) -> Any:
        self.sampler.set_epoch(self.epoch())
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler) and self.batch_size is not None
        sampler.consumed = min(len(sampler), self.progress() * self.batch_size)
        return {"sampler": sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        sampler.load_state_dict(state["sampler"])


class SAM2LightningDataModule(L.LightningDataModule):
    """Training clips and validation videos from `config.data`, batched as VideoBatch.

    Every source is opened and checked in `setup` (in the main process, before training starts), so a missing
    file, an unreadable frame header or a bad JSON stops the run with a message naming it (and, for an entry of
    `data.train`, the entry: `data.train[1] (ytvos): ...`).
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.train_set: Dataset[VideoSample] | None = None
        """The training clips: one source's ClipDataset, or MixedClips over every source of `data.train`."""
        self.val_set: ClipDataset | None = None
        self.train_sources: list[OpenedSource] = []

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_sources, self.train_set = open_data(self.config, train=True)
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

    def _batches_done(self) -> int:
        """Training batches finished in the current epoch (Lightning's progress, restored on resume). An epoch
        the training loop has finished counts whole, also when `limit_train_batches` ended it early."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return sys.maxsize if done >= trainer.num_training_batches else done

    def _epoch(self) -> int:
        """The epoch the training loop is about to run. While it resumes, `current_epoch` may still be the
        finished one; later, after a restart at an epoch end, Lightning's own `set_epoch` value is one ahead."""
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.processed if loop.is_resuming else self.trainer.current_epoch

    def _loader(self, dataset: Dataset[VideoSample], train: bool) -> DataLoader:
        data = self.config.data
        rank, world = self._rank()
        # whole-video validation clips differ in length: one video per batch
        batch_size = data.batch_size if train or data.val_clip_length is not None else 1
        groups = dataset.clip_lengths() if train and isinstance(dataset, MixedClips) else None
        sampler = EpochSampler(
            len(dataset),
            shuffle=train,
            seed=self.config.seed,
            rank=rank,
            world_size=world,
            groups=groups,
            batch_size=batch_size,
        )
        trainer = getattr(self, "trainer", None)
        resumable = train and trainer is not None
        cls = ResumableLoader if resumable else DataLoader
        extra = {"progress": self._batches_done, "epoch": self._epoch} if resumable else {}
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=collate_videos,
            pin_memory=data.pin_memory and torch.cuda.is_available(),
            persistent_workers=data.persistent_workers and data.num_workers > 0,
            drop_last=False,
            worker_init_fn=partial(worker_init, rank=rank) if data.num_workers > 0 else None,
            # the loader's base seed comes from here, not from the global RNG the model's dropout uses
            generator=torch.Generator().manual_seed(self.config.seed + rank),
            **extra,
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
