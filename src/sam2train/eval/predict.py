"""`sam2train predict`: track first-frame prompts through a video with our video pass and write DAVIS palette PNGs.

The pass is `VideoTracker` (the forward that training and validation use), streamed: frames are read lazily,
encoded `chunk` at a time, tracked one by one, and written before the next chunk is read, so memory stays bounded
whatever the video's length. Inputs are prepared as Meta's `SAM2VideoPredictor` prepares them (sam2 `utils/misc.py`): PIL
bicubic squash to the model's size, /255, ImageNet norm; a mask prompt bilinear + antialias then >= 0.5; points and
boxes scaled by S / W and S / H. Outputs are the low-res logits upsampled bilinearly to the video's size and
thresholded at 0 after the predictor's non-overlap rule (each pixel goes to the object with the highest logit),
which is applied to the outputs only, never to memory. The model runs in eval mode with the builders' default
post-processing (`set_eval_postprocessing`), except hole filling, which needs the compiled `sam2._C`.
"""

from __future__ import annotations

import argparse
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
PROMPT_FLAGS = ("--prompt-mask", "--points", "--box")


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


# ------------------------------------------------------------------------------------------------ prompts


def read_mask_prompt(path: str | Path, size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """Objects of a first-frame mask PNG -> (ids, masks [K, H, W] bool), read under the label-PNG rule of
    `sam2train.data.labels`: palette or grayscale values are object ids (255 void), a grayscale or 1-bit mask
    holding only 0 and 255 is object 1; a grayscale image saved as RGB reads as grayscale. The PNG must have
    the frames' size."""
    import numpy as np

    from sam2train.data.labels import label_ids, read_labels
    from sam2train.errors import DataError

    path = Path(path).expanduser()
    if not path.is_file():
        raise _data_error(f"--prompt-mask {path}: file not found")
    try:
        labels = read_labels(path, gray_rgb=True)
    except DataError as exc:
        raise _data_error(f"--prompt-mask {path}: {str(exc).replace(f' {path}', '', 1)}") from None
    if labels.shape != size:
        raise _data_error(
            f"--prompt-mask {path}: {labels.shape[1]}x{labels.shape[0]} (WxH) but the frames are "
            f"{size[1]}x{size[0]}"
        )
    ids = label_ids(labels)
    if not ids:
        raise _data_error(f"--prompt-mask {path}: empty mask (every pixel is 0 or void): no object to track")
    if max(ids) > 254:
        raise _data_error(f"--prompt-mask {path}: values up to {max(ids)}; object ids must be 1..254")
    return ids, np.stack([labels == i for i in ids])


def _numbers(text: str, count: int, flag: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UserError(f"{flag} '{text}': expected {what}")
    return values


def parse_points(text: str, size: tuple[int, int]) -> tuple[list[list[float]], list[int]]:
    """`"x,y,label;..."` in original pixels (label 1 positive, 0 negative) -> (coords [[x, y], ...], labels)."""
    height, width = size
    coords, labels = [], []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        x, y, label = _numbers(item, 3, "--points", "'x,y,label' with label 1 (positive) or 0 (negative)")
        if label not in (0, 1):
            raise UserError(f"--points '{item}': label must be 1 (positive) or 0 (negative), got {label:g}")
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--points '{item}': ({x:g}, {y:g}) lies outside the {width}x{height} frame")
        coords.append([x, y])
        labels.append(int(label))
    if not coords:
        raise UserError(f"--points '{text}': no point given; expected 'x,y,label;x,y,label;...'")
    return coords, labels


def parse_box(text: str, size: tuple[int, int]) -> list[float]:
    """`"x0,y0,x1,y1"` in original pixels -> [x0, y0, x1, y1]; must lie in the frame with x0 < x1, y0 < y1."""
    height, width = size
    x0, y0, x1, y1 = _numbers(text, 4, "--box", "'x0,y0,x1,y1' in pixels")
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UserError(f"--box '{text}': needs 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    return [x0, y0, x1, y1]


def model_prompts(
    args: argparse.Namespace, size: tuple[int, int], image_size: int
) -> tuple[list[int], Prompts]:
    """The one prompt of `args` on frame 0 -> (object ids, Prompts at the model input, as the predictor maps
    them: masks bilinear + antialias >= 0.5; coordinates / (W, H) * S)."""
    import torch

    from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts
    from sam2train.data.transforms import resize_masks

    scale = torch.tensor([size[1], size[0]], dtype=torch.float32)
    coords, labels, boxes = torch.zeros(1, 1, 2), torch.full((1, 1), -1), torch.zeros(1, 4)
    masks = torch.zeros(1, image_size, image_size)
    if args.prompt_mask is not None:
        ids, raw = read_mask_prompt(args.prompt_mask, size)
        masks = resize_masks(torch.from_numpy(raw), image_size).float()
        k = len(ids)
        kind = torch.full((k,), PROMPT_MASK)
        coords, labels, boxes = coords.expand(k, 1, 2), labels.expand(k, 1), boxes.expand(k, 4)
    elif args.points is not None:
        ids, kind = [1], torch.tensor([PROMPT_POINT])
        points, point_labels = parse_points(args.points, size)
        coords = (torch.tensor(points, dtype=torch.float32) / scale * image_size)[None]
        labels = torch.tensor([point_labels])
    else:
        ids, kind = [1], torch.tensor([PROMPT_BOX])
        box = torch.tensor(parse_box(args.box, size), dtype=torch.float32).view(2, 2)
        boxes = (box / scale * image_size).view(1, 4)
    return ids, Prompts(kind=kind, point_coords=coords, point_labels=labels, boxes=boxes, masks=masks)


# ------------------------------------------------------------------------------------------------ the pass


def track_frames(
    model: SAM2Base, source: FrameSource, prompts: Prompts, chunk: int = 8
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Prompt frame 0, then track frame by frame: yields (frame [H, W, 3] uint8, low-res logits [n, h, w]).

    Frames are encoded `chunk` at a time and only the tracker's bounded memory is kept between chunks. Only
    min(video length, max_obj_ptrs_in_encoder) of `num_frames` reaches SAM 2, so a video file (whose length is
    metadata, if there at all) is read that far ahead to learn it. Call under torch.inference_mode().
    """
    import torch

    from sam2train.batch import map_fields
    from sam2train.data.transforms import normalize, resize_frame
    from sam2train.model.video import VideoTracker, encode_frames

    device = next(model.parameters()).device
    cap = max(model.max_obj_ptrs_in_encoder, 2)
    frames, num_frames = source.frames(), source.length
    if source.paths is None:
        head = list(islice(frames, cap))
        num_frames = len(head) if len(head) < cap else max(cap, source.length or cap)
        frames = chain(head, frames)
    tracker = VideoTracker(
        model, num_frames, bptt=False, mask_prompt_passthrough=model.use_mask_input_as_output_without_sam
    )
    prompts = map_fields(lambda x: x.to(device), prompts)
    n, index = prompts.kind.numel(), 0
    while batch := list(islice(frames, chunk)):
        images = torch.stack([resize_frame(f, model.image_size) for f in batch])
        features = encode_frames(model, normalize(images).to(device), frozen=True)
        for j, frame in enumerate(batch):
            at = torch.full((n,), j, dtype=torch.long)
            out = (
                tracker.prompt(0, features, prompts, at) if index == 0 else tracker.step(index, features, at)
            )
            yield frame, out.low_res_logits
            index += 1


def label_map(model: SAM2Base, low_res: torch.Tensor, ids: list[int], size: tuple[int, int]) -> np.ndarray:
    """Low-res logits [n, h, w] -> [H, W] uint8 object ids: bilinear to the video size, the predictor's
    non-overlap rule (`_apply_non_overlapping_constraints`), then > 0; background 0."""
    import numpy as np
    import torch.nn.functional as F

    logits = F.interpolate(low_res[:, None].float(), size=size, mode="bilinear", align_corners=False)
    masks = (model._apply_non_overlapping_constraints(logits)[:, 0] > 0).cpu().numpy()
    out = np.zeros(size, dtype=np.uint8)
    for obj_id, mask in sorted(zip(ids, masks), key=lambda p: -p[0]):  # smaller ids on top, as Meta's tools
        out[mask] = obj_id
    return out


def predict_video(
    model: SAM2Base,
    source: FrameSource,
    ids: list[int],
    prompts: Prompts,
    out_dir: Path,
    overlay: Path | None,
) -> int:
    """Run the pass over `source`, write `<out_dir>/<name>/<frame>.png` (and the overlay); returns frame count."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from sam2train import viz

    seq_dir = out_dir / source.name
    shown: list[np.ndarray] = []  # overlay frames: save_gif / save_mp4 take the whole sequence
    count = 0
    with torch.inference_mode():
        bar = tqdm(track_frames(model, source, prompts), total=source.length, desc=source.name, unit="frame")
        for frame, low_res in bar:
            labels = label_map(model, low_res, ids, source.size)
            viz.save_palette_png(seq_dir / f"{source.frame_name(count)}.png", labels)
            if overlay is not None:
                shown.append(viz.overlay(frame, labels[None] == np.array(ids)[:, None, None], ids))
            count += 1
    if overlay is not None:
        (viz.save_gif if overlay.suffix.lower() == ".gif" else viz.save_mp4)(overlay, shown, fps=source.fps)
    return count


# ------------------------------------------------------------------------------------------------ CLI
