"""Collecting an action's outputs into the CAS: files, directories as Trees, stdout and stderr.

Small blobs are gathered into batches (one syncfs per batch on the filesystem store); large
files are copied into the store's spool while hashed, fsynced and published under their
digest. Blobs already in the CAS are not written again.
"""

import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from reapi import atomic_files, digests
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.protos import re_pb2
from workers.paths import check_relative, make_dirs, resolve

SMALL_BLOB = 1024 * 1024
COPY_CHUNK = 1024 * 1024
Command = re_pb2.Command


def to_proto(d: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=d.hash, size_bytes=d.size)


class Uploader:
    def __init__(self, cas: Cas, tenant: str) -> None:
        self.cas = cas
        self.tenant = tenant
        self.pending: dict[Digest, bytes] = {}
        self.pending_bytes = 0
        self.limit = max(cas.max_batch_bytes // 2, SMALL_BLOB)

    def add_bytes(self, data: bytes) -> Digest:
        d = digests.of(data)
        if d not in self.pending and d.hash != digests.EMPTY_HASH:
            if self.pending_bytes + len(data) > self.limit:
                self.flush()
            self.pending[d] = data
            self.pending_bytes += len(data)
        return d

    def add_file(self, path: str | Path) -> Digest:
        if os.path.getsize(path) <= SMALL_BLOB:
            with open(path, "rb") as f:
                return self.add_bytes(f.read())
        return self._add_large(Path(path))

    def _add_large(self, path: Path) -> Digest:
        hasher = hashlib.sha256()
        size = 0

        def blocks() -> Iterator[bytes]:
            nonlocal size
            with open(path, "rb") as src:
                while block := src.read(COPY_CHUNK):
                    hasher.update(block)
                    size += len(block)
                    yield block

        def commit(spooled: Path) -> Digest:
            d = Digest(hasher.hexdigest(), size)
            if not self.cas.contains(self.tenant, d):
                self.cas.commit_file(self.tenant, d, spooled)
            return d

        return atomic_files.publish(self.cas.store.spool_dir() / f"{uuid.uuid4().hex}.out", blocks(), commit)

    def flush(self) -> None:
        if not self.pending:
            return
        missing = set(self.cas.find_missing(self.tenant, list(self.pending)))
        items: list[tuple[Digest | Exception, bytes]] = [
            (d, b) for d, b in self.pending.items() if d in missing
        ]
        self.pending, self.pending_bytes = {}, 0
        if items:
            for err in self.cas.batch_update(self.tenant, items):  # type: ignore[arg-type]
                if err is not None:
                    raise err


def prepare(root: Path, workdir: str, command: Command, owner: tuple[int, int] | None) -> None:
    """Create what REAPI says exists before the command runs: the parents of every output,
    and the output directories themselves (empty), as Bazel's local strategies do; owned by
    `owner`, never through a symlink of the input tree."""

    def under_workdir(rel: str, what: str) -> str:
        return str(PurePosixPath(workdir, check_relative(rel, what)))

    if command.output_paths:
        for rel in command.output_paths:
            parent = PurePosixPath(under_workdir(rel, "output path")).parent
            make_dirs(root, str(parent), owner, "output path")
        return
    for rel in command.output_files:
        parent = PurePosixPath(under_workdir(rel, "output file")).parent
        make_dirs(root, str(parent), owner, "output file")
    for rel in command.output_directories:
        make_dirs(root, under_workdir(rel, "output directory"), owner, "output directory")


def _is_executable(mode: int) -> bool:
    return bool(mode & 0o111)


def collect(
    uploader: Uploader,
    root: Path,
    workdir: str,
    command: Command,
    result: re_pb2.ActionResult,
    aliases: tuple[str, ...],
) -> None:
    """Add the outputs that exist to `result` (REAPI: a missing output is simply absent).

    Outputs are found as the action saw them: through symlinks only while they lead back
    inside the input root (`aliases` are the paths it had there); one leading outside is the
    action's error, not a read of the worker's files."""

    def find(rel: str, what: str) -> Path:
        return resolve(root, str(PurePosixPath(workdir, check_relative(rel, what))), aliases, what)

    if command.output_paths:
        files: list[tuple[str, Path]] = []
        dirs: list[tuple[str, Path]] = []
        for rel in command.output_paths:
            path = find(rel, "output path")
            (dirs if path.is_dir() else files).append((rel, path))
    else:
        files = [(rel, find(rel, "output file")) for rel in command.output_files]
        dirs = [(rel, find(rel, "output directory")) for rel in command.output_directories]
    for rel, path in files:
        if not path.is_file():
            continue
        result.output_files.add(
            path=rel,
            digest=to_proto(uploader.add_file(path)),
            is_executable=_is_executable(path.stat().st_mode),
        )
    want_directories = command.output_directory_format != Command.OutputDirectoryFormat.TREE_ONLY
    for rel, path in dirs:
        if not path.is_dir():
            continue
        root_dir, children = _directory(uploader, path)
        tree = re_pb2.Tree(root=root_dir, children=children)
        out = result.output_directories.add(
            path=rel, tree_digest=to_proto(uploader.add_bytes(tree.SerializeToString(deterministic=True)))
        )
        if want_directories:
            # REAPI v2.3 DIRECTORY_ONLY/TREE_AND_DIRECTORY: every Directory is a blob too.
            for directory in [root_dir, *children]:
                uploader.add_bytes(directory.SerializeToString(deterministic=True))
            out.root_directory_digest.CopyFrom(
                to_proto(digests.of(root_dir.SerializeToString(deterministic=True)))
            )


def _directory(
    uploader: Uploader, path: Path, below: dict[str, re_pb2.Directory] | None = None
) -> tuple[re_pb2.Directory, list[re_pb2.Directory]]:
    """The Directory message of `path` and every Directory below it, each once."""
    below = {} if below is None else below
    directory = re_pb2.Directory()
    # REAPI: files, directories and symlinks each sorted by name.
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_symlink():
            directory.symlinks.add(name=entry.name, target=os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            sub, _ = _directory(uploader, Path(entry.path), below)
            d = digests.of(sub.SerializeToString(deterministic=True))
            directory.directories.add(name=entry.name, digest=to_proto(d))
            below.setdefault(d.hash, sub)
        elif entry.is_file(follow_symlinks=False):
            mode = entry.stat(follow_symlinks=False).st_mode
            directory.files.add(
                name=entry.name,
                digest=to_proto(uploader.add_file(entry.path)),
                is_executable=_is_executable(mode) and stat.S_ISREG(mode),
            )
    return directory, list(below.values())
