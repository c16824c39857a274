"""The clip dataset: source -> clip sampler -> transforms -> prompts and schedule -> VideoSample.

An image source (`VideoSource.still_images`) gives one window per image; `data.image_clip` makes it a clip:
`single` (T = 1), `repeat` (the image T = clip_length times, each copy augmented on its own) or `pseudo_video`
(`sam2train.data.pseudo_video`, then the clip augmentation of videos). Validation always uses `single`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from sam2train.batch import VideoSample
from sam2train.config import Config, PromptsConfig
from sam2train.data.frames import resize_frame, resize_masks, resize_nearest
from sam2train.data.prompts import make_prompts
from sam2train.data.pseudo_video import pseudo_video
from sam2train.data.sampling import ClipRef, clip_positions, pick_ids, sample_generator, select_objects
from sam2train.data.sources.base import FrameMasks, VideoInfo, VideoSource
from sam2train.data.transforms import ClipAugment
from sam2train.errors import DataError

_AUGMENT_TRIES = 3
_VAL_SEED_OFFSET = 7919  # validation prompts use their own stream, fixed across epochs


class ClipDataset(Dataset[VideoSample]):
    """Clips of one source. In training, item `epoch * len(index) + i` is window i drawn with the generator of
    (seed, epoch, i) (see EpochSampler); in validation item i is window i, the same every epoch.

    Every random choice of a sample (window jitter, reverse time, objects, augmentation, prompts, conditioning
    and correction frames, the model's click seed) is drawn from that one generator in a fixed order, so a sample
    is a pure function of (seed, epoch, index): data workers and resumed runs redraw it identically, and ranks
    differ only because EpochSampler hands each rank different indices (no rank or worker id enters the draw).
    """

    def __init__(self, source: VideoSource, index: list[ClipRef], cfg: Config, train: bool) -> None:
        self.source = source
        self.index = index
        self.cfg = cfg
        self.train = train
        self.augment = ClipAugment(cfg.data.aug) if train and cfg.data.augment else None
        self.prompt_type = cfg.prompts.type if train else (cfg.prompts.val_type or cfg.prompts.type)
        self.image_clip = (cfg.data.image_clip if train else "single") if source.still_images else None
        """How an image becomes a clip (`data.image_clip`); None for a video source."""
        self.prompts = cfg.prompts
        if self.image_clip == "single":
            self.prompt_type, self.prompts = no_mask_prompts(self.prompt_type, cfg.prompts)

    @property
    def clip_length(self) -> int | None:
        """Frames of every training clip (None: whole videos, of any length)."""
        if self.image_clip == "single":
            return 1
        return self.cfg.data.clip_length if self.train else self.cfg.data.val_clip_length

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
        if self.image_clip is not None:
            frames, masks, void, obj_ids = self._image_clip(video, g)
            indices = torch.arange(len(frames), dtype=torch.long)
        else:
            frames, masks, void, obj_ids, indices = self._video_clip(video, ref, g)
        frames, masks, void, obj_ids, prompt_frames = self._augment(
            frames, masks, void, obj_ids, g, per_frame=self.image_clip == "repeat"
        )
        prompt_masks = masks[prompt_frames, torch.arange(len(obj_ids))]
        prompts = make_prompts(prompt_masks, self.prompts, g, train=self.train, prompt_type=self.prompt_type)
        cond_frames, correct_frames = self._schedule(len(frames), g)
        return VideoSample(
            images=frames,
            masks=masks.float(),
            ignore=void,
            prompts=prompts,
            video_name=video.name,
            frame_indices=indices,
            object_ids=torch.tensor(obj_ids, dtype=torch.long),
            orig_size=video.size,
            num_video_frames=len(video.frames) if self.image_clip is None else len(frames),
            prompt_frames=prompt_frames,
            cond_frames=cond_frames,
            correct_frames=correct_frames,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)),
        )

    def _image_clip(
        self, video: VideoInfo, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """An image as frames [T,3,S,S] uint8, masks [T,K,S,S] bool, void [T,S,S] bool and its object ids; only
        the tracked objects' masks are read (at most `data.max_objects`, drawn as for videos)."""
        obj_ids = pick_ids(video.object_ids, self.cfg.data.max_objects, g if self.train else None)
        fm = self.source.load_objects(video, obj_ids)  # type: ignore[attr-defined]
        size = self.cfg.model.image_size
        frame = resize_frame(self.source.load_image(video, 0), size)
        masks = torch.zeros(len(obj_ids), *video.size, dtype=torch.bool)
        for k, o in enumerate(obj_ids):
            masks[k] = torch.from_numpy(fm.get(o))
        masks, void = resize_masks(masks, size), resize_nearest(torch.from_numpy(fm.void), size)
        length = self.clip_length or 1
        if self.image_clip == "pseudo_video":
            frames, clip_masks, clip_void = pseudo_video(frame, masks, void, length, g)
            return frames, clip_masks, clip_void, obj_ids
        return (
            frame.expand(length, -1, -1, -1).clone(),
            masks.expand(length, -1, -1, -1).clone(),
            void.expand(length, -1, -1).clone(),
            obj_ids,
        )

    def _video_clip(
        self, video: VideoInfo, ref: ClipRef, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
        """A window of a video: frames [T,3,S,S] uint8, masks [T,K,S,S] bool, void [T,S,S] bool, object ids and
        frame indices [T]."""
        positions = clip_positions(video, ref, g if self.train else None)
        reverse = self.cfg.data.reverse_time_prob if self.train else 0.0
        if reverse > 0 and float(torch.rand((), generator=g)) < reverse:
            # Meta's reverse time: played backwards, the clip's last frame becomes the one objects start from
            positions = positions[::-1]
        frame_masks = [self.source.load_masks(video, p) for p in positions]
        candidates = _clip_union(frame_masks) if self.cfg.data.track_later_objects else frame_masks[0]
        obj_ids = select_objects(candidates, self.cfg.data.max_objects, g if self.train else None)
        size = self.cfg.model.image_size
        frames = torch.stack([resize_frame(self.source.load_image(video, p), size) for p in positions])
        masks = torch.zeros(len(positions), len(obj_ids), *video.size, dtype=torch.bool)
        for t, fm in enumerate(frame_masks):
            for k, o in enumerate(obj_ids):
                masks[t, k] = torch.from_numpy(fm.get(o))
        void = torch.from_numpy(np.stack([fm.void for fm in frame_masks]))
        masks, void = resize_masks(masks, size), resize_nearest(void, size)
        indices = torch.tensor([video.frames[p].index for p in positions], dtype=torch.long)
        return frames, masks, void, obj_ids, indices

    def _prompt_frames(self, masks: torch.Tensor) -> torch.Tensor:
        """masks [T, K, H, W] bool -> [K] long: the frame each object is prompted on, its first non-empty one
        (-1 when it is empty in every frame); all 0 without `data.track_later_objects`."""
        if not self.cfg.data.track_later_objects:
            return torch.zeros(masks.shape[1], dtype=torch.long)
        present = masks.flatten(2).any(2)
        return torch.where(present.any(0), present.int().argmax(0), -1)

    def _augment(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor,
        void: torch.Tensor,
        obj_ids: list[int],
        g: torch.Generator,
        per_frame: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
        """Augment the clip and find each object's prompt frame ([K] long, see `_prompt_frames`). `per_frame`:
        each frame gets its own draw (Meta's augmentation of a repeated image), else one draw moves the clip.

        A draw that pushes a tracked object out of its prompt frame is redrawn (up to a few times, from the same
        generator, so it stays reproducible; an empty mask stays empty, so an accepted draw keeps every prompt
        frame). Objects that cannot be prompted are dropped: empty in every frame (smaller than a pixel at
        image_size), or, without `track_later_objects`, empty in the first frame."""
        k_all = range(masks.shape[1])
        first = self._prompt_frames(masks)
        if self.augment is not None:
            for _ in range(_AUGMENT_TRIES):
                f, m, z = self._draw(frames, masks, void, g, per_frame)
                if all(m[first[k], k].any() for k in k_all if first[k] >= 0):
                    frames, masks, void = f, m, z
                    break
        first = self._prompt_frames(masks)
        keep = [k for k in k_all if first[k] >= 0 and masks[first[k], k].any()]
        if len(keep) < masks.shape[1]:
            masks, first = masks[:, keep], first[keep]
            obj_ids = [obj_ids[k] for k in keep]
        return frames, masks, void, obj_ids, first

    def _draw(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor,
        void: torch.Tensor,
        g: torch.Generator,
        per_frame: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.augment is not None
        if not per_frame:
            return self.augment(frames, masks, void, g)
        drawn = [
            self.augment(frames[t : t + 1], masks[t : t + 1], void[t : t + 1], g) for t in range(len(frames))
        ]
        return tuple(torch.cat(parts) for parts in zip(*drawn))  # type: ignore[return-value]

    def _schedule(self, num_frames: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning and correction frames of a training clip, as Meta's `prepare_prompt_inputs` draws them
        (validation: neither).

        C uniform in 1..min(max_cond_frames, T); cond_frames [C - 1] long: the extra conditioning frames, drawn
        without replacement from 1..T-1 in the order drawn (frame 0 is always one). With frames_to_correct > 0,
        F uniform in C..min(frames_to_correct, T); correct_frames [F] long: 0, the cond_frames, then F - C others
        drawn without replacement. A count with a single choice draws nothing.
        """
        none = torch.zeros(0, dtype=torch.long)
        if not self.train:
            return none, none
        cfg = self.cfg.prompts
        top = min(cfg.max_cond_frames, num_frames)
        c = int(torch.randint(1, top + 1, (1,), generator=g)) if top > 1 else 1
        cond = torch.randperm(num_frames - 1, generator=g)[: c - 1] + 1 if c > 1 else none
        if cfg.frames_to_correct == 0:
            return cond, none
        top = min(cfg.frames_to_correct, num_frames)
        f = int(torch.randint(c, top + 1, (1,), generator=g)) if top > c else c
        taken = set(cond.tolist())
        rest = torch.tensor([t for t in range(1, num_frames) if t not in taken], dtype=torch.long)
        extra = rest[torch.randperm(len(rest), generator=g)[: f - c]] if f > c else none
        return cond, torch.cat([torch.zeros(1, dtype=torch.long), cond, extra])


def no_mask_prompts(prompt_type: str, cfg: PromptsConfig) -> tuple[str, PromptsConfig]:
    """The prompts of a one-frame clip: SAM 2 outputs a mask prompt as it is on its frame, so a lone frame
    prompted with its mask teaches nothing (and scores perfectly): `mask` becomes `box`, and `mixed` draws a box
    or points in proportion to their probabilities."""
    if prompt_type == "mask":
        return "box", cfg
    if prompt_type != "mixed":
        return prompt_type, cfg
    rest = cfg.box_prob + cfg.point_prob
    box = cfg.box_prob / rest if rest > 0 else 1.0
    return prompt_type, replace(cfg, mask_prob=0.0, box_prob=box, point_prob=1.0 - box)


def _clip_union(frame_masks: list[FrameMasks]) -> FrameMasks:
    """The objects of a whole clip as one FrameMasks (ids sorted, each mask the union over the clip's frames),
    so `select_objects` picks among the objects present in any frame."""
    ids = sorted({int(o) for fm in frame_masks for o in fm.ids})
    shape = frame_masks[0].void.shape
    masks = np.zeros((len(ids), *shape), dtype=bool)
    for k, o in enumerate(ids):
        for fm in frame_masks:
            masks[k] |= fm.get(o)
    return FrameMasks(ids=np.asarray(ids, dtype=np.int64), masks=masks, void=frame_masks[0].void)
