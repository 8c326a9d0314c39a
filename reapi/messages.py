"""Checks of the REAPI messages clients store for the server to read back: ActionResults, and
the Trees and Directories they put in the CAS.

A stored message is as hostile as a request: every digest inside goes through digests.check
before it can become a storage key, every path and name has the shape REAPI gives it, and an
error names its field (`output_files[2].digest`). A result's entries are counted before they
are walked, so no entry can make GetActionResult's completeness check do unbounded work.
"""

import re
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from reapi import digests
from reapi.digests import Digest
from reapi.errors import InvalidArgument
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

M = TypeVar("M", bound=Message)

# What Capabilities advertise (reapi/capabilities_service.py) and what is checked here: REAPI
# SymlinkAbsolutePathStrategy DISALLOWED, an absolute symlink target is INVALID_ARGUMENT.
SYMLINK_ABSOLUTE_PATH_STRATEGY = re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED
ABSOLUTE_SYMLINKS = SYMLINK_ABSOLUTE_PATH_STRATEGY == re_pb2.SymlinkAbsolutePathStrategy.ALLOWED
# Linux PATH_MAX and NAME_MAX: no client can make a longer output path or file name.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
# The bytes a result's Trees may take together, per entry the limit allows: a FileNode with
# a 255-byte name and its digest takes under 400. Checked on the digests, before any read.
TREE_BYTES_PER_ENTRY = 512
MAX_ENTRIES_SETTING = "REAPI_MAX_RESULT_ENTRIES"

# A `.` or `..` component, between `/` (REAPI's separator) or `\`, which a client on Windows
# would take for a separator too; and what such a client takes for an absolute path.
_DOT_COMPONENT = re.compile(r"(?:^|[/\\])\.\.?(?:$|[/\\])")
_ABSOLUTE = re.compile(r"[/\\]|[A-Za-z]:")
# What a node name (one component) may not hold besides: a separator or NUL.
_BAD_NAME = re.compile(r"[/\0]|(?:^|\\)\.\.?(?:$|\\)")
_SHA256 = digests.HASH_RE.fullmatch
_MAX_SIZE = digests.MAX_BLOB_BYTES


