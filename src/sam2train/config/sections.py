"""The config sections: one dataclass per section, each field documented, impossible values refused in
`__post_init__` with the key named.

Over 400 lines because it is the one place every key of the config is declared and documented.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from sam2train.errors import ConfigError

DATA_FORMATS = ("davis", "coco_video", "sav", "youtube_vos", "coco_images", "sa1b", "image_folder")
IMAGE_CLIPS = ("single", "repeat", "pseudo_video")
PROMPT_TYPES = ("mask", "box", "point", "mixed")
OPTIMIZERS = ("AdamW", "Adam")
SCHEDULERS = ("CosineAnnealingLR", "StepLR")
PRECISIONS = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64", "64-true")
LOGGERS = ("tensorboard", "csv", "wandb", "swanlab")
LOSS_TYPES = ("sam2train", "sam2")
TRAINABLE_GROUPS = (
    "image_encoder",
    "memory_attention",
    "memory_encoder",
    "sam_prompt_encoder",
    "sam_mask_decoder",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
    "free_parameters",
)
ADAPTER_GROUPS = ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder")
"""Named LoRA target groups (`model.adapters.targets`); their module patterns are in `model/adapters.py`."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {message}")


def closest(value: str, options: tuple[str, ...] | list[str]) -> str:
    """' Did you mean X?' for the closest option (by similarity, else by containment), or ''."""
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
    if not close:
        close = [o for o in options if value.lower() in o.lower() or o.lower() in value.lower()][:1]
    return f" Did you mean '{close[0]}'?" if close else ""


def _check_choice(value: Any, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"config key '{key}': '{value}' is not one of {list(choices)}.{closest(str(value), choices)}"
        )


@dataclass
class AugmentConfig:
    """Training augmentations, identical for every frame of a clip (torchvision.transforms.v2)."""

    hflip_prob: float = 0.5
    """Probability of a horizontal flip of the whole clip."""
    degrees: float = 10.0
    """Maximum rotation of the random affine transform, in degrees."""
    translate: float = 0.05
    """Maximum translation as a fraction of the frame size."""
    shear: float = 5.0
    """Maximum shear, in degrees."""
    scale_min: float = 0.8
    """Smallest scale of the random resized crop (fraction of the frame area kept)."""
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def __post_init__(self) -> None:
        _check(0.0 <= self.hflip_prob <= 1.0, "data.aug.hflip_prob", "must be in [0, 1]")
        _check(0.0 < self.scale_min <= 1.0, "data.aug.scale_min", "must be in (0, 1]")
        for name in ("degrees", "translate", "shear", "brightness", "contrast", "saturation", "hue"):
            _check(getattr(self, name) >= 0, f"data.aug.{name}", "must be >= 0")
        _check(self.translate <= 1.0, "data.aug.translate", "must be <= 1")
        _check(self.hue <= 0.5, "data.aug.hue", "must be <= 0.5")


