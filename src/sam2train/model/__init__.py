"""SAM 2 for training: building (configs, checkpoints, trainable groups) and the video pass.

Nothing here imports `sam2` at import time (it initialises global Hydra state); `build_model` does when called.
"""

from sam2train.errors import CheckpointError, CheckpointNotFoundError
from sam2train.model.build import (
    OFFICIAL_CONFIGS,
    TRAINABLE_GROUPS,
    apply_trainable,
    build_model,
    format_parameter_report,
    group_parameters,
    infer_official_config,
    load_checkpoint,
    parameter_group,
    parameter_report,
    set_eval_postprocessing,
)
from sam2train.model.checkpoints import CONFIG_KEY, CheckpointContents, read_checkpoint
from sam2train.model.video import (
    NO_OBJ_LOGIT,
    FrameFeatures,
    FrameOutput,
    VideoOutput,
    VideoTracker,
    encode_frames,
    run_video,
    tracked_objects,
)

__all__ = [
    "OFFICIAL_CONFIGS",
    "TRAINABLE_GROUPS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "apply_trainable",
    "build_model",
    "format_parameter_report",
    "group_parameters",
    "infer_official_config",
    "load_checkpoint",
    "parameter_group",
    "parameter_report",
    "CONFIG_KEY",
    "CheckpointContents",
    "read_checkpoint",
    "set_eval_postprocessing",
    "NO_OBJ_LOGIT",
    "FrameFeatures",
    "FrameOutput",
    "VideoOutput",
    "VideoTracker",
    "encode_frames",
    "run_video",
    "tracked_objects",
]
