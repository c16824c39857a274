"""Problems found in data, and the sink a reader reports them to: it raises at once when loading (`fit`), and
records every problem when checking (`check-data`). Light on purpose: the CLI imports it to build its parser."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sam2train.errors import DataError

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass(frozen=True)
class Problem:
    """One finding. `path`: the file it is in (frame, mask, JSON) or the folder for a whole video or dataset;
    `video`: the video's name, '' for the whole dataset."""

    severity: str
    path: Path
    video: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}" + (f" [{self.video}]" if self.video else "") + f": {self.message}"


class SourceAbandoned(Exception):
    """Raised by a recording sink on a problem the reader cannot go past; `read_source` catches it."""


class ProblemSink:
    """Where a reader reports what is wrong with its data.

    Loading (`record=False`, what `fit` uses): an error raises DataError at once with the reader's loading
    message, a warning is a Python UserWarning, info is dropped. Checking (`record=True`, `check-data`): every
    problem is kept in `problems` as (severity, file, video, message) and the reader goes on; `full` asks the
    reader for the checks that decode every frame and RLE. Dataset-wide facts (info) are `check-data`'s own.
    """

    def __init__(self, record: bool = False, full: bool = False) -> None:
        self.record = record
        self.full = full
        self.problems: list[Problem] = []

    def error(self, message: str, path: Path | str, video: str = "", loading: str | None = None) -> None:
        """An error: recorded, or raised as DataError(`loading`, else '<path>: <message>')."""
        if not self.record:
            raise DataError(loading if loading is not None else f"{path}: {message}")
        self.problems.append(Problem(ERROR, Path(path), video, message))

    def fatal(self, message: str, path: Path | str, video: str = "", loading: str | None = None) -> NoReturn:
        """An error the reader cannot go past: recorded then SourceAbandoned, or raised as DataError."""
        self.error(message, path, video, loading)
        raise SourceAbandoned(message)

    def warning(self, message: str, path: Path | str, video: str = "", loading: str | None = None) -> None:
        """A warning: recorded, or a UserWarning (`loading`, else '<path>: <message>'); `loading=''`: none."""
        if self.record:
            self.problems.append(Problem(WARNING, Path(path), video, message))
        elif loading != "":
            warnings.warn(loading if loading is not None else f"{path}: {message}", UserWarning, stacklevel=3)

    def errors_of(self, start: int = 0) -> set[str]:
        """Videos with an error among the problems recorded since `start`."""
        return {p.video for p in self.problems[start:] if p.severity == ERROR}


LOADING = ProblemSink()
"""The sink of `fit`: raise on the first error."""