@dataclass
class Sa1bConfig:
    """Which SA-1B annotations are objects (Meta's SA1BSegmentLoader filters; an annotation of area 0 never is)."""

    min_predicted_iou: float = 0.0
    """Leave out annotations whose `predicted_iou` is below this (0: keep all)."""
    min_stability_score: float = 0.0
    """Leave out annotations whose `stability_score` is below this (Meta's `uncertain_iou`; 0: keep all)."""
    max_area_fraction: float = 1.0
    """Leave out annotations covering more than this fraction of the image (Meta's `mask_area_frac_thresh`)."""

    def __post_init__(self) -> None:
        for name in ("min_predicted_iou", "min_stability_score"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.sa1b.{name}", "must be in [0, 1]")
        _check(0.0 < self.max_area_fraction <= 1.0, "data.sa1b.max_area_fraction", "must be in (0, 1]")


@dataclass
class SourceConfig:
    """One training source of `data.train` (several are mixed by weight)."""

    path: str = MISSING
    """A dataset folder or JSON file, as data.train_path."""
    format: str | None = None
    """davis | coco_video | sav | youtube_vos, or images: coco_images | sa1b | image_folder; detected from the path
    when null."""
    images_root: str | None = None
    """Folder that JSON `file_name`s are relative to (default: the JSON file's folder)."""
    videos: list[str] | None = None
    """Use only these videos of the source; null means all."""
    weight: float = 1.0
    """Relative share of this source's clips in each epoch (the epoch length stays the sum of all sources')."""
    name: str | None = None
    """Label in logs and errors (default: the path's name)."""

    def __post_init__(self) -> None:
        if self.format is not None:
            _check_choice(self.format, "data.train[].format", DATA_FORMATS)
        _check(self.weight > 0, "data.train[].weight", f"must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    """Where the videos are and how clips are cut from them."""

    train_path: str | None = None
    """A dataset folder (DAVIS/MOSE layout, or per-object mask folders) or a JSON file (COCO-video, SA-V)."""
    val_path: str | None = None
    """Same as train_path, for validation. Null disables validation."""
    format: str | None = None
    """davis | coco_video | sav | youtube_vos, or images: coco_images | sa1b | image_folder; detected from the path
    when null."""
    images_root: str | None = None
    """Folder that `file_name` in JSON formats is relative to (default: the JSON file's folder)."""
    train_videos: list[str] | None = None
    """Use only these videos of train_path (a fixed split); null means all."""
    train: list[SourceConfig] | None = None
    """Several training sources mixed by weight, each {path, format, images_root, videos, weight}; replaces
    train_path / train_videos when given."""
    val_videos: list[str] | None = None
    """Use only these videos of val_path; null means all."""
    clip_length: int = 8
    """Frames per training clip (annotated frames, consecutive in the annotation order)."""
    val_clip_length: int | None = None
    """Frames per validation window; null validates each video whole."""
    stride: int = 4
    """Spacing of training window starts in the epoch's index (each window is jittered within its stride)."""
    batch_size: int = 1
    num_workers: int = 2
    max_objects: int | None = None
    """At most this many objects per clip (a random subset in training, the lowest ids in validation); null tracks
    every object of the clip. Memory grows with the objects tracked at once: `model.object_chunk` bounds it without
    dropping any, a cap here trains on fewer (Meta's recipe: 3). `sam2train benchmark` shows what fits."""
    augment: bool = True
    """Training augmentations on/off (validation never augments)."""
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    pin_memory: bool = True
    persistent_workers: bool = True
    """Keep data-loader workers alive between epochs (no re-fork, warm readers)."""
    reverse_time_prob: float = 0.0
    """Training: probability of playing a clip backwards (Meta's reverse-time augmentation)."""
    track_later_objects: bool = True
    """Objects first annotated after a clip's (or video's) first frame are prompted on their first annotated
    frame, in training and validation, and scored from there; false keeps only objects of the first frame."""
    check_at_setup: bool = True
    """`fit` first runs the fast part of `sam2train check-data` (headers, masks, JSON schema, clip lengths) and
    stops on any error; turn off for very large datasets already checked."""
    image_clip: str = "pseudo_video"
    """How an image of an image source (coco_images, sa1b, image_folder) becomes a training clip: `single` (one
    frame), `repeat` (the image clip_length times, each copy augmented on its own, as Meta trains on SA-1B) or
    `pseudo_video` (clip_length frames of a smooth random motion of the image and its objects). Each batch holds
    clips of one length (`sam2train.data.sampling`)."""
    images_dir: str | None = None
    """Frames folder of DAVIS-style and image_folder sources; null: `JPEGImages` (image_folder: `images`), or
    `images` when only that exists."""
    masks_dir: str | None = None
    """Masks folder of DAVIS-style and image_folder sources; null: `Annotations` (image_folder: `masks`), or
    `masks` when only that exists."""
    sa1b: Sa1bConfig = field(default_factory=Sa1bConfig)

    def __post_init__(self) -> None:
        if self.format is not None:
            _check_choice(self.format, "data.format", DATA_FORMATS)
        _check(self.clip_length >= 1, "data.clip_length", f"must be >= 1, got {self.clip_length}")
        _check(
            self.val_clip_length is None or self.val_clip_length >= 1,
            "data.val_clip_length",
            "must be >= 1 or null",
        )
        _check(self.stride >= 1, "data.stride", f"must be >= 1, got {self.stride}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(
            self.max_objects is None or self.max_objects >= 1,
            "data.max_objects",
            f"must be >= 1 or null (every object), got {self.max_objects}",
        )
        _check(0.0 <= self.reverse_time_prob <= 1.0, "data.reverse_time_prob", "must be in [0, 1]")
        _check(self.train is None or len(self.train) > 0, "data.train", "lists no source")
        _check_choice(self.image_clip, "data.image_clip", IMAGE_CLIPS)


@dataclass
class AdapterConfig:
    """Parameter-efficient fine-tuning: LoRA adapters (through `peft`) on SAM 2's linear and convolution layers.
    The adapted base weights stay frozen; `export` merges the adapters into them."""

    type: str | None = None
    """`lora`, or null for no adapters."""
    r: int = 8
    """LoRA rank (the inner dimension of each adapter)."""
    alpha: float = 16.0
    """LoRA scaling numerator: an adapter's update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on an adapter's input (training only)."""
    targets: list[str] = field(default_factory=lambda: ["image_encoder", "memory_attention"])
    """Where adapters go: named groups (image_encoder: Hiera attention qkv/proj and MLP; memory_attention:
    self/cross-attention projections; memory_encoder: its convolutions and fuser MLP; sam_mask_decoder: the
    two-way transformer's attention projections) or regular expressions over full module names (a name with a
    `.`, e.g. `obj_ptr_proj\\.layers\\.\\d+`)."""
    path: str | None = None
    """Adapter weights to start from (a folder written by `sam2train export --adapters-only`), on top of
    `model.checkpoint`; null: fresh adapters (LoRA's B = 0, so the model starts as the base)."""

    def __post_init__(self) -> None:
        if self.type is not None:
            _check_choice(self.type, "model.adapters.type", ("lora",))
        _check(self.r >= 1, "model.adapters.r", "must be >= 1")
        _check(self.alpha > 0, "model.adapters.alpha", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "model.adapters.dropout", "must be in [0, 1)")
        _check(self.type is None or len(self.targets) > 0, "model.adapters.targets", "names no target")
        for i, name in enumerate(self.targets):
            if is_group_name(name):
                _check_choice(name, f"model.adapters.targets[{i}]", ADAPTER_GROUPS)


def is_group_name(target: str) -> bool:
    """Whether an adapter target is a group name (a plain word) rather than a module-name pattern."""
    return target.replace("_", "").isalnum()


@dataclass
class ModelConfig:
    """Which SAM 2 to build, from which weights, at which resolution, and what trains."""

    config: str = "sam2.1_hiera_t"
    """An official config name (sam2.1_hiera_t/s/b+/l, sam2_hiera_*) or a path to a SAM 2 model YAML."""
    checkpoint: str | None = None
    """The weights to start from: an official checkpoint (`{"model": state_dict}`), a `.safetensors` file, a
    previous fine-tune's Lightning checkpoint (`runs/.../best.ckpt`: its weights only), or a transformers SAM 2
    folder (`config.json` + `model.safetensors`; needs the `hf` extra); null initialises randomly (with a
    warning)."""
    trust_checkpoint: bool = False
    """Unpickle `checkpoint` in full even when the safe loader refuses it (a pickle can run code when loaded):
    only for a file you made yourself."""
    image_size: int = 1024
    """Square input resolution for data and model; a multiple of 32 (the backbone's total stride)."""
    trainable_modules: list[str] = field(default_factory=lambda: ["memory_attention", "memory_encoder"])
    """Parameter groups that train; everything else is frozen (requires_grad=False)."""
    bptt: bool = True
    """Backpropagate through time: memory is not detached, so memory modules get gradients from later frames."""
    mask_prompt_passthrough: bool = True
    """A mask-prompted frame outputs the prompt itself (as Meta's trainer) instead of the decoder's prediction."""
    eval_chunk_frames: int = 1
    """Validation streams each video through the image encoder this many frames at a time, one by default as Meta's
    predictor does (DAVIS recipe at 512 px on the CPU: 1.69 GB peak and 111 s, against 2.34 GB and 125 s at 8);
    more batch the encoder, for a little speed on a GPU at several times its working memory."""
    activation_checkpointing: bool = False
    """Recompute memory attention, memory encoder and mask decoder activations in backward (less memory, ~20-30%
    more compute)."""
    checkpoint_image_encoder: bool = False
    """A trainable image encoder runs each frame of a clip as one checkpointed segment: backward keeps only the
    frames and the encoder's outputs, and recomputes one frame's block activations at a time, so the encoder's
    activation memory stops growing with the clip length (one more encoder forward per step). Same gradients. No
    effect on a frozen encoder, which keeps no activations anyway."""
    compile_image_encoder: bool = False
    """torch.compile the image encoder (first steps slower while it compiles)."""
    compile_memory_attention: bool = False
    """torch.compile the memory attention with dynamic shapes (its memory grows frame by frame): the first steps
    are slower while it compiles; pays on GPUs, where its many small attention kernels get fused."""
    cache_features: bool = False
    """Frozen image encoder and no image augmentation: keep each frame's backbone features on disk (fp16,
    memory-mapped) and skip the encoder after the first epoch. Keyed by checkpoint, config, resolution and frame."""
    cache_dir: str | None = None
    """Where the feature cache lives (default: <logging.root_dir>/feature_cache)."""
    object_chunk: int | None = None
    """Training runs the video pass and the loss on groups of at most this many objects of the batch, one after
    another, each group's backward done before the next group runs; the image encoder runs once per clip (its
    backward once, with the summed feature gradient). Memory then grows with this number instead of with the
    batch's objects, at the same gradients (up to float rounding). Validation tracks groups of this many objects
    on each streamed frame's shared features. Null: all objects at once. Not with fsdp."""
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    """LoRA adapters (`type: lora`); they train besides `trainable_modules`, which may then be empty."""

    def __post_init__(self) -> None:
        _check(
            self.image_size >= 64 and self.image_size % 32 == 0,
            "model.image_size",
            f"must be a multiple of 32 (the backbone stride) and >= 64, got {self.image_size}",
        )
        _check(
            len(self.trainable_modules) > 0 or self.adapters.type is not None,
            "model.trainable_modules",
            "names no group (and model.adapters.type is null): nothing would train",
        )
        if self.adapters.type is not None:
            both = sorted(set(self.adapters.targets) & set(self.trainable_modules))
            _check(not both, "model.adapters.targets", f"{both} also train fully (model.trainable_modules)")
            _check(
                not (self.cache_features and "image_encoder" in self.adapters.targets),
                "model.cache_features",
                "cached features need an image encoder without adapters; drop 'image_encoder' from "
                "model.adapters.targets or set model.cache_features: false",
            )
        for i, name in enumerate(self.trainable_modules):
            _check_choice(name, f"model.trainable_modules[{i}]", TRAINABLE_GROUPS)
        _check(self.eval_chunk_frames >= 1, "model.eval_chunk_frames", "must be >= 1")
        _check(
            self.object_chunk is None or self.object_chunk >= 1, "model.object_chunk", "must be >= 1 or null"
        )


@dataclass
class PromptsConfig:
    """First-frame prompts per object."""

    type: str = "mixed"
    """mask | box | point | mixed (training)."""
    val_type: str | None = "mask"
    """Prompt used at validation (deterministic); `mask` is the semi-supervised VOS protocol J&F is reported
    with. Null uses `type`."""
    mask_prob: float = 0.5
    """With type mixed: probability of a mask prompt."""
    box_prob: float = 0.25
    """With type mixed: probability of a box prompt."""
    point_prob: float = 0.25
    """With type mixed: probability of point prompts."""
    box_noise: float = 0.1
    """Box jitter as a fraction of the box side (training only)."""
    num_pos_points: int = 1
    """Positive clicks; the first is the interior point farthest from the boundary, the rest random inside."""
    num_neg_points: int = 0
    """Negative clicks, random outside the object."""
    first_point: str = "center"
    """The first positive click: `center` (interior point farthest from the boundary) or `uniform` (random inside,
    as Meta's trainer)."""
    max_cond_frames: int = 1
    """Training: each clip is conditioned on 1 to this many frames (its first frame plus random others, each
    prompted like the first from its ground truth)."""
    frames_to_correct: int = 0
    """Training: objects prompted with points or a box get correction clicks on their conditioning frames plus
    random others, up to this many frames in all (drawn between the number of conditioning frames and this);
    0 disables correction clicks."""
    num_correction_points: int = 7
    """Correction clicks per corrected frame, added one after another, each from the current error region."""
    correction_from_gt_prob: float = 0.0
    """Probability that a correction click is drawn from the ground truth instead of the error region."""
    corrections_as_cond: bool = True
    """A frame that received correction clicks becomes a conditioning frame of the memory (as Meta's recipe)."""

    def __post_init__(self) -> None:
        _check_choice(self.type, "prompts.type", PROMPT_TYPES)
        if self.val_type is not None:
            _check_choice(self.val_type, "prompts.val_type", PROMPT_TYPES)
        for name in ("mask_prob", "box_prob", "point_prob", "box_noise"):
            _check(getattr(self, name) >= 0, f"prompts.{name}", "must be >= 0")
        if self.type == "mixed":
            total = self.mask_prob + self.box_prob + self.point_prob
            _check(
                abs(total - 1.0) < 1e-6,
                "prompts.mask_prob",
                f"mask/box/point probabilities sum to {total}, not 1",
            )
        _check(self.num_pos_points >= 1, "prompts.num_pos_points", "must be >= 1")
        _check(self.num_neg_points >= 0, "prompts.num_neg_points", "must be >= 0")
        _check_choice(self.first_point, "prompts.first_point", ("center", "uniform"))
        _check(self.max_cond_frames >= 1, "prompts.max_cond_frames", "must be >= 1")
        _check(
            self.frames_to_correct == 0 or self.frames_to_correct >= self.max_cond_frames,
            "prompts.frames_to_correct",
            f"must be 0 or >= prompts.max_cond_frames ({self.max_cond_frames}), got {self.frames_to_correct}",
        )
        _check(self.num_correction_points >= 1, "prompts.num_correction_points", "must be >= 1")
        _check(0 <= self.correction_from_gt_prob <= 1, "prompts.correction_from_gt_prob", "must be in [0, 1]")


@dataclass
class Sam2LossConfig:
    """Meta's training loss (`loss.type: sam2`, as training.loss_fns.MultiStepMultiMasksAndIous), summed over
    frames and prompting steps and divided by the number of objects (averaged over ranks)."""

    mask_weight: float = 20.0
    """Sigmoid focal loss weight (Meta's loss_mask)."""
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    """Regression of the predicted IoU on the true IoU of the thresholded mask."""
    class_weight: float = 1.0
    """Object-score loss (Meta's loss_class)."""
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    class_focal_alpha: float = -1.0
    """Alpha of the object-score focal loss (-1: no weighting; with gamma 0 this is plain BCE)."""
    class_focal_gamma: float = 0.0
    iou_loss: str = "l1"
    """l1 | mse."""
    supervise_all_iou: bool = True
    """The IoU term covers every multimask output (else only the one that gets the mask gradient)."""

    def __post_init__(self) -> None:
        for name in (
            "mask_weight",
            "dice_weight",
            "iou_weight",
            "class_weight",
            "focal_gamma",
            "class_focal_gamma",
        ):
            _check(getattr(self, name) >= 0, f"loss.sam2.{name}", "must be >= 0")
        _check_choice(self.iou_loss, "loss.sam2.iou_loss", ("l1", "mse"))


@dataclass
class LossConfig:
    """`type: sam2train` is the spec's SAM2TrainingLoss (the keys below); `type: sam2` is Meta's (`loss.sam2`)."""

    type: str = "sam2train"
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 0.5
    temporal_weight: float = 0.1
    object_score_weight: float = 1.0
    """BCE on SAM 2's object-presence score (target: the object's mask is non-empty in that frame). SAM 2 pins
    the mask of an object it scores absent at -1024 logits, which carry no gradient, so without this term a
    model whose scores start negative (random init, or objects that leave and come back) cannot learn those
    frames. 0 gives exactly the four-term loss of the spec."""
    smooth: float = 1e-6
    sam2: Sam2LossConfig = field(default_factory=Sam2LossConfig)

    def __post_init__(self) -> None:
        _check_choice(self.type, "loss.type", LOSS_TYPES)
        for name in ("bce_weight", "dice_weight", "iou_weight", "temporal_weight", "object_score_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name}", "must be >= 0")
        _check(self.smooth > 0, "loss.smooth", "must be > 0")


@dataclass
class OptimizerConfig:
    type: str = "AdamW"
    """AdamW | Adam."""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    image_encoder_lr: float | None = None
    """Learning rate of the image encoder (null: `lr`)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay over the Hiera trunk blocks: block i of L gets decay^(L - i) times the encoder lr
    (patch embedding decay^(L + 1)); 1 disables."""
    no_weight_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "pos_embed"])
    """Parameters without weight decay: names containing one of these (`norm` also matches every parameter of
    a normalisation layer)."""
    fused: bool | None = None
    """One fused kernel for the whole update instead of several per tensor. null: on when the parameters are on a
    CUDA GPU (off under 16-mixed with gradient clipping, which a fused step cannot take); true: wherever torch has
    the kernel (CUDA, CPU), an error under 16-mixed with clipping; false: torch's default (foreach)."""

    def __post_init__(self) -> None:
        _check_choice(self.type, "optimizer.type", OPTIMIZERS)
        _check(
            self.image_encoder_lr is None or self.image_encoder_lr > 0,
            "optimizer.image_encoder_lr",
            "must be > 0",
        )
        _check(
            0 < self.layer_decay <= 1, "optimizer.layer_decay", f"must be in (0, 1], got {self.layer_decay}"
        )
        _check(self.lr > 0, "optimizer.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            f"must be two values in [0, 1), got {list(self.betas)}",
        )


@dataclass
class SchedulerConfig:
    enabled: bool = True
    type: str = "CosineAnnealingLR"
    """CosineAnnealingLR | StepLR."""
    T_max: int = 50
    """CosineAnnealingLR period, in scheduler intervals."""
    eta_min: float = 1e-6
    eta_min_ratio: float | None = None
    """Cosine floor as a fraction of each parameter group's own lr (Meta's recipe: 0.1); replaces eta_min."""
    step_size: int = 10
    """StepLR period, in scheduler intervals."""
    gamma: float = 0.1
    warmup_steps: int = 0
    """Linear warmup over this many optimizer steps before the schedule (0: none)."""
    interval: str = "epoch"
    """Step the schedule every `epoch` or every `step`."""

    def __post_init__(self) -> None:
        _check_choice(self.type, "scheduler.type", SCHEDULERS)
        _check_choice(self.interval, "scheduler.interval", ("epoch", "step"))
        _check(self.T_max >= 1, "scheduler.T_max", "must be >= 1")
        _check(self.eta_min >= 0, "scheduler.eta_min", "must be >= 0")
        _check(
            self.eta_min_ratio is None or 0 <= self.eta_min_ratio <= 1,
            "scheduler.eta_min_ratio",
            "must be in [0, 1]",
        )
        _check(self.step_size >= 1, "scheduler.step_size", "must be >= 1")
        _check(0 < self.gamma <= 1, "scheduler.gamma", "must be in (0, 1]")
        _check(self.warmup_steps >= 0, "scheduler.warmup_steps", "must be >= 0")


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer."""

    accelerator: str = "auto"
    devices: Any = "auto"
    """`auto`, a count, or a list of device indices: the devices (processes) per node."""
    num_nodes: int = 1
    """Machines in a multi-node run (torchrun `--nnodes`, SLURM `--nodes`); world size = num_nodes x devices."""
    precision: str = "auto"
    """32 | 16-mixed | bf16-mixed | auto (bf16-mixed or 16-mixed on CUDA, 32 on CPU)."""
    max_epochs: int = 50
    max_steps: int = -1
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    val_check_interval: Any = 1.0
    """A fraction of an epoch (float) or a number of training batches (int)."""
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 0
    strategy: str = "auto"
    """auto | ddp | fsdp | ... (Lightning's names). `ddp` finds unused parameters only when the trainable set
    needs it; `fsdp` shards parameters, gradients and optimizer state, one unit per repeated SAM 2 block (GPUs, or
    gloo on CPU)."""
    deterministic: bool = False
    validate_first: bool = False
    """Validate once before training, so the logs and final_metrics.json show where the run started."""
    max_bad_steps: int = 20
    """A step whose loss or gradient is NaN/Inf is skipped (logged as train/skipped_steps); this many in a row stop
    the run with an error, keeping the last checkpoint."""
    matmul_precision: str | None = None
    """float32 matrix products (torch.set_float32_matmul_precision): highest | high (TF32 on Ampere and later GPUs,
    about 8x the FLOP/s of float32 at 10 mantissa bits) | medium (bfloat16). null: high on CUDA, the CPU untouched."""
    cudnn_benchmark: bool | None = None
    """cuDNN times its convolution algorithms on each new input shape and keeps the fastest. null: on on CUDA when
    the sizes are fixed (data.max_objects set: clips are always data.clip_length frames of model.image_size, the
    object count is what varies) and trainer.deterministic is off; off otherwise."""

    def __post_init__(self) -> None:
        self.precision = str(self.precision)
        _check_choice(self.precision, "trainer.precision", PRECISIONS)
        _check(self.max_epochs >= 1 or self.max_epochs == -1, "trainer.max_epochs", "must be >= 1 or -1")
        _check(self.max_steps >= 1 or self.max_steps == -1, "trainer.max_steps", "must be >= 1 or -1")
        _check(
            self.gradient_clip_val is None or self.gradient_clip_val > 0,
            "trainer.gradient_clip_val",
            "must be > 0 or null",
        )
        _check(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1")
        _check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")
        _check(self.max_bad_steps >= 1, "trainer.max_bad_steps", "must be >= 1")
        if self.matmul_precision is not None:
            _check_choice(self.matmul_precision, "trainer.matmul_precision", ("highest", "high", "medium"))
        _check(self.num_nodes >= 1, "trainer.num_nodes", "must be >= 1")
        for key in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            _check(
                value is None
                or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0),
                f"trainer.{key}",
                f"must be a number >= 0 (a fraction as float, a count as int), got {value!r}",
            )
        devices = self.devices
        ok = devices == "auto" or (isinstance(devices, int) and devices >= 1 or devices == -1)
        ok = ok or (isinstance(devices, list) and all(isinstance(d, int) for d in devices))
        _check(ok, "trainer.devices", f"must be 'auto', a count or a list of indices, got {devices!r}")


@dataclass
class LoggingConfig:
    root_dir: str = "runs"
    """Every run gets a folder <root_dir>/<name>/<version>: logs, checkpoints, config, pictures."""
    name: str = "sam2train"
    version: str | None = None
    """Run folder name; null picks version_<n>."""
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    """tensorboard, csv, wandb, swanlab."""
    project: str = "sam2train"
    """Project name for wandb/swanlab."""
    offline: bool = False
    """wandb/swanlab in offline mode."""
    progress_bar: str = "rich"
    """rich | tqdm | none."""
    viz_every_n_epochs: int = 1
    """Every this many epochs, write an overlay strip (PNG) and GIF of one validation video; 0 disables."""
    viz_videos: list[str] | None = None
    """Names of the validation videos drawn every time (their first window); null: one video per drawing, the
    next validated one each time (over the batches `trainer.limit_val_batches` keeps)."""

    def __post_init__(self) -> None:
        for i, name in enumerate(self.loggers):
            _check_choice(name, f"logging.loggers[{i}]", LOGGERS)
        _check_choice(self.progress_bar, "logging.progress_bar", ("rich", "tqdm", "none"))
        _check(self.viz_every_n_epochs >= 0, "logging.viz_every_n_epochs", "must be >= 0")


@dataclass
class CheckpointConfig:
    monitor: str = "val/J&F"
    """A logged metric: val/J&F, val/J, val/F, val/total, val/bce, ... (without validation: the latest is kept)."""
    mode: str = "max"
    save_top_k: int = 1
    save_last: bool = True
    every_n_train_steps: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.mode, "checkpoint.mode", ("min", "max"))
        _check(self.save_top_k >= -1, "checkpoint.save_top_k", "must be >= -1")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val/J&F"
    mode: str = "max"
    patience: int = 10
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _check_choice(self.mode, "early_stopping.mode", ("min", "max"))
        _check(self.patience >= 1, "early_stopping.patience", "must be >= 1")
        _check(self.min_delta >= 0, "early_stopping.min_delta", "must be >= 0")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 42
