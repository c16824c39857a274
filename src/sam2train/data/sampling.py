"""Which frames and objects make a clip.

Training: an epoch's index is a list of windows of `clip_length` annotated frames whose starts are `stride` apart;
each draw jitters the start within its stride with a per-sample generator, so every epoch sees different but
reproducible clips. Validation: whole videos (or `val_clip_length` windows), deterministic. Several training sources
are mixed by weight in `MixedClips`, still a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import bisect
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sam2train.data.sources.base import FrameMasks, VideoInfo
from sam2train.errors import DataError


@dataclass(frozen=True)
class ClipRef:
    """One entry of the index: a video and the first annotated position of a window."""

    video: int
    start: int
    length: int
    jitter: int = 0
    """How far the start may move later in training (stays within the annotated frames)."""


def build_index(
    videos: list[VideoInfo], clip_length: int | None, stride: int, train: bool, source_name: str = ""
) -> list[ClipRef]:
    """Windows over each video's annotated frames. `clip_length=None` gives one whole-video window.

    Videos with fewer annotated frames than `clip_length` are skipped with one warning listing them; when no
    video is long enough this is a DataError.
    """
    index: list[ClipRef] = []
    too_short: list[str] = []
    for v, video in enumerate(videos):
        n = len(video.annotated)
        length = n if clip_length is None else clip_length
        if n == 0 or n < length:
            too_short.append(f"{video.name} ({n})")
            continue
        if train:
            last = n - length
            for start in range(0, last + 1, stride):
                index.append(ClipRef(v, start, length, jitter=min(stride - 1, last - start)))
        else:
            # non-overlapping windows; the last one ends at the video's end so no frame is dropped
            starts = list(range(0, n - length + 1, length))
            if starts[-1] + length < n:
                starts.append(n - length)
            index.extend(ClipRef(v, s, length) for s in starts)
    where = f" in {source_name}" if source_name else ""
    if too_short:
        warnings.warn(
            f"skipped {len(too_short)} video(s){where} with fewer annotated frames than the clip length "
            f"{clip_length}: {', '.join(too_short)}",
            stacklevel=2,
        )
    if not index:
        raise DataError(
            f"no usable video{where}: every video has fewer annotated frames than data.clip_length={clip_length}"
        )
    return index


def clip_positions(video: VideoInfo, ref: ClipRef, generator: torch.Generator | None) -> list[int]:
    """Positions (into video.frames) of the clip's annotated frames; the start is jittered in training."""
    start = ref.start
    if generator is not None and ref.jitter > 0:
        start += int(torch.randint(0, ref.jitter + 1, (1,), generator=generator))
    return video.annotated[start : start + ref.length]


def select_objects(
    first: FrameMasks, max_objects: int | None, generator: torch.Generator | None
) -> list[int]:
    """Ids of the objects to track: those non-empty in the clip's first frame, at most `max_objects` (None: all
    of them; a random subset when a generator is given, else the lowest ids)."""
    present = [int(i) for i, m in zip(first.ids, first.masks) if m.any()]
    return pick_ids(present, max_objects, generator)


def pick_ids(ids: Sequence[int], max_objects: int | None, generator: torch.Generator | None) -> list[int]:
    """At most `max_objects` of `ids` (None: all), sorted: a random subset when a generator is given, else the
    lowest ids."""
    ids = [int(i) for i in ids]
    if max_objects is None or len(ids) <= max_objects:
        return sorted(ids)
    if generator is None:
        return sorted(ids)[:max_objects]
    pick = torch.randperm(len(ids), generator=generator)[:max_objects]
    return sorted(ids[int(i)] for i in pick)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training sample: a pure function of (seed, epoch, index), so data workers, ranks and
    resumed runs draw the same clip, objects, augmentation and prompts."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


class EpochSampler(Sampler[int]):
    """Index sampler that shards across ranks itself, encodes the epoch into each index, and resumes mid-epoch.

    It yields `epoch * len(dataset) + i`, so the dataset can seed sample i of this epoch without any state shared
    with data workers. Shuffles with (seed, epoch) in training; sequential in validation. With several ranks each
    gets an interleaved shard; training shards are padded by repetition to equal length (as DistributedSampler).

    `state_dict()` holds the epoch of the pass in progress and `consumed`, how many of its indices the training
    loop has used (set by whoever drives the loop: `ResumableLoader` counts the batches Lightning finished, never
    what the workers prefetched). After `load_state_dict` the next pass continues that order where it stopped.

    `groups` (training): the clip length of each index, when sources of different lengths are mixed (images as
    `single` frames beside videos). Then every batch holds clips of one length, on every rank at once: the
    shuffled order is cut, per length, into blocks of `batch_size * world_size` (a length's last block padded
    with its own clips), the blocks are shuffled, and sharding hands each rank `batch_size` of every block.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[int | None] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.groups = list(groups) if groups is not None and shuffle and len(set(groups)) > 1 else None
        self.block = batch_size * world_size
        self._grouped_size = (
            sum(-(-n // self.block) * self.block for n in Counter(self.groups).values()) if self.groups else 0
        )
        self.epoch = 0
        """The epoch of the next pass."""
        self.consumed = 0
        """Indices of the current pass already used by the training loop (saved by state_dict)."""
        self._pass_epoch = 0
        self._resume_at: int | None = None
        """Set by load_state_dict: where the next pass starts in its epoch's shard."""

    def set_epoch(self, epoch: int) -> None:
        # a loaded state names the epoch of the next pass (Lightning's count is one ahead after some restarts)
        if self._resume_at is None:
            self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._pass_epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at `state`: the next pass skips the indices its epoch already consumed; a finished epoch
        continues with the next one."""
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch, self.consumed, self._resume_at = epoch, consumed, consumed

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        if self.groups is not None:
            return self._blocks(order, g)
        per_rank = -(-self.size // self.world_size)
        return (order * self.world_size)[: per_rank * self.world_size]

    def _blocks(self, order: list[int], g: torch.Generator) -> list[int]:
        """`order` cut into blocks of one clip length each (see the class docstring), blocks shuffled."""
        assert self.groups is not None
        by_length: dict[int | None, list[int]] = {}
        for i in order:
            by_length.setdefault(self.groups[i], []).append(i)
        blocks = []
        for items in by_length.values():
            padded = [items[j % len(items)] for j in range(-(-len(items) // self.block) * self.block)]
            blocks += [padded[b : b + self.block] for b in range(0, len(padded), self.block)]
        return [i for b in torch.randperm(len(blocks), generator=g).tolist() for i in blocks[b]]

    def __iter__(self) -> Iterator[int]:
        skip, self._resume_at = self._resume_at or 0, None  # only the first pass after a load resumes
        self._pass_epoch = self.epoch
        shard = self._order()[self.rank :: self.world_size][skip:]
        offset = self.epoch * self.size if self.shuffle else 0
        return iter(offset + i for i in shard)

    def __len__(self) -> int:
        if self.groups is not None:
            return self._grouped_size // self.world_size
        if self.shuffle:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))


# ---------------------------------------------------------------------------------------------- mixing sources
def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Counts proportional to `weights` that sum to `total` (largest remainder, exact arithmetic; ties go to the
    earlier source)."""
    exact = [Fraction(w) for w in weights]
    shares = [Fraction(total) * w / sum(exact) for w in exact]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda s: (counts[s] - shares[s], s))
    for s in by_remainder[: total - sum(counts)]:
        counts[s] += 1
    return counts