class Budget:
    """What one action result may make the server walk: entries (its outputs, and every
    directory, file and symlink of its output directories' Trees) and the Trees' bytes."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries = 0
        self.tree_bytes = 0

    def spend(self, entries: int) -> None:
        self.entries += entries
        if self.entries > self.max_entries:
            raise InvalidArgument(
                f"the action result holds more than {self.max_entries} entries (outputs, and the "
                f"directories, files and symlinks of output trees), the limit {MAX_ENTRIES_SETTING}"
            )

    def spend_tree_bytes(self, tree: Digest, field: str) -> None:
        self.tree_bytes += tree.size
        limit = self.max_entries * TREE_BYTES_PER_ENTRY
        if self.tree_bytes > limit:
            raise InvalidArgument(
                f"{field}: the result's output trees take more than {limit} bytes "
                f"({TREE_BYTES_PER_ENTRY} per entry of the limit {MAX_ENTRIES_SETTING})"
            )


@dataclass(frozen=True, slots=True)
class References:
    blobs: list[Digest]  # every blob the result names itself (Trees included)
    trees: list[tuple[str, Digest]]  # (field, digest) of each output directory's Tree


def check_output_path(path: str, field: str) -> None:
    """REAPI OutputFile/OutputDirectory/OutputSymlink.path: relative to the working directory,
    `/`-separated, without a leading slash; nothing in it may lead out of that directory.

    REAPI lets an OutputDirectory.path be empty for the whole working directory; no Bazel
    action declares that, and it would let one entry overwrite a client's working directory,
    so it is refused like any empty path.
    """
    if not path:
        raise InvalidArgument(f"{field} is empty; an output path names a file under the working directory")
    problem = None
    if len(path.encode()) > MAX_PATH_BYTES:
        problem = f"is longer than {MAX_PATH_BYTES} bytes"
    elif "\0" in path:
        problem = "contains a NUL character"
    elif _ABSOLUTE.match(path):
        problem = "is absolute; output paths are relative to the working directory"
    elif path.endswith("/") or "//" in path:
        problem = "has an empty component"
    elif _DOT_COMPONENT.search(path):
        problem = "has a '.' or '..' component"
    if problem:
        raise InvalidArgument(f"{field} {path[:200]!r} {problem}")


def check_name(name: str, field: str) -> None:
    # REAPI Directory: a node's name is one path component.
    if not name or _BAD_NAME.search(name) or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{field} {name[:100]!r} is not a single path component")


def check_symlink_target(target: str, field: str) -> None:
    """REAPI OutputSymlink/SymlinkNode.target: data, relative to the symlink's directory, `..`
    allowed anywhere; absolute only where Capabilities advertise ALLOWED."""
    problem = None
    if not target:
        problem = "is empty"
    elif len(target.encode()) > MAX_PATH_BYTES:
        problem = f"is longer than {MAX_PATH_BYTES} bytes"
    elif "\0" in target:
        problem = "contains a NUL character"
    elif _ABSOLUTE.match(target) and not ABSOLUTE_SYMLINKS:
        problem = "is absolute, which this server's capabilities disallow (symlink_absolute_path_strategy)"
    if problem:
        raise InvalidArgument(f"{field} {target[:200]!r} {problem}")


def check_directory(directory: re_pb2.Directory, where: str) -> tuple[list[Digest], list[Digest]]:
    """The checked digests of a Directory's files and of its subdirectories; `where` starts
    each field's name in errors ("Directory H/S ", "….tree_digest: the Tree's root.")."""
    files = []
    for i, f in enumerate(directory.files):
        name, d = f.name, f.digest
        h, size = d.hash, d.size_bytes
        if not _name_ok(name):
            check_name(name, f"{where}files[{i}].name")
        if not (0 <= size <= _MAX_SIZE and _SHA256(h)):
            digests.check_field(d, f"{where}files[{i}].digest")
        files.append(Digest(h, size))
    subdirectories = []
    for i, sub in enumerate(directory.directories):
        if not _name_ok(sub.name):
            check_name(sub.name, f"{where}directories[{i}].name")
        subdirectories.append(digests.check_field(sub.digest, f"{where}directories[{i}].digest"))
    for i, link in enumerate(directory.symlinks):
        check_name(link.name, f"{where}symlinks[{i}].name")
        check_symlink_target(link.target, f"{where}symlinks[{i}].target")
    return files, subdirectories


def _name_ok(name: str) -> bool:
    """check_name's test without its message, in string operations (a regular expression
    tried at every position costs microseconds a name): True only where check_name passes."""
    return (
        bool(name)
        and "/" not in name
        and "\0" not in name
        and not ((name[0] == "." or "\\." in name) and _BAD_NAME.search(name))
        and (len(name) < 64 or len(name.encode()) <= MAX_NAME_BYTES)
    )


