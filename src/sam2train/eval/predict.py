"""`sam2train predict`: track first-frame prompts through a video with our video pass and write DAVIS palette PNGs.

The pass is `VideoTracker` (the forward that training and validation use), streamed: frames are read lazily,
encoded and tracked one at a time and written before the next is read, so memory is flat in the video's length;
objects are tracked a group at a time on each frame's shared features (`--object-chunk`), so memory is bounded in
their number too. Inputs are prepared as Meta's `SAM2VideoPredictor` prepares them (sam2 `utils/misc.py`): PIL
bicubic squash to the model's size, /255, ImageNet norm; a mask prompt bilinear + antialias then >= 0.5; points and
boxes scaled by S / W and S / H. Outputs are the low-res logits upsampled bilinearly to the video's size and
thresholded at 0 after the predictor's non-overlap rule (each pixel goes to the object with the highest logit),
which is applied to the outputs only, never to memory. The model runs in eval mode with the builders' default
post-processing (`set_eval_postprocessing`), except hole filling, which needs the compiled `sam2._C`. The prompts
come from `eval.prompts`; a `.pt` without a config is built as the one official config its weights fit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING

from sam2train.errors import MissingDependencyError, UserError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.batch import Prompts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Frame files read from a folder (any case), sorted by name with numbers compared as numbers."""

log = logging.getLogger("sam2train")


def model_config_from_weights(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """The official config whose architecture `state_dict` has (for a `.pt` that holds weights only); UserError
    naming `--model-config` when none or several fit."""
    from sam2train.model.build import official_configs_matching

    found = official_configs_matching(state_dict)
    if len(found) == 1:
        log.info(f"{path}: model config '{found[0]}' (the official config these weights fit)")
        return found[0]
    if found:
        raise UserError(
            f"--model-config is required with {path}: its weights fit several official configs "
            f"({', '.join(found)}); name one"
        )
    raise UserError(
        f"--model-config is required with {path}, which holds weights but no config and fits no official "
        "config: give the model YAML it was trained with"
    )


def _data_error(message: str) -> Exception:
    from sam2train.errors import DataError

    return DataError(message)


def _natural_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def import_av():
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            "reading video files needs PyAV: pip install 'sam2train[video]' (or extract the frames to a folder)"
        ) from exc
    return av


@dataclass
class FrameSource:
    """One video, read lazily in order: a folder of images (`paths`) or a video file (decoded with PyAV).

    name: the video's name (folder name or file stem), the output subfolder; size: (H, W) of every frame;
    length: number of frames (None when a video file does not say); fps: frame rate for overlays.
    """

    path: Path
    name: str
    size: tuple[int, int]
    length: int | None
    fps: float
    paths: list[Path] | None = None

    def frames(self) -> Iterator[np.ndarray]:
        """Frames as [H, W, 3] uint8 RGB; a frame of another size or an unreadable file raises DataError."""
        if self.paths is not None:
            for path in self.paths:
                yield self._check(_read_image(path), path)
            return
        av = import_av()
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    yield self._check(frame.to_ndarray(format="rgb24"), self.path)
        except av.FFmpegError as exc:
            raise _data_error(f"--frames {self.path}: cannot decode the video ({exc})") from exc

    def frame_name(self, index: int) -> str:
        """Output file stem of frame `index`: the image's own stem, or %05d for video files."""
        return self.paths[index].stem if self.paths is not None else f"{index:05d}"

    def _check(self, frame: np.ndarray, path: Path) -> np.ndarray:
        if frame.shape[:2] != self.size:
            raise _data_error(
                f"--frames: {path} is {frame.shape[1]}x{frame.shape[0]} (WxH), the first frame "
                f"{self.size[1]}x{self.size[0]}: all frames of a video must have one size"
            )
        return frame


def _read_image(path: Path) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise _data_error(f"--frames: cannot read image {path} ({exc})") from exc


