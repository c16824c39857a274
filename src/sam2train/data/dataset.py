"""The clip dataset: source -> clip sampler -> transforms -> prompts -> VideoSample."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config
from .batch import VideoSample
from .prompts import make_prompts
from .sampling import ClipRef, clip_positions, sample_generator, select_objects
from .source_base import DataError, VideoInfo, VideoSource
from .transforms import ClipAugment, normalize, resize_frame, resize_masks, resize_nearest

_AUGMENT_TRIES = 3
_VAL_SEED_OFFSET = 7919  # validation prompts use their own stream, fixed across epochs


class ClipDataset(Dataset[VideoSample]):
    """Clips of one source. In training, item `epoch * len(index) + i` is window i drawn with the generator of
    (seed, epoch, i) (see EpochSampler); in validation item i is window i, the same every epoch."""

    def __init__(self, source: VideoSource, index: list[ClipRef], cfg: Config, train: bool) -> None:
        self.source = source
        self.index = index
        self.cfg = cfg
        self.train = train
        self.augment = ClipAugment(cfg.data.aug) if train and cfg.data.augment else None
        self.prompt_type = cfg.prompts.type if train else (cfg.prompts.val_type or cfg.prompts.type)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> VideoSample:
        epoch, i = divmod(int(item), len(self.index))
        ref = self.index[i]
        video = self.source.videos[ref.video]
        try:
            return self._load(video, ref, epoch, i)
        except DataError:
            raise
        except Exception as exc:  # name the video in any other failure raised in a worker
            raise DataError(
                f"video '{video.name}' in {self.source.path}: {type(exc).__name__}: {exc}"
            ) from exc

    def _load(self, video: VideoInfo, ref: ClipRef, epoch: int, i: int) -> VideoSample:
        seed = self.cfg.seed if self.train else self.cfg.seed + _VAL_SEED_OFFSET
        g = sample_generator(seed, epoch if self.train else 0, i)
        positions = clip_positions(video, ref, g if self.train else None)
        frame_masks = [self.source.load_masks(video, p) for p in positions]
        obj_ids = select_objects(frame_masks[0], self.cfg.data.max_objects, g if self.train else None)
        size = self.cfg.model.image_size
        frames = torch.stack([resize_frame(self.source.load_image(video, p), size) for p in positions])
        masks = torch.zeros(len(positions), len(obj_ids), *video.size, dtype=torch.bool)
        for t, fm in enumerate(frame_masks):
            for k, o in enumerate(obj_ids):
                masks[t, k] = torch.from_numpy(fm.get(o))
        void = torch.from_numpy(np.stack([fm.void for fm in frame_masks]))
        masks, void = resize_masks(masks, size), resize_nearest(void, size)
        frames, masks, void, obj_ids = self._augment(frames, masks, void, obj_ids, g)
        prompts = make_prompts(masks[0], self.cfg.prompts, g, train=self.train, prompt_type=self.prompt_type)
        return VideoSample(
            images=normalize(frames),
            masks=masks.float(),
            ignore=void,
            prompts=prompts,
            video_name=video.name,
            frame_indices=torch.tensor([video.frames[p].index for p in positions], dtype=torch.long),
            object_ids=torch.tensor(obj_ids, dtype=torch.long),
            orig_size=video.size,
            num_video_frames=len(video.frames),
        )

    def _augment(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor,
        void: torch.Tensor,
        obj_ids: list[int],
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Augment the clip; a draw that pushes a tracked object out of the first frame is redrawn (up to a few
        times, from the same generator, so it stays reproducible). Objects the resize made empty in the first
        frame (smaller than a pixel at image_size) are dropped: they cannot be prompted."""
        if self.augment is not None:
            for _ in range(_AUGMENT_TRIES):
                f, m, z = self.augment(frames, masks, void, g)
                if all(m[0, k].any() for k in range(m.shape[1])):
                    frames, masks, void = f, m, z
                    break
        keep = [k for k in range(masks.shape[1]) if masks[0, k].any()]
        if len(keep) < masks.shape[1]:
            masks = masks[:, keep]
            obj_ids = [obj_ids[k] for k in keep]
        return frames, masks, void, obj_ids