def _path_ok(path: str) -> bool:
    """check_output_path's test, the same way: True only where check_output_path passes."""
    return (
        bool(path)
        and "\0" not in path
        and "//" not in path
        and path[0] not in "/\\"
        and path[-1] != "/"
        and path[1:2] != ":"
        and not ((path[0] == "." or "/." in path or "\\." in path) and _DOT_COMPONENT.search(path))
        and (len(path) <= MAX_PATH_BYTES // 4 or len(path.encode()) <= MAX_PATH_BYTES)
    )


def _size(directory: re_pb2.Directory) -> int:
    return len(directory.files) + len(directory.directories) + len(directory.symlinks)


def check_tree(tree: re_pb2.Tree, field: str, budget: Budget) -> list[Digest]:
    """The checked digests of every file in a Tree; its entries are spent from `budget`
    before they are walked."""
    budget.spend(1 + len(tree.children))
    directories = [tree.root, *tree.children]
    budget.spend(sum(map(_size, directories)))
    files = []
    for i, directory in enumerate(directories):
        where = f"{field}: the Tree's " + ("root." if i == 0 else f"children[{i - 1}].")
        files += check_directory(directory, where)[0]
    return files


def parse(message_type: type[M], data: bytes, what: str) -> M:
    """`data` as a `message_type`; INVALID_ARGUMENT naming `what` if it is not one."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except Exception:  # DecodeError, or whatever else the protobuf runtime raises for garbage
        name = message_type.__name__
        raise InvalidArgument(f"{what} is not {'an' if name[0] in 'AEIOU' else 'a'} {name} message") from None
    return message


def parse_tree(data: bytes, field: str, digest: Digest) -> re_pb2.Tree:
    return parse(re_pb2.Tree, data, f"{field}: blob {digest}")


def parse_result(data: bytes) -> re_pb2.ActionResult:
    result = re_pb2.ActionResult()
    try:
        result.ParseFromString(data)
    except DecodeError:
        raise InvalidArgument("the stored entry is not an ActionResult message") from None
    return result


def check_result(result: re_pb2.ActionResult, budget: Budget) -> References:
    """Every digest, path and symlink target of an ActionResult checked, and its entries and
    Trees' sizes spent from `budget`; the digests it names."""
    symlink_lists = (
        ("output_symlinks", result.output_symlinks),
        ("output_file_symlinks", result.output_file_symlinks),
        ("output_directory_symlinks", result.output_directory_symlinks),
    )
    budget.spend(
        len(result.output_files)
        + len(result.output_directories)
        + sum(len(links) for _, links in symlink_lists)
        + result.HasField("stdout_digest")
        + result.HasField("stderr_digest")
    )
    # Output path -> (list, index, symlink target): each path once (see _claim).
    claimed: dict[str, tuple[str, int, str | None]] = {}
    blobs = []
    for i, f in enumerate(result.output_files):
        path, d = f.path, f.digest
        h, size = d.hash, d.size_bytes
        if not _path_ok(path) or path in claimed:
            _claim(claimed, path, "output_files", i)
        claimed[path] = ("output_files", i, None)
        if not (0 <= size <= _MAX_SIZE and _SHA256(h)):
            digests.check_field(d, f"output_files[{i}].digest")
        blobs.append(Digest(h, size))
    trees = []
    for i, out in enumerate(result.output_directories):
        _claim(claimed, out.path, "output_directories", i)
        where = f"output_directories[{i}].tree_digest"
        tree = digests.check_field(out.tree_digest, where)
        budget.spend_tree_bytes(tree, where)
        blobs.append(tree)
        trees.append((where, tree))
        if out.HasField("root_directory_digest"):
            blobs.append(
                digests.check_field(
                    out.root_directory_digest, f"output_directories[{i}].root_directory_digest"
                )
            )
    for name, links in symlink_lists:
        for i, link in enumerate(links):
            check_symlink_target(link.target, f"{name}[{i}].target")
            _claim(claimed, link.path, name, i, link.target)
    for name in ("stdout_digest", "stderr_digest"):
        if result.HasField(name):
            blobs.append(digests.check_field(getattr(result, name), name))
    return References(blobs, trees)


def _claim(
    claimed: dict[str, tuple[str, int, str | None]],
    path: str,
    list_name: str,
    index: int,
    target: str | None = None,
) -> None:
    """Check one output path and record it. Each path is listed once: REAPI v2.1 lets a
    server list a symlink in output_symlinks and in a deprecated list too, so that repeat
    (same target, another list) is the only one allowed."""
    field = f"{list_name}[{index}].path"
    check_output_path(path, field)
    before = claimed.get(path)
    if before is not None and not (target is not None and before[2] == target and before[0] != list_name):
        raise InvalidArgument(
            f"{field} {path[:200]!r} is also {before[0]}[{before[1]}].path; each output path is listed once"
        )
    claimed[path] = (list_name, index, target)
