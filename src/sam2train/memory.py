"""The process's peak resident memory, for `sam2train benchmark` and the benchmark scripts' child processes.

Standard library only, so a process that measures `predict` imports nothing else by measuring. On Linux the
peak is VmHWM, which `peak_rss_reset` can reset; `getrusage`'s ru_maxrss elsewhere (it is kept across fork and
exec, so in a child it starts at the parent's peak: read VmHWM where there is one).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def peak_rss_reset() -> bool:
    """Reset the process's peak RSS (Linux: VmHWM via /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak RSS: VmHWM on Linux (since the last reset), else getrusage's ru_maxrss."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
