"""Dataset readers, one per storage format, behind `VideoSource` (see source_base.py), and `open_source`.

This file holds the DAVIS/MOSE folder reader and the helpers every reader shares; the COCO-video and SA-V
JSON readers are in sources_json.py, the YouTube-VOS reader (DAVIS folders plus `meta.json`) in sources_ytvos.py. Every reader lists and validates its videos at construction (in the main
process, before training) and reads one frame per call afterwards, holding no open file, so it pickles into
data workers.

Conventions shared by all readers:
- object ids are positive ints (0 is background); `FrameMasks.ids` holds the objects visible on that frame,
  and an object absent from an annotated frame reads as an empty mask (`FrameMasks.get`);
- a frame without masks is unannotated, never empty;
- a video that cannot be used as a whole (no object in any annotated frame, or annotations without frames) is
  skipped: `source.skipped` maps its name to the reason, and all of them are listed in one warning;
- a mask off its frame's size by at most `SIZE_TOLERANCE` px per side is resized (nearest) with a warning
  naming the file; a larger mismatch is a DataError.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sam2train.data.sources.base import FrameMasks, FrameRef, VideoInfo, VideoSource
from sam2train.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VOID_ID = 255
"""DAVIS palette index for pixels excluded from the loss."""
SIZE_TOLERANCE = 2
"""A mask off its frame by at most this many px per side is resized (with a warning); more is an error."""
MASK_MODES = ("P", "L", "1", "I", "I;16")
_RESOLUTION = re.compile(r"^(\d+p|Full-Resolution)$", re.IGNORECASE)
_PREFERRED_RESOLUTION = "480p"
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# -------------------------------------------------------------------------------------------- shared helpers
def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(height, width) of an image from its header only; DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    return height, width


def load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A whole frame as [H, W, 3] uint8 RGB; DataError naming the file on any failure or size change."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if arr.shape[:2] != tuple(size):
        raise DataError(
            f"image {path} is {arr.shape[1]}x{arr.shape[0]}, but its video is {size[1]}x{size[0]}"
        )
    return arr


def mask_needs_resize(mask_hw: tuple[int, ...], frame_hw: tuple[int, ...], where: str) -> bool:
    """False when sizes match; True (after a warning naming `where`) when off by <= SIZE_TOLERANCE px per
    side; DataError otherwise. Sizes are (height, width)."""
    if tuple(mask_hw) == tuple(frame_hw):
        return False
    (mh, mw), (fh, fw) = mask_hw, frame_hw
    if abs(mh - fh) <= SIZE_TOLERANCE and abs(mw - fw) <= SIZE_TOLERANCE:
        warnings.warn(
            f"{where}: mask is {mw}x{mh} but its frame is {fw}x{fh}; resized with nearest neighbour",
            UserWarning,
            stacklevel=3,
        )
        return True
    raise DataError(
        f"{where}: mask is {mw}x{mh} but its frame is {fw}x{fh} (more than {SIZE_TOLERANCE} px off)"
    )


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a [h, w] label or bool array to `size` (height, width), any dtype."""
    rows = np.arange(size[0]) * arr.shape[0] // size[0]
    cols = np.arange(size[1]) * arr.shape[1] // size[1]
    return arr[rows[:, None], cols[None, :]]


def select_videos(names: Sequence[str], wanted: Sequence[str] | None, path: Path) -> list[str]:
    """`names` filtered to `wanted`, in dataset order; an unknown name is a DataError naming the closest."""
    if wanted is None:
        return list(names)
    known = set(names)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(str(name), list(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{path}: no video named '{name}'{hint}")
    keep = set(wanted)
    return [n for n in names if n in keep]


def frame_indices(stems: Sequence[str]) -> list[int]:
    """Frame index per (sorted) stem: the stem's integer when every stem is numeric, else the position."""
    if stems and all(s.isdigit() for s in stems):
        return [int(s) for s in stems]
    return list(range(len(stems)))


def sort_stems(paths: Sequence[Path]) -> list[Path]:
    """Sort files by numeric stem when all stems are numeric (so 10 follows 9), else by name."""
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: (int(p.stem), p.name))
    return sorted(paths, key=lambda p: p.name)


def check_frame_sizes(frames: Sequence[Path]) -> tuple[int, int]:
    """Read every frame's header; all must have the first frame's size. Returns (height, width)."""
    size = image_size(frames[0], "frame")
    for path in frames[1:]:
        other = image_size(path, "frame")
        if other != size:
            raise DataError(
                f"frame {path} is {other[1]}x{other[0]} but {frames[0].name} is {size[1]}x{size[0]}: "
                "the frames of a video must share one size"
            )
    return size


def finish(videos: list[VideoInfo], skipped: dict[str, str], path: Path) -> list[VideoInfo]:
    """Warn once about every skipped video; DataError when nothing usable is left."""
    listing = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    if not videos:
        raise DataError(f"{path}: no usable video" + (f" ({listing})" if listing else ""))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} video(s): {listing}", UserWarning, stacklevel=3)
    return videos


