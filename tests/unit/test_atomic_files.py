"""Temp file, fsync, rename (reapi/atomic_files.py), on the real filesystem."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from reapi import atomic_files


def test_a_published_file_appears_whole_under_its_final_name(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b" / "blob"
    tmp = tmp_path / "x.tmp"
    atomic_files.publish(tmp, [b"one ", b"two"], lambda t: atomic_files.replace(t, final))
    assert final.read_bytes() == b"one two"
    assert not tmp.exists()


def test_a_file_the_move_declines_or_a_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "x.tmp"
    assert atomic_files.publish(tmp, [b"data"], lambda t: t.read_bytes()) == b"data"
    assert list(tmp_path.iterdir()) == []

    def broken() -> Iterator[bytes]:
        yield b"half of it"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic_files.publish(tmp, broken(), lambda t: None)
    assert list(tmp_path.iterdir()) == []
