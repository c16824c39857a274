"""The errors a user can act on. The CLI prints their message, which names the culprit (file, video, config key),
as one line and exits with status 2; any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (config, data, checkpoint, arguments)."""


class ConfigError(UserError):
    """A configuration problem; the message names the key (and the file when there is one)."""


class DataError(UserError):
    """A problem with the user's data; the message names the file, video or key."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the configured model; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that the safe unpickler refuses (loading it could run code) and nobody trusted."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency (PyAV for video files, a logger package) is not installed."""


class CompilerNotFoundError(UserError):
    """torch.compile's backend needs a C/C++ compiler that this machine lacks."""


class NonFiniteLossError(UserError):
    """`trainer.max_bad_steps` consecutive optimizer steps had a NaN/Inf loss or gradient."""
