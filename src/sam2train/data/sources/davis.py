"""DAVIS / MOSE / SA-V-val folders: frames in `JPEGImages/`, label PNGs (or per-object PNG folders) in
`Annotations/`, read under the label-PNG rule of `sam2train.data.labels`.

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

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2train.data.labels import VOID_ID, is_binary, label_ids, read_label_png, to_labels
from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoCheck, VideoInfo
from sam2train.data.sources.files import (
    IMAGE_EXTS,
    ImageFileSource,
    check_mask_size,
    check_numbering,
    finish,
    frame_indices,
    frame_size,
    mask_needs_resize,
    probe_masks,
    resize_nearest,
    select_videos,
    sort_stems,
    stack_masks,
    subdirs,
)
from sam2train.errors import DataError

MAX_IDS_PER_MASK = 100
"""More distinct ids than this in one label PNG: its values are not ids (an anti-aliased or JPEG-saved mask)."""
IMAGES_DIR, MASKS_DIR = "JPEGImages", "Annotations"
"""The folder names read by default; `images` / `masks` are read instead when only they exist."""
_DETECTED = {IMAGES_DIR: "images", MASKS_DIR: "masks"}
log = logging.getLogger("sam2train")
_RESOLUTION = re.compile(r"^(\d+p|Full-Resolution)$", re.IGNORECASE)
_PREFERRED_RESOLUTION = "480p"
_Masks = dict[str, list[tuple[int | None, Path]]]
"""Frame stem -> [(object folder id, or None for a label PNG, file)]."""
_Values = dict[str, list[tuple[int | None, Path, str, set[int]]]]
"""Frame stem -> [(object folder id or None, file, mode, pixel values)]."""


def is_resolution_level(folder: Path) -> bool:
    """A folder whose subfolders are all named like `480p` / `Full-Resolution` and hold folders themselves."""
    subs = subdirs(folder)
    return bool(subs) and all(_RESOLUTION.match(s.name) and subdirs(s) for s in subs)


def pick_resolution(images: Path, wanted: str | None) -> str | None:
    """The resolution level to read below `images` (None: there is none)."""
    if not is_resolution_level(images):
        if wanted is not None:
            raise DataError(f"{images}: no resolution subfolders, but resolution '{wanted}' was asked for")
        return None
    names = [s.name for s in subdirs(images)]
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{images}: no resolution subfolder '{wanted}' (found {names})")
        return wanted
    if len(names) == 1:
        return names[0]
    if _PREFERRED_RESOLUTION in names:
        return _PREFERRED_RESOLUTION
    raise DataError(f"{images}: several resolution subfolders {names}; pass resolution= to pick one")


def layout_dirs(root: Path, images_dir: str | None, masks_dir: str | None) -> tuple[str, str, str]:
    """(images folder, masks folder, the info line when a name was detected, else ''). A name not given is the
    default (`JPEGImages`, `Annotations`), or `images` / `masks` when that exists and the default does not."""
    found, said = [], []
    for given, default in ((images_dir, IMAGES_DIR), (masks_dir, MASKS_DIR)):
        other = _DETECTED[default]
        if given is None and not (root / default).is_dir() and (root / other).is_dir():
            found.append(other)
            said.append(f"'{other}' for {default}")
        else:
            found.append(given or default)
    detected = f"reading {' and '.join(said)} (data.images_dir / data.masks_dir name them)" if said else ""
    return found[0], found[1], detected


def _list_images(folder: Path, video: str, sink: ProblemSink) -> list[Path]:
    """The frames of a folder sorted by stem; two frames with one stem are an error (the first is kept)."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            pair = f"{seen[p.stem].name} and {p.name}"
            sink.error(
                f"two frames with stem '{p.stem}': {pair}",
                p,
                video,
                loading=f"two frames with stem '{p.stem}' in {folder}: {pair}",
            )
            continue
        seen[p.stem] = p
    return sort_stems(list(seen.values()))


def _list_masks(folder: Path) -> _Masks:
    """The mask files of a video's annotation folder (one label PNG per frame, or one folder per object)."""
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")]
    objs = subdirs(folder)
    if pngs and objs:
        raise DataError(f"{folder}: holds both mask PNGs and object folders; use one layout per video")
    out: _Masks = {p.stem: [(None, p)] for p in pngs}
    for obj in objs:
        if not obj.name.isdigit():
            raise DataError(f"{obj}: object folder names must be integers (e.g. 000, 001), got '{obj.name}'")
        for p in obj.glob("*.png"):
            out.setdefault(p.stem, []).append((int(obj.name), p))
    return out


