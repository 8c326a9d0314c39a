"""Paths inside an action's input root, checked and resolved without ever leaving it.

The worker touches the action's directory as itself (root, on most workers) before and after
the sandboxed command runs: it creates the parents of outputs, and reads the outputs back. Both
happen on the host's view of the tree, where a symlink the action (or its input tree) made could
lead anywhere. So nothing here follows a symlink that the host would resolve: output parents
are never created through one, and outputs are followed only through symlinks that lead back
inside the input root, as the sandboxed action saw them.
"""

import os
from pathlib import Path, PurePosixPath

from reapi.errors import InvalidArgument

# As the kernel's limit on symlinks in one lookup (ELOOP).
MAX_SYMLINKS = 40


def check_name(name: str, what: str) -> str:
    # REAPI Directory: a node's name is one path component.
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(f"{what} name {name[:100]!r} is not a single path component")
    return name


def check_relative(path: str, what: str) -> str:
    """A path inside the action's directory: relative, no `..`, no empty components."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "\0" in path:
        raise InvalidArgument(f"{what} {path[:200]!r} must be a relative path inside the input root")
    return path


def make_dirs(root: Path, rel: str, owner: tuple[int, int] | None, what: str) -> Path:
    """Create `root/rel` and its missing parents, owned by `owner`; refuse to pass through a
    symlink or a file (REAPI: the server creates output parents; the input tree cannot redirect
    where)."""
    current = root
    for part in PurePosixPath(check_relative(rel, what)).parts:
        if part == ".":
            continue
        current = current / part
        if current.is_symlink():
            raise InvalidArgument(f"{what} {rel[:200]!r} passes through a symlink of the input root")
        if not current.exists():
            current.mkdir()
            if owner:
                os.chown(current, *owner)
        elif not current.is_dir():
            raise InvalidArgument(f"{what} {rel[:200]!r} passes through a file of the input root")
    return current


def resolve(root: Path, rel: str, aliases: tuple[str, ...], what: str) -> Path:
    """The host path of `rel` (relative to `root`), following symlinks while they stay inside
    the input root. An absolute symlink target counts as inside when it starts with one of
    `aliases`, the paths the input root had where the action ran. A symlink leading outside is
    INVALID_ARGUMENT: the action's error, never a read of the worker's files."""
    pending = list(reversed(PurePosixPath(check_relative(rel, what)).parts))
    resolved: list[str] = []
    followed = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if not resolved:
                raise _escape(what, rel)
            resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise InvalidArgument(f"{what} {rel[:200]!r}: too many levels of symlinks")
        target = os.readlink(candidate)
        if target.startswith("/"):
            alias = next((a for a in aliases if target == a or target.startswith(a + "/")), None)
            if alias is None:
                raise _escape(what, rel)
            target, resolved = target[len(alias) :].lstrip("/"), []
        pending.extend(reversed(PurePosixPath(target).parts))
    return root.joinpath(*resolved)


def _escape(what: str, rel: str) -> InvalidArgument:
    return InvalidArgument(
        f"{what} {rel[:200]!r} is or passes through a symlink leading outside the input root"
    )
