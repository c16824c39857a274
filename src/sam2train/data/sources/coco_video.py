"""COCO-video JSON reader. The JSON schema is checked at construction (every required key, every segmentation's
type and size, naming the file and the entry); the full decode of compressed RLE strings runs when a frame's
masks are loaded, or at construction when a checking sink asks for it (`check-data` without `--fast`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam2train.data.problems import LOADING, ProblemSink
from sam2train.data.sources.base import FrameMasks, FrameRef, VideoCheck, VideoInfo
from sam2train.data.sources.files import (
    MAX_SHOWN,
    ImageFileSource,
    check_mask_size,
    finish,
    frame_size,
    gaps,
    mask_needs_resize,
    plural,
    resize_nearest,
    select_videos,
    stack_masks,
)
from sam2train.data.sources.json_rle import (
    check_segmentation,
    decode_all,
    decode_segmentation,
    entry_label,
    is_int,
    read_json,
    require,
)
from sam2train.errors import DataError

_Ann = tuple[int, Any, str, tuple[int, int] | None]
"""(object id, segmentation, where errors point, RLE (height, width) or None for polygons)."""
_Frames = dict[str, list[tuple[int, Any, Path]]]
"""video name -> [(order_in_video, image id, file)]."""


class CocoVideoSource(ImageFileSource):
    """A COCO-style video JSON: `images` (`id`, `file_name` relative to `images_root`, `video_id`,
    `order_in_video`), `annotations` (`image_id`, `segmentation` as RLE or polygons, `category_id`, and
    `track_id` or `instance_id` when tracks exist) and optionally `videos` (`id`, `name`).

    Object id: the track id when the annotations carry one (then every annotation must), else the category id
    (one object per category per video); when some id is 0 every id is shifted by +1 (0 is background).
    Frame index: `order_in_video`. Images without annotations are unannotated frames; several annotations of
    one object on one frame are OR-ed. Video names: `videos[].name`, else str(video_id).
    """

    def __init__(
        self,
        path: str | Path,
        images_root: str | Path | None = None,
        videos: Sequence[str] | None = None,
        data: Any = None,
        sink: ProblemSink = LOADING,
    ):
        """`data`: the already parsed content of `path` (saves a second parse), or None to read it."""
        self.path = Path(path)
        data = read_json(self.path) if data is None else data
        require(data, ("images", "annotations"), str(self.path))
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise DataError(f"{self.path}: '{key}' must be a list")
        self.images_root = Path(images_root) if images_root is not None else self.path.parent
        if not self.images_root.is_dir():
            raise DataError(f"{self.path}: images_root folder not found: {self.images_root}")
        names = self._video_names(data, sink)
        frames, video_of = self._parse_images(data["images"], names, sink)
        per_image = self._parse_annotations(data["annotations"], video_of, sink)
        self._anns: dict[str, dict[int, list[tuple[int, Any, str, bool]]]] = {}
        self.skipped: dict[str, str] = {}
        self.checked: list[VideoCheck] = []
        found: list[VideoInfo] = []
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]] = []
        for name in select_videos(sorted(frames), videos, self.path):
            check = VideoCheck(name, self.path, frames=len(frames[name]))
            self._listed(check, self._build(check, frames[name], per_image, sink, jobs), found)
        decode_all(jobs, sink)
        self.videos = finish(found, self.skipped, self.path, sink)

    def _video_names(self, data: dict, sink: ProblemSink) -> dict[Any, str]:
        """video_id -> name from the optional `videos` list."""
        names: dict[Any, str] = {}
        for i, v in enumerate(data.get("videos") or []):
            label = entry_label("videos", i, v)
            try:
                require(v, ("id", "name"), label)
            except DataError as exc:
                sink.error(str(exc), self.path)
                continue
            if str(v["name"]) in names.values():
                message = "two entries of 'videos' share a name"
                sink.error(
                    f"{label}: {message}", self.path, str(v["name"]), loading=f"{self.path}: {message}"
                )
            names[v["id"]] = str(v["name"])
        return names

    def _parse_images(
        self, images: list, names: dict[Any, str], sink: ProblemSink
    ) -> tuple[_Frames, dict[Any, str | None]]:
        """video name -> [(order_in_video, image id, file)], and image id -> video name (None: a bad entry)."""
        frames: _Frames = {}
        video_of: dict[Any, str | None] = {}
        for i, img in enumerate(images):
            where = entry_label("images", i, img)
            try:
                require(img, ("id", "file_name", "video_id", "order_in_video"), where)
                if not is_int(img["order_in_video"]):
                    raise DataError(
                        f"{where}: 'order_in_video' must be an int, got {img['order_in_video']!r}"
                    )
                if img["id"] in video_of:
                    raise DataError(f"{where}: image id {img['id']} is used twice")
                if names and img["video_id"] not in names:
                    raise DataError(f"{where}: video_id {img['video_id']!r} is not in 'videos'")
            except DataError as exc:
                sink.error(str(exc), self.path)
                if isinstance(img, dict) and "id" in img and img["id"] not in video_of:
                    video_of[img["id"]] = None  # its annotations are not reported again
                continue
            name = names.get(img["video_id"], str(img["video_id"]))
            video_of[img["id"]] = name
            frames.setdefault(name, []).append(
                (img["order_in_video"], img["id"], self.images_root / img["file_name"])
            )
        return frames, video_of

    def _parse_annotations(
        self, anns: list, video_of: dict[Any, str | None], sink: ProblemSink
    ) -> dict[Any, list[_Ann]]:
        """image id -> [(object id, segmentation, where, RLE size or None)], every entry schema-checked."""
        track_key = next(
            (k for k in ("track_id", "instance_id") if any(k in a for a in anns if isinstance(a, dict))), None
        )
        obj_key = track_key or "category_id"
        rows = []
        for i, ann in enumerate(anns):
            where = entry_label("annotations", i, ann)
            video: str | None = ""
            try:
                require(ann, ("image_id", "segmentation", obj_key), where)
                if ann["image_id"] not in video_of:
                    raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
                video = video_of[ann["image_id"]]
                if video is None:
                    continue
                if not (is_int(ann[obj_key]) and ann[obj_key] >= 0):
                    raise DataError(f"{where}: '{obj_key}' must be an int >= 0, got {ann[obj_key]!r}")
                rle_hw = check_segmentation(ann["segmentation"], where)
            except DataError as exc:
                sink.error(str(exc), self.path, video or "")
                continue
            rows.append((ann["image_id"], ann[obj_key], ann["segmentation"], where, rle_hw))
        self.object_id_offset = 1 if any(r[1] == 0 for r in rows) else 0
        per_image: dict[Any, list[_Ann]] = {}
        for image_id, obj, seg, where, rle_hw in rows:
            per_image.setdefault(image_id, []).append((obj + self.object_id_offset, seg, where, rle_hw))
        return per_image

    def _build(
        self,
        check: VideoCheck,
        entries: list[tuple[int, Any, Path]],
        per_image: dict[Any, list[_Ann]],
        sink: ProblemSink,
        jobs: list[tuple[Any, tuple[int, int], str, str, Path]],
    ) -> VideoInfo | str | None:
        """The video's VideoInfo, the reason to skip it, or None when it has errors (checking). Full decode
        jobs of its RLEs go to `jobs` when the sink asks for them."""
        name, start = check.name, len(sink.problems)
        entries = sorted(entries, key=lambda e: e[0])
        for a, b in zip(entries, entries[1:]):
            if a[0] == b[0]:
                message = f"images {a[1]} and {b[1]} share order_in_video {a[0]}"
                sink.error(message, self.path, name, loading=f"{self.path}: video {name}: {message}")
        found = gaps([e[0] for e in entries])
        if found and sink.record:
            shown = ", ".join(f"{a} -> {b}" for a, b in found[:MAX_SHOWN])
            sink.warning(f"{plural(len(found), 'gap')} in order_in_video: {shown}", self.path, name)
        size = frame_size([e[2] for e in entries], name, sink)
        frames, anns, ids = [], {}, set()
        for pos, (order, image_id, file) in enumerate(entries):
            rows = per_image.get(image_id, [])
            if rows:
                check.annotated.append({obj for obj, _, _, _ in rows})
                anns[pos] = []
            for obj, seg, where, rle_hw in rows:
                resize = False
                if size is not None and rle_hw is not None:
                    what, at = f"{where}: RLE (frame {file.name})", f"{self.path}: {where}, frame {file}"
                    resize = check_mask_size(rle_hw, size, sink, self.path, name, what, at)
                if sink.record and sink.full and size is not None:
                    jobs.append((seg, size, where, name, self.path))
                anns[pos].append((obj, seg, f"{self.path}: {where}", resize))
                ids.add(obj)
            frames.append(FrameRef(index=order, image=file, annotated=bool(rows)))
        if not ids:
            return "no annotation on any of its frames"
        if sink.errors_of(start) or size is None:
            return None
        self._anns[name] = anns
        return VideoInfo(name=name, frames=frames, size=size, object_ids=sorted(ids))

    def load_masks(self, video: VideoInfo, pos: int) -> FrameMasks:
        """Masks of the annotated frame at `pos`: [K, H, W] bool per visible object (annotations OR-ed)."""
        self._annotated_frame(video, pos)
        objects: dict[int, np.ndarray] = {}
        for obj, seg, where, resize in self._anns[video.name][pos]:
            mask = decode_segmentation(seg, video.size, where)
            if mask.shape != tuple(video.size):
                if not resize:
                    mask_needs_resize(mask.shape, video.size, where)
                mask = resize_nearest(mask, video.size)
            objects[obj] = objects[obj] | mask if obj in objects else mask
        return stack_masks(objects, video.size)