def open_frames(path: str | Path) -> FrameSource:
    """A folder of jpg/jpeg/png frames or a video file; raises DataError naming `--frames` and the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not paths:
            raise _data_error(f"--frames {path}: no frames ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        first = _read_image(paths[0])
        return FrameSource(path, path.name, first.shape[:2], len(paths), 24.0, paths)
    if not path.is_file():
        raise _data_error(f"--frames {path}: no such folder or video file")
    av = import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _data_error(f"--frames {path}: the file has no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise _data_error(f"--frames {path}: the video has no frames")
            fps = float(stream.average_rate or 24)
            return FrameSource(path, path.stem, (first.height, first.width), stream.frames or None, fps)
    except av.FFmpegError as exc:
        raise _data_error(f"--frames {path}: not a readable video ({exc})") from exc


# ------------------------------------------------------------------------------------------------ the pass


def default_object_chunk(image_size: int, num_objects: int) -> int:
    """How many objects one SAM call tracks when `--object-chunk` is not given: as many as fit in
    `OBJECT_MEMORY_BUDGET` at `PER_OBJECT_BYTES_PER_PIXEL` bytes per input pixel each (8 at 256 px, 2 at 512 px,
    1 at 1024 px), so the working memory stays near that of Meta's predictor, which tracks one object at a time,
    however many objects a video has."""
    per_object = PER_OBJECT_BYTES_PER_PIXEL * image_size * image_size
    return max(1, min(num_objects, OBJECT_MEMORY_BUDGET // per_object))


OBJECT_MEMORY_BUDGET = 64 * 2**20
"""Bytes of per-object working memory (masks at the input size, the memory encoder's mask downsampling, the
memory attention's keys and values) one tracking call may take by default."""
PER_OBJECT_BYTES_PER_PIXEL = 128
"""That working memory per object per input pixel: ~31 MB per object at 512 px with hiera t on the CPU (peak RSS
of 16 objects in one call against groups of 4: 1.48 GB against 1.10 GB), rounded up. Groups of 1 to 4 run at
the same speed on the CPU."""


def track_frames(
    model: SAM2Base,
    source: FrameSource,
    prompts: Prompts,
    *,
    object_chunk: int | None = None,
    offload: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Prompt frame 0, then track frame by frame: yields (frame [H, W, 3] uint8, low-res logits [n, h, w]).

    One frame is read and encoded at a time, as SAM2VideoPredictor does, and only the trackers' bounded memory is
    kept between frames, so memory is flat in the video's length. The objects are tracked `object_chunk` at a
    time (default `default_object_chunk`), each group by its own tracker on the frame's shared features: the same
    masks as all at once, with the working memory of a group. `offload` keeps the memory banks in host memory.
    Only min(video length, max_obj_ptrs_in_encoder) of `num_frames` reaches SAM 2, so a video file (whose length
    is metadata, if there at all) is read that far ahead to learn it. Call under torch.inference_mode().
    """
    import torch

    from sam2train.batch import map_fields
    from sam2train.data.frames import normalize, resize_frame
    from sam2train.model.video import VideoTracker, encode_frames

    device = next(model.parameters()).device
    cap = max(model.max_obj_ptrs_in_encoder, 2)
    frames, num_frames = source.frames(), source.length
    if source.paths is None:
        head = list(islice(frames, cap))
        num_frames = len(head) if len(head) < cap else max(cap, source.length or cap)
        frames = chain(head, frames)
    n = prompts.kind.numel()
    size = object_chunk or default_object_chunk(model.image_size, n)
    groups = [slice(start, min(start + size, n)) for start in range(0, n, size)]
    trackers = [
        VideoTracker(
            model,
            num_frames,
            bptt=False,
            mask_prompt_passthrough=model.use_mask_input_as_output_without_sam,
            offload=offload,
        )
        for _ in groups
    ]
    prompts = map_fields(lambda x: x.to(device), prompts)
    for index, frame in enumerate(frames):
        image = normalize(resize_frame(frame, model.image_size)[None]).to(device)
        features = encode_frames(model, image, frozen=True)
        outs = []
        for group, tracker in zip(groups, trackers):
            at = torch.zeros(group.stop - group.start, dtype=torch.long)
            if index == 0:
                group_prompts = map_fields(lambda x, g=group: x[g], prompts)
                outs.append(tracker.prompt(0, features, group_prompts, at).low_res_logits)
            else:
                outs.append(tracker.step(index, features, at).low_res_logits)
        yield frame, torch.cat(outs)


def label_map(low_res: torch.Tensor, ids: list[int], size: tuple[int, int], chunk: int) -> np.ndarray:
    """Low-res logits [n, h, w] -> [H, W] uint8 object ids: bilinear to the video size, then each pixel to the
    object with the highest logit where that logit is > 0 (SAM 2's non-overlap rule,
    `_apply_non_overlapping_constraints`, followed by > 0), background 0. Upsampled `chunk` objects at a time with
    a running maximum, so a 1080p frame of many objects never holds every object's full-size logits."""
    import torch
    import torch.nn.functional as F

    best = index = None
    for start in range(0, low_res.shape[0], chunk):
        part = low_res[start : start + chunk, None].float()
        logits = F.interpolate(part, size=size, mode="bilinear", align_corners=False)[:, 0]
        value, which = logits.max(dim=0)
        if best is None:
            best, index = value, which
        else:  # strictly greater: ties go to the earlier object, as argmax over all of them does
            better = value > best
            best, index = torch.where(better, value, best), torch.where(better, which + start, index)
    assert best is not None and index is not None, "label_map of no object"
    labels = torch.tensor(ids, dtype=torch.uint8, device=index.device)[index]
    return labels.masked_fill_(best <= 0, 0).cpu().numpy()


def predict_video(
    model: SAM2Base,
    source: FrameSource,
    ids: list[int],
    prompts: Prompts,
    out_dir: Path,
    overlay: Path | None,
    *,
    object_chunk: int | None = None,
    offload: bool = False,
    bf16: bool = False,
) -> int:
    """Run the pass over `source`, write `<out_dir>/<name>/<frame>.png` (and the overlay); returns frame count.
    `object_chunk` and `offload` as `track_frames`; `bf16` runs the model under bf16 autocast.

    A progress bar with frames/s on a terminal (none when stderr is not one); warnings for prompted objects whose
    mask has no pixel at the model's size and for a large model input on the CPU."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from sam2train import viz

    _warn_before_tracking(model, ids, prompts)
    seq_dir = out_dir / source.name
    shown: list[np.ndarray] = []  # overlay frames: save_gif / save_mp4 take the whole sequence
    count = 0
    device = next(model.parameters()).device.type
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        chunk = object_chunk or default_object_chunk(model.image_size, len(ids))
        frames = track_frames(model, source, prompts, object_chunk=chunk, offload=offload)
        bar = tqdm(
            frames, total=source.length, desc=source.name, unit="frame", disable=None, dynamic_ncols=True
        )
        for frame, low_res in bar:
            labels = label_map(low_res, ids, source.size, chunk)
            viz.save_palette_png(seq_dir / f"{source.frame_name(count)}.png", labels)
            if overlay is not None:
                shown.append(viz.overlay(frame, labels[None] == np.array(ids)[:, None, None], ids))
            count += 1
    if overlay is not None:
        (viz.save_gif if overlay.suffix.lower() == ".gif" else viz.save_mp4)(overlay, shown, fps=source.fps)
    return count


def _warn_before_tracking(model: SAM2Base, ids: list[int], prompts: Prompts) -> None:
    """Say before the first frame what would otherwise go unnoticed: objects whose prompt mask vanished at the
    model's input size (they start empty), and a slow pass (a large input on the CPU, many objects)."""
    from sam2train.eval.prompts import vanished_objects

    size = model.image_size
    gone = vanished_objects(ids, prompts)
    if gone:
        log.warning(
            f"object(s) {gone}: the prompt mask has no pixel left at the model's {size} px input, so tracking "
            "starts from an empty mask; a larger --image-size keeps small objects"
        )
    if next(model.parameters()).device.type == "cpu" and size >= 512:
        log.warning(
            f"tracking {len(ids)} object(s) at {size} px on the CPU: expect seconds to minutes per frame, "
            "growing with the number of objects (--device cuda is much faster)"
        )