def _mixed_seed(*values: int) -> int:
    mixed = np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1, dtype=np.uint64)[0]
    return int(mixed) & 0x7FFF_FFFF_FFFF_FFFF


class MixedClips(Dataset):
    """Training clips of several sources, mixed by weight: a pure function of (seed, epoch, index), so it works
    with `EpochSampler` (its shuffling, sharding and mid-epoch resume) exactly as one ClipDataset does.

    An epoch has `len(self)` = the sum of every source's windows; source s gets `counts[s]` of them, in
    proportion to its weight (`apportion`). A source drawn less than its size gets a different random subset of
    its windows each epoch (seeded by (seed, epoch, s)); one drawn more repeats every window `counts // size`
    times plus a random subset once more. Item `epoch * len(self) + k` is entry k of the epoch's plan, ordered by
    source (the sampler shuffles): `(s, window i, repeat r)`, read from part s as item `draw * size_s + i` with
    `draw = (epoch * S + s) * R_s + r` (S sources, R_s = ceil(counts[s] / size_s)), so every repeat of every
    source has its own sample generator (ClipDataset: item `e * size + i` is window i drawn with the generator of
    (seed, e, i)). With one source and the same number of clips, item k is the part's item k: the same clips as
    training on that source alone.
    """

    def __init__(
        self, parts: Sequence[Dataset], weights: Sequence[float], seed: int, names: Sequence[str]
    ) -> None:
        if not parts or len(parts) != len(weights) or len(parts) != len(names):
            raise ValueError("MixedClips needs one weight and one name per part")
        self.parts = list(parts)
        self.names = list(names)
        self.seed = seed
        self.sizes = [len(p) for p in self.parts]
        self.counts = apportion(sum(self.sizes), weights)
        self.repeats = [-(-n // size) for n, size in zip(self.counts, self.sizes)]
        self.starts = np.cumsum([0, *self.counts]).tolist()
        self._picks: tuple[int, dict[int, list[int]]] = (-1, {})
        starved = [f"{name} (weight {w})" for name, w, n in zip(self.names, weights, self.counts) if n == 0]
        if starved:
            warnings.warn(
                f"training sources that get no clip in an epoch of {len(self)}: {', '.join(starved)}; raise their "
                "weight",
                UserWarning,
                stacklevel=2,
            )

    def __len__(self) -> int:
        return self.starts[-1]

    def _extra(self, epoch: int, s: int) -> list[int]:
        """Windows of source s drawn once more than the others this epoch (a subset, seeded by (seed, epoch, s))."""
        if self._picks[0] != epoch:
            self._picks = (epoch, {})
        picks = self._picks[1]
        if s not in picks:
            size, extra = self.sizes[s], self.counts[s] % self.sizes[s]
            g = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch, s, 0x6D6978))
            picks[s] = sorted(torch.randperm(size, generator=g)[:extra].tolist())
        return picks[s]

    def locate(self, item: int) -> tuple[int, int, int]:
        """(source, window, repeat) of an item of the sampler's encoding (`epoch * len(self) + k`)."""
        epoch, k = divmod(int(item), len(self))
        s = bisect.bisect_right(self.starts, k) - 1
        k -= self.starts[s]
        size = self.sizes[s]
        full = self.counts[s] // size
        if k < full * size:
            return s, k % size, k // size
        return s, self._extra(epoch, s)[k - full * size], full

    def clip_lengths(self) -> list[int | None]:
        """The training clip length of each item of an epoch (its source's), for `EpochSampler(groups=...)`."""
        lengths = [getattr(p, "clip_length", None) for p in self.parts]
        return [lengths[s] for s, n in enumerate(self.counts) for _ in range(n)]

    def __getitem__(self, item: int):
        epoch = int(item) // len(self)
        s, i, r = self.locate(item)
        draw = (epoch * len(self.parts) + s) * self.repeats[s] + r
        return self.parts[s][draw * self.sizes[s] + i]
