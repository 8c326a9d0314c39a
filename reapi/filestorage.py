"""The django-storages backend for blobs on a local filesystem.

Django's FileSystemStorage renames on name clashes and writes in place; a content-addressed
store wants the opposite: the same name always holds the same bytes, and a blob appears under
its final name only complete and flushed (temp file, fsync, rename), so a crash never leaves a
truncated blob where a reader would find it.
"""

import uuid
from pathlib import Path
from typing import Any

from django.core.files.base import File
from django.core.files.storage import FileSystemStorage

from reapi import atomic_files


def atomic_write(path: Path, chunks: Any, tmp_dir: Path, sync: bool = True) -> None:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    atomic_files.publish(
        tmp_dir / f"{uuid.uuid4().hex}.tmp", chunks, lambda tmp: atomic_files.replace(tmp, path), sync
    )


class BlobFileSystemStorage(FileSystemStorage):
    TMP_DIR = ".tmp"

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return name

    def _save(self, name: str, content: File) -> str:
        atomic_write(Path(self.path(name)), content.chunks(), Path(self.location) / self.TMP_DIR)
        return name