class DavisSource(ImageFileSource):
    """DAVIS / MOSE / SA-V-val folders: `<root>/JPEGImages/[480p/]<video>/<frame>.jpg|jpeg|png` with masks
    in `<root>/Annotations/[480p/]<video>/<frame>.png` (one PNG per frame) or `.../<video>/<obj>/<frame>.png`
    (one folder per object).

    Label PNGs follow `sam2train.data.labels` (pixel value = object id, 0 background, 255 void), with the
    binary decision taken per video: a video of grayscale masks holding only 0 and 255 is binary (DAVIS-2016):
    255 is object 1, not void. In the per-object layout any value > 0 is the object, and the folder name is its
    id, so folders named by palette id give the palette layout's ids; when some folder of the dataset is
    `0`/`000` (SA-V val, 0-based) every id is folder + 1, as in Meta's loader (`object_id_offset`). Masks match
    frames by file stem; a frame without a mask is unannotated.

    A resolution level (`480p`, `Full-Resolution`) is descended into when it is the only one, or `480p` when
    there are several, unless `resolution` names one. A video with annotations but no frames folder is skipped
    (listed in `skipped` and in the warning), as is one without any object.
    """

    layout = "DAVIS layout: <root>/JPEGImages/<video>/<frame>.jpg and <root>/Annotations/<video>/<frame>.png"

    def __init__(
        self,
        root: str | Path,
        videos: Sequence[str] | None = None,
        resolution: str | None = None,
        sink: ProblemSink = LOADING,
        images_dir: str | None = None,
        masks_dir: str | None = None,
    ):
        """`images_dir` / `masks_dir`: the two folder names (`data.images_dir` / `data.masks_dir`); None reads
        `JPEGImages` / `Annotations`, or `images` / `masks` when only those exist (said in `detected`)."""
        self._open_root(root, resolution, sink, images_dir, masks_dir)
        names = sorted({d.name for d in subdirs(self.image_root)} | {d.name for d in subdirs(self.mask_root)})
        found = self._scan_videos(select_videos(names, videos, self.path), sink)
        self.videos = finish(found, self.skipped, self.path, sink)

    def _open_root(
        self,
        root: str | Path,
        resolution: str | None,
        sink: ProblemSink,
        images_dir: str | None = None,
        masks_dir: str | None = None,
    ) -> None:
        """Check the two folders (named, or found, see `layout_dirs`), pick the resolution level, and start
        empty listings."""
        self.path = Path(root)
        images_dir, masks_dir, self.detected = layout_dirs(self.path, images_dir, masks_dir)
        if self.detected and not sink.record:
            log.info("%s: %s", self.path, self.detected)
        images, annotations = self.path / images_dir, self.path / masks_dir
        self.layout = type(self).layout.replace(IMAGES_DIR, images_dir).replace(MASKS_DIR, masks_dir)
        for folder in (images, annotations):
            if not folder.is_dir():
                message = f"dataset folder not found ({self.layout})"
                sink.fatal(message, folder, loading=f"dataset folder not found: {folder} ({self.layout})")
        self.resolution = pick_resolution(images, resolution)
        if self.resolution is not None:
            images = images / self.resolution
            if (annotations / self.resolution).is_dir():
                annotations = annotations / self.resolution
            elif is_resolution_level(annotations):
                raise DataError(f"{annotations}: no '{self.resolution}' subfolder to match {images}")
        self.image_root, self.mask_root = images, annotations
        self._masks: dict[str, dict[int, tuple[tuple[int | None, Path], ...]]] = {}
        self._binary: set[str] = set()
        self._resize: set[Path] = set()
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []

    def _scan_videos(self, names: Sequence[str], sink: ProblemSink) -> list[VideoInfo]:
        """VideoInfo of each usable video of `names`; the others go to `skipped` with the reason."""
        listed: dict[str, _Masks | None] = {}
        broken: set[str] = set()
        for name in names:
            try:
                listed[name] = (
                    _list_masks(self.mask_root / name) if (self.mask_root / name).is_dir() else None
                )
            except DataError as exc:
                sink.error(str(exc), self.mask_root / name, name, loading=str(exc))
                broken.add(name)
        folder_ids = {o for masks in listed.values() if masks for es in masks.values() for o, _ in es}
        self.object_id_offset = 1 if 0 in folder_ids else 0
        found: list[VideoInfo] = []
        for name in names:
            check = VideoCheck(name, self.image_root / name, broken=name in broken)
            self._listed(check, self._scan(check, listed.get(name), sink), found)
        return found

    def _check_video(
        self, check: VideoCheck, frames: list[Path], stem_ids: dict[str, set[int]], sink: ProblemSink
    ) -> bool:
        """Hook for formats that index their videos elsewhere too (YouTube-VOS `meta.json`): report where that
        index disagrees with the files; False when the video cannot be used. `stem_ids`: object ids on each
        annotated frame, by file stem."""
        return True

    def _scan(self, check: VideoCheck, masks: _Masks | None, sink: ProblemSink) -> VideoInfo | str | None:
        """The video's VideoInfo, the reason to skip it, or None when it has errors (checking)."""
        name, img_dir, start = check.name, self.image_root / check.name, len(sink.problems)
        if not img_dir.is_dir():
            return f"annotations but no frames folder {img_dir}"
        frames = _list_images(img_dir, name, sink)
        check.frames = len(frames)
        check_numbering(frames, name, sink)
        if check.broken:  # its annotation folder could not be listed (reported)
            return None
        if not frames:
            return f"no .jpg/.jpeg/.png frames in {img_dir}"
        if masks is None:
            return f"no annotation folder {self.mask_root / name}"
        if not masks:
            return f"no mask PNGs in {self.mask_root / name}"
        pos_of = {p.stem: i for i, p in enumerate(frames)}
        for stem in [s for s in masks if s not in pos_of]:
            for _, p in masks.pop(stem):
                no = f"no {img_dir / stem}.jpg|.jpeg|.png"
                sink.error(f"mask has no frame: {no}", p, name, loading=f"mask {p} has no frame: {no}")
        size = frame_size(frames, name, sink)
        values = self._mask_values(name, masks, size, sink)
        stem_ids = self._stem_ids(check, values, sink)
        check.annotated = [stem_ids.get(p.stem, set()) for p in frames if p.stem in masks]
        if sink.errors_of(start) or size is None or not self._check_video(check, frames, stem_ids, sink):
            return None
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

    def _mask_values(
        self, name: str, masks: _Masks, size: tuple[int, int] | None, sink: ProblemSink
    ) -> _Values:
        """Read every mask's header and values, check its size against the frames'."""
        files = [(stem, obj, p) for stem, entries in masks.items() for obj, p in entries]
        values: _Values = {}
        for (stem, obj, p), got in zip(files, probe_masks([p for _, _, p in files], sink)):
            if isinstance(got[0], str):
                sink.error(str(got[0]), p, name, loading=str(got[1]))
                continue
            mask_hw, mode, vals = got  # type: ignore[misc]
            if size is not None and check_mask_size(
                mask_hw, size, sink, p, name, "mask", f"video {name}: {p}"
            ):
                self._resize.add(p)
            values.setdefault(stem, []).append((obj, p, mode, vals))
        return values

    def _stem_ids(self, check: VideoCheck, values: _Values, sink: ProblemSink) -> dict[str, set[int]]:
        """Object ids per frame stem from the masks' pixel values (marks binary videos)."""
        if any(obj is not None for es in values.values() for obj, _, _, _ in es):  # one folder per object
            offset = self.object_id_offset
            return {
                s: {o + offset for o, _, _, v in es if o is not None and v - {0}} for s, es in values.items()
            }
        every = set().union(*(v for es in values.values() for _, _, _, v in es))
        if is_binary((m for es in values.values() for _, _, m, _ in es), every):
            self._binary.add(check.name)
            check.binary = True
            return {s: {1} if VOID_ID in es[0][3] else set() for s, es in values.items()}
        ids: dict[str, set[int]] = {}
        for stem, ((_, p, _, vals),) in values.items():
            ids[stem] = vals - {0, VOID_ID}
            self._check_label_values(check, p, vals, sink)
        return ids

    @staticmethod
    def _check_label_values(check: VideoCheck, path: Path, vals: set[int], sink: ProblemSink) -> None:
        """Values that cannot be ids (16-bit values beyond the palette: an error); checking only, also void
        pixels (counted), void-only masks (a warning) and masks with too many values to be ids (an error)."""
        found = vals - {0, VOID_ID}
        if max(found, default=0) > VOID_ID:
            message = (
                f"ids up to {max(found)}, beyond the 8-bit palette: object ids must be 1..254 (a 16-bit PNG?)"
            )
            sink.error(message, path, check.name, loading=f"mask {path}: {message}")
        if not sink.record:
            return
        check.void_masks += VOID_ID in vals
        if VOID_ID in vals and not found:
            sink.warning("void-only mask: its only non-zero value is 255 (void), no object", path, check.name)
        if len(found) > MAX_IDS_PER_MASK:
            message = f"{len(found)} distinct values: not object ids (an anti-aliased, resized or JPEG mask?)"
            sink.error(message, path, check.name)

    def _read(self, path: Path, size: tuple[int, int], video: str) -> tuple[np.ndarray, str]:
        raw, mode = read_label_png(path)
        if raw.shape != tuple(size):
            if path not in self._resize:
                mask_needs_resize(raw.shape, size, f"video {video}: {path}")
            raw = resize_nearest(raw, size)
        return raw, mode

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at `pos`: [K, H, W] bool per visible object, void where the value is
        255 (label PNGs of non-binary videos)."""
        self._annotated_frame(video, pos)
        entries = self._masks[video.name][pos]
        size = video.size
        if entries[0][0] is None:
            binary = video.name in self._binary
            labels = to_labels(*self._read(entries[0][1], size, video.name), binary=binary)
            objects = {i: labels == i for i in label_ids(labels)}
            return stack_masks(objects, size, void=None if binary else labels == VOID_ID)
        objects = {obj: self._read(path, size, video.name)[0] > 0 for obj, path in entries if obj is not None}
        return stack_masks(objects, size)
