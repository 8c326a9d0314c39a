"""A file appears under its final name only complete and flushed: written under a temporary
name, fsynced, then moved into place (docs/architecture.md, "Verified writes").

A rename within one filesystem is atomic, so a reader sees all of the file or none of it, and a
crash leaves at most a temporary file behind, never a truncated one under the final name.
"""

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def publish(tmp: Path, chunks: Iterable[bytes], move: Callable[[Path], T], sync: bool = True) -> T:
    """Write `chunks` to the new file `tmp`, fsync it (unless `sync` is off), then hand it to
    `move`, which gives it its final name; returns what `move` returns. The temporary file is
    removed if it is still there afterwards (`move` declined it, or anything failed)."""
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        return move(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def replace(tmp: Path, final: Path, make_folder: Callable[[], None] | None = None) -> None:
    """Move `tmp` to `final`, making `final`'s folder if it is missing (with `make_folder`,
    when the caller knows a better way than mkdir -p)."""
    try:
        os.replace(tmp, final)
    except FileNotFoundError:
        if make_folder is not None:
            make_folder()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
