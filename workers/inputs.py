"""Materialising an action's input root from the CAS into a fresh directory.

Nested directories, files with their executable bit (or NodeProperties.unix_mode) and
symlinks are recreated as the Directory messages describe them. Every blob the tree names but
the CAS lacks is collected, so the client learns them all at once (REAPI: FAILED_PRECONDITION
with a PreconditionFailure of MISSING violations), and can upload them and retry.
"""

import os
from pathlib import Path

from reapi import digests
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.errors import FailedPrecondition, InvalidArgument, NotFound
from reapi.protos import re_pb2
from workers.paths import check_name


def materialise(cas: Cas, tenant: str, root: Digest, dest: Path, owner: tuple[int, int] | None = None) -> int:
    """Write the tree under `root` into `dest` (which must not exist); returns the bytes of its
    files. Directories are owned by `owner` (the sandbox's uid), so the action can write in
    them; files stay the worker's, so it can replace an input but not change it in place."""
    missing: list[Digest] = []
    pending = [(root, dest)]
    size = 0
    while pending:
        digest, path = pending.pop()
        directory = cas.directory(tenant, digest)
        if directory is None:
            missing.append(digest)
            continue
        _check_unique(directory, digest)
        path.mkdir()
        if owner:
            os.chown(path, *owner)
        for f in directory.files:
            target = path / check_name(f.name, "input file")
            blob = digests.check_field(f.digest, f"input file {f.name[:100]!r}")
            try:
                _write_blob(cas, tenant, blob, target)
            except NotFound:
                missing.append(blob)
                continue
            mode = 0o755 if f.is_executable else 0o644
            if f.node_properties.HasField("unix_mode"):
                mode = f.node_properties.unix_mode.value & 0o7777
            os.chmod(target, mode)
            size += blob.size
        for s in directory.symlinks:
            # Capabilities advertise absolute symlinks as disallowed.
            if not s.target or s.target.startswith("/"):
                raise InvalidArgument(f"input symlink {s.name!r} has an absolute or empty target")
            os.symlink(s.target, path / check_name(s.name, "input symlink"))
        for sub in directory.directories:
            child = digests.check_field(sub.digest, f"input directory {sub.name[:100]!r}")
            pending.append((child, path / check_name(sub.name, "input directory")))
    if missing:
        raise FailedPrecondition(
            f"{len(missing)} input blob(s) of the action are missing from the CAS, e.g. {missing[0]}",
            missing=tuple((d.hash, d.size) for d in missing),
        )
    return size


def _check_unique(directory: re_pb2.Directory, digest: Digest) -> None:
    # REAPI Directory: names are unique across files, directories and symlinks.
    seen: set[str] = set()
    names = [n.name for n in directory.files] + [n.name for n in directory.directories]
    for name in names + [n.name for n in directory.symlinks]:
        if name in seen:
            raise InvalidArgument(f"directory {digest} names {name[:100]!r} more than once")
        seen.add(name)


def _write_blob(cas: Cas, tenant: str, digest: Digest, target: Path) -> None:
    chunks = cas.read(tenant, digest, 0, 0)  # NotFound before the file is created
    with open(target, "xb") as out:
        for chunk in chunks:
            out.write(chunk)