def stack_masks(
    objects: dict[int, np.ndarray], size: tuple[int, int], void: np.ndarray | None = None
) -> FrameMasks:
    """FrameMasks from {id: [H, W] bool}, keeping the non-empty masks, ids sorted."""
    ids = sorted(i for i, m in objects.items() if m.any())
    masks = np.stack([objects[i] for i in ids]) if ids else np.zeros((0, *size), dtype=bool)
    return FrameMasks(
        ids=np.asarray(ids, dtype=np.int64),
        masks=masks.astype(bool, copy=False),
        void=np.zeros(size, dtype=bool) if void is None else void,
    )


class ImageFileSource(VideoSource):
    """Shared part of the readers: frames are image files; `skipped` lists the videos left out and why."""

    skipped: dict[str, str]

    def load_image(self, video: VideoInfo, pos: int) -> np.ndarray:
        """Frame at position `pos` of `video` as [H, W, 3] uint8 RGB."""
        return load_rgb(video.frames[pos].image, video.size)

    @staticmethod
    def _annotated_frame(video: VideoInfo, pos: int) -> FrameRef:
        frame = video.frames[pos]
        if not frame.annotated:
            raise DataError(
                f"video {video.name}: frame {frame.image.name} has no masks (it is not annotated)"
            )
        return frame


# ---------------------------------------------------------------------------------------------- DAVIS / MOSE
def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_resolution_level(folder: Path) -> bool:
    """A folder whose subfolders are all named like `480p` / `Full-Resolution` and hold folders themselves."""
    subs = _subdirs(folder)
    return bool(subs) and all(_RESOLUTION.match(s.name) and _subdirs(s) for s in subs)


def _pick_resolution(images: Path, wanted: str | None) -> str | None:
    if not _is_resolution_level(images):
        if wanted is not None:
            raise DataError(f"{images}: no resolution subfolders, but resolution '{wanted}' was asked for")
        return None
    names = [s.name for s in _subdirs(images)]
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{images}: no resolution subfolder '{wanted}' (found {names})")
        return wanted
    if len(names) == 1:
        return names[0]
    if _PREFERRED_RESOLUTION in names:
        return _PREFERRED_RESOLUTION
    raise DataError(f"{images}: several resolution subfolders {names}; pass resolution= to pick one")


def _list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DataError(f"two frames with stem '{p.stem}' in {folder}: {seen[p.stem].name} and {p.name}")
        seen[p.stem] = p
    return sort_stems(files)


def _list_masks(folder: Path) -> dict[str, list[tuple[int | None, Path]]]:
    """stem -> [(object folder id, or None for a multi-object PNG, path)] for a video's annotation folder."""
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")]
    objs = _subdirs(folder)
    if pngs and objs:
        raise DataError(f"{folder}: holds both mask PNGs and object folders; use one layout per video")
    out: dict[str, list[tuple[int | None, Path]]] = {p.stem: [(None, p)] for p in pngs}
    for obj in objs:
        if not obj.name.isdigit():
            raise DataError(f"{obj}: object folder names must be integers (e.g. 000, 001), got '{obj.name}'")
        for p in obj.glob("*.png"):
            out.setdefault(p.stem, []).append((int(obj.name), p))
    return out


