"""File primitives shared by every layer: the one atomic write.

A file written through `atomic_write` appears whole or not at all, to readers in other processes as well: the
bytes go to a hidden temporary file in the same folder (so the rename never crosses filesystems), which is then
renamed over the target with `os.replace`.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    """The temporary file `atomic_write` writes before renaming it to `path`: hidden, beside it, named after it
    and the writing process (`.NAME.tmp-PID-RANDOM.tmp`), so concurrent writers never share one."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of `path` that killed writers left behind. Only for a file that a single
    process writes (a checkpoint): it would also delete another process's write in progress."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, *, durable: bool = False) -> Iterator[BinaryIO]:
    """Open a binary file whose content replaces `path` when the block ends without an exception; on an
    exception `path` is left as it was and the temporary file is removed. Creates the parent folders.

    `durable`: fsync the file before the rename and the folder after it, so that a power cut leaves the old or
    the new file, never an empty one (costly; for checkpoints, not for caches).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power cut
        finally:
            os.close(fd)
