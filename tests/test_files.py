"""The one atomic write: readers see the old file or the whole new one, never a part; nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam2train.files import atomic_write, remove_stale_temporaries, temporary_name


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    with atomic_write(path) as f:  # creates the folder
        f.write(b"old")
    with pytest.raises(RuntimeError), atomic_write(path, durable=True) as f:
        f.write(b"half of the new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    with atomic_write(path, durable=True) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_stale_temporaries_of_a_file_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "epoch=1[best].ckpt"
    stale, other = temporary_name(path), temporary_name(tmp_path / "other.ckpt")
    assert stale.parent == tmp_path and stale.name.startswith(f".{path.name}.tmp-") and stale.suffix == ".tmp"
    stale.write_bytes(b"")
    other.write_bytes(b"")
    remove_stale_temporaries(path)
    assert not stale.exists() and other.exists()