def _mask_header(path: Path) -> tuple[tuple[int, int], set[int]]:
    """(height, width) and the set of pixel values of a mask PNG."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DataError(
                    f"mask {path} has mode {im.mode}; expected palette (P) or grayscale (L, 1, I)"
                )
            colors = im.getcolors(1 << 16)
            values = {int(c) for _, c in colors} if colors is not None else set(np.unique(im).tolist())
            return (im.height, im.width), values
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as a [H, W] integer label array (mode 1 reads as 0/255); DataError naming the file."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DataError(
                    f"mask {path} has mode {im.mode}; expected palette (P) or grayscale (L, 1, I)"
                )
            return np.array(im.convert("L") if im.mode == "1" else im)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None


class DavisSource(ImageFileSource):
    """DAVIS / MOSE / SA-V-val folders: `<root>/JPEGImages/[480p/]<video>/<frame>.jpg|jpeg|png` with masks
    in `<root>/Annotations/[480p/]<video>/<frame>.png` (one PNG per frame) or `.../<video>/<obj>/<frame>.png`
    (one folder per object).

    Mask kinds, decided per video: palette or grayscale label PNGs (pixel value = object id, 0 background, 255
    void); a video whose masks hold only 0 and 255 is binary (DAVIS-2016): 255 is object 1, not void. In the
    per-object layout any value > 0 is the object, and the folder name is its id, so folders named by palette
    id give the palette layout's ids; when some folder of the dataset is `0`/`000` (SA-V val, 0-based) every
    id is folder + 1, as in Meta's loader (`object_id_offset`). Masks match frames by file stem; a frame
    without a mask is unannotated.

    A resolution level (`480p`, `Full-Resolution`) is descended into when it is the only one, or `480p` when
    there are several, unless `resolution` names one. A video with annotations but no frames folder is skipped
    (listed in `skipped` and in the warning), as is one without any object.
    """

    layout = "DAVIS layout: <root>/JPEGImages/<video>/<frame>.jpg and <root>/Annotations/<video>/<frame>.png"

    def __init__(self, root: str | Path, videos: Sequence[str] | None = None, resolution: str | None = None):
        self._open_root(root, resolution)
        names = sorted(
            {d.name for d in _subdirs(self.image_root)} | {d.name for d in _subdirs(self.mask_root)}
        )
        found = self._scan_videos(select_videos(names, videos, self.path))
        self.videos = finish(found, self.skipped, self.path)

    def _open_root(self, root: str | Path, resolution: str | None) -> None:
        """Check the two folders, pick the resolution level, and start empty listings."""
        self.path = Path(root)
        images, annotations = self.path / "JPEGImages", self.path / "Annotations"
        for folder in (self.path, images, annotations):
            if not folder.is_dir():
                raise DataError(f"dataset folder not found: {folder} ({self.layout})")
        self.resolution = _pick_resolution(images, resolution)
        if self.resolution is not None:
            images = images / self.resolution
            if (annotations / self.resolution).is_dir():
                annotations = annotations / self.resolution
            elif _is_resolution_level(annotations):
                raise DataError(f"{annotations}: no '{self.resolution}' subfolder to match {images}")
        self.image_root, self.mask_root = images, annotations
        self._masks: dict[str, dict[int, tuple[tuple[int | None, Path], ...]]] = {}
        self._binary: set[str] = set()
        self._resize: set[Path] = set()
        self.skipped: dict[str, str] = {}

    def _scan_videos(self, names: Sequence[str]) -> list[VideoInfo]:
        """VideoInfo of each usable video of `names`; the others go to `skipped` with the reason."""
        listed = {n: _list_masks(self.mask_root / n) for n in names if (self.mask_root / n).is_dir()}
        folder_ids = {obj for masks in listed.values() for entries in masks.values() for obj, _ in entries}
        self.object_id_offset = 1 if 0 in folder_ids else 0
        found = []
        for name in names:
            info = self._scan(name, listed.get(name))
            if isinstance(info, str):
                self.skipped[name] = info
            else:
                found.append(info)
        return found

    def _check_video(self, name: str, frames: list[Path], stem_ids: dict[str, set[int]]) -> None:
        """Hook for formats that index their videos elsewhere too (YouTube-VOS `meta.json`): DataError when
        that index disagrees with the files. `stem_ids`: object ids on each annotated frame, by file stem."""

    def _scan(self, name: str, masks: dict[str, list[tuple[int | None, Path]]] | None) -> VideoInfo | str:
        """The video's VideoInfo, or the reason to skip it."""
        img_dir = self.image_root / name
        if not img_dir.is_dir():
            return f"annotations but no frames folder {img_dir}"
        frames = _list_images(img_dir)
        if not frames:
            return f"no .jpg/.jpeg/.png frames in {img_dir}"
        if masks is None:
            return f"no annotation folder {self.mask_root / name}"
        if not masks:
            return f"no mask PNGs in {self.mask_root / name}"
        size = check_frame_sizes(frames)
        pos_of = {p.stem: i for i, p in enumerate(frames)}
        for stem, entries in masks.items():
            if stem not in pos_of:
                raise DataError(f"mask {entries[0][1]} has no frame: no {img_dir / stem}.jpg|.jpeg|.png")
        values: dict[str, list[tuple[int | None, set[int]]]] = {}
        for stem, entries in masks.items():
            for obj, path in entries:
                mask_hw, vals = _mask_header(path)
                if mask_needs_resize(mask_hw, size, f"video {name}: {path}"):
                    self._resize.add(path)
                values.setdefault(stem, []).append((obj, vals))
        stem_ids = self._stem_ids(name, values)
        self._check_video(name, frames, stem_ids)
        ids = sorted(set().union(*stem_ids.values()))
        if not ids:
            return "no object in any annotated frame"
        self._masks[name] = {
            pos_of[stem]: tuple((None if o is None else o + self.object_id_offset, p) for o, p in entries)
            for stem, entries in masks.items()
        }
        indices = frame_indices([p.stem for p in frames])
        refs = [FrameRef(index=i, image=p, annotated=p.stem in masks) for i, p in zip(indices, frames)]
        return VideoInfo(name=name, frames=refs, size=size, object_ids=ids)

    def _stem_ids(
        self, name: str, values: dict[str, list[tuple[int | None, set[int]]]]
    ) -> dict[str, set[int]]:
        """Object ids per frame stem from the masks' pixel values (marks binary videos)."""
        if any(obj is None for entries in values.values() for obj, _ in entries):  # one label PNG per frame
            every = set().union(*(vals for entries in values.values() for _, vals in entries))
            if every <= {0, VOID_ID} and VOID_ID in every:
                self._binary.add(name)
                return {s: {1} if VOID_ID in es[0][1] else set() for s, es in values.items()}
            return {s: es[0][1] - {0, VOID_ID} for s, es in values.items()}
        offset = self.object_id_offset
        return {
            s: {obj + offset for obj, vals in es if obj is not None and vals - {0}}
            for s, es in values.items()
        }

    def _read(self, path: Path, size: tuple[int, int], video: str) -> np.ndarray:
        arr = read_mask(path)
        if arr.shape != tuple(size):
            if path not in self._resize:
                mask_needs_resize(arr.shape, size, f"video {video}: {path}")
            arr = resize_nearest(arr, size)
        return arr

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at `pos`: [K, H, W] bool per visible object, void where the value is
        255 (label PNGs of non-binary videos)."""
        self._annotated_frame(video, pos)
        entries = self._masks[video.name][pos]
        size = video.size
        if entries[0][0] is None:
            labels = self._read(entries[0][1], size, video.name)
            if video.name in self._binary:
                return stack_masks({1: labels == VOID_ID}, size)
            ids = [int(v) for v in np.unique(labels) if v not in (0, VOID_ID)]
            return stack_masks({i: labels == i for i in ids}, size, void=labels == VOID_ID)
        objects = {obj: self._read(path, size, video.name) > 0 for obj, path in entries if obj is not None}
        return stack_masks(objects, size)


# ---------------------------------------------------------------------------------------------- entry point
FORMATS = ("davis", "coco_video", "sav", "youtube_vos")


def _detect(path: Path) -> tuple[str, object]:
    """(format, parsed JSON or None) for a dataset path."""
    from sam2train.data.sources.json_formats import read_json

    if path.is_dir():
        has_folders = (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir()
        if has_folders and (path / "meta.json").is_file():
            return "youtube_vos", None
        if not (path / "JPEGImages").is_dir() and (
            any(path.glob("*_manual.json")) or any(path.glob("*_auto.json"))
        ):
            return "sav", None
        return "davis", None
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: not a dataset folder or a .json file")
    data = read_json(path)
    if isinstance(data, dict) and "masklet" in data:
        return "sav", data
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        images = data["images"]
        if isinstance(images, list) and (
            not images or (isinstance(images[0], dict) and "video_id" in images[0])
        ):
            return "coco_video", data
        raise DataError(f"{path}: looks like COCO but images[0] has no 'video_id'; a video dataset needs one")
    keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise DataError(
        f"{path}: unknown JSON layout (top level: {keys}); expected COCO-video ('images', 'annotations' with "
        "'video_id') or SA-V ('masklet')"
    )


def open_source(
    path: str | Path,
    format: str | None = None,
    images_root: str | Path | None = None,
    videos: Sequence[str] | None = None,
) -> VideoSource:
    """The reader for `path`: a DAVIS-layout folder, a YouTube-VOS folder, a COCO-video JSON, or an SA-V JSON /
    folder of JSONs.

    format: davis | coco_video | sav | youtube_vos, detected when None (a folder with `meta.json` beside
    JPEGImages/ and Annotations/ -> youtube_vos; a folder of `*_manual.json` / `*_auto.json` without
    JPEGImages -> sav; another folder -> davis; JSON -> by its keys). images_root: where JSON formats find frames
    (default: the JSON's folder). videos: keep only these videos (an unknown name is a DataError).
    """
    from sam2train.data.sources.json_formats import CocoVideoSource, SavSource
    from sam2train.data.sources.youtube_vos import YouTubeVosSource

    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    data = None
    if format is None:
        format, data = _detect(path)
    if format in ("davis", "youtube_vos") and images_root is not None:
        raise DataError(
            f"{path}: images_root applies to JSON formats only; {format} frames are in JPEGImages"
        )
    if format == "davis":
        return DavisSource(path, videos=videos)
    if format == "youtube_vos":
        return YouTubeVosSource(path, videos=videos)
    if format == "coco_video":
        return CocoVideoSource(path, images_root=images_root, videos=videos, data=data)
    if format == "sav":
        return SavSource(path, images_root=images_root, videos=videos, data=data)
    raise DataError(f"{path}: unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
