"""How an action-cache entry is stored: the ActionResult behind a short header that says who
wrote it, so a reader can decide from the one object it already fetched whether to serve it.

README "What CI accepts from workstations". In pass-through both clusters use the internal
storage, under the same key per action. The header records whether the result came through the
internal cluster (CI) or the external one (workstations) and, for a workstation's result, every
distinct (user, token) that wrote an identical one. The internal cluster serves a workstation's
result only if the tenant's setting lets it (Principal.ci_threshold: `all` always, `confirmed`
once enough distinct users wrote it, `none` never); the external cluster serves every entry.
The setting is applied when an entry is read, so switching it moves nothing in storage.

Layout (version 1):

    00 61 63 01        magic and version. A serialized protobuf message never starts with
                       0x00 (field number 0 is invalid), so anything else is an entry stored
                       before origins were (a bare ActionResult: a legacy entry)
    origin             1 byte: 'i' written through the internal cluster, 'e' the external
    voters             1 byte: n, at most MAX_VOTERS; one per distinct user
    written_at         float64, little-endian, Unix seconds
    n x (user, token)  two uint64, little-endian (0: none, e.g. an OIDC credential's token)
    ActionResult       serialized deterministically
"""

import struct
import time
from dataclasses import dataclass

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

MAGIC = b"\x00ac\x01"
INTERNAL = ord("i")
EXTERNAL = ord("e")
_HEAD = struct.Struct("<BBd")
_VOTER = struct.Struct("<QQ")
HEADER_BYTES = len(MAGIC) + _HEAD.size
VOTER_BYTES = _VOTER.size
ORIGIN_AT = len(MAGIC)
VOTERS_AT = len(MAGIC) + 1
# Above portal.models.MAX_CI_CONFIRMATIONS, so a full list always confirms.
MAX_VOTERS = 32
# A threshold no entry reaches: the internal cluster under `none`.
NEVER = 1 << 30

Voter = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Author:
    """Who is writing: through the external cluster or not, and the user and token (0: none)."""

    external: bool
    user_id: int = 0
    token_id: int = 0

    @property
    def voter(self) -> Voter:
        return (self.user_id, self.token_id)


@dataclass(frozen=True, slots=True)
class Entry:
    origin: int  # INTERNAL or EXTERNAL
    voters: tuple[Voter, ...]
    written_at: float
    payload: bytes  # the serialized ActionResult

    def accepted(self, threshold: int) -> bool:
        """Whether a reader needing `threshold` distinct workstation users is served this."""
        return self.origin == INTERNAL or len(self.voters) >= threshold


def encode(origin: int, voters: tuple[Voter, ...], payload: bytes, written_at: float | None = None) -> bytes:
    voters = voters[-MAX_VOTERS:]
    head = _HEAD.pack(origin, len(voters), time.time() if written_at is None else written_at)
    return b"".join([MAGIC, head, *(_VOTER.pack(u, t) for u, t in voters), payload])


def is_legacy(data: bytes) -> bool:
    return data[: len(MAGIC)] != MAGIC


def decode(data: bytes) -> Entry | None:
    """The entry in `data`, or None for a legacy entry (the bare ActionResult) or a header
    that does not parse (which reads then treat as an unusable entry)."""
    if is_legacy(data) or len(data) < HEADER_BYTES:
        return None
    origin, n, written_at = _HEAD.unpack_from(data, len(MAGIC))
    end = HEADER_BYTES + n * VOTER_BYTES
    if origin not in (INTERNAL, EXTERNAL) or len(data) < end:
        return None
    voters = tuple(_VOTER.unpack_from(data, HEADER_BYTES + i * VOTER_BYTES) for i in range(n))
    return Entry(origin, voters, written_at, data[end:])


def payload_for(data: bytes, threshold: int) -> bytes | None:
    """The hot path of a read: the ActionResult bytes of a versioned entry a reader needing
    `threshold` may be served, or None if it may not; ValueError for a header cut short. Two
    byte reads and one slice."""
    if len(data) < HEADER_BYTES:
        raise ValueError("the entry's header is cut short")
    n = data[VOTERS_AT]
    if threshold and data[ORIGIN_AT] != INTERNAL and n < threshold:
        return None
    return data[HEADER_BYTES + n * VOTER_BYTES :]


def with_voter(voters: tuple[Voter, ...], author: Author) -> tuple[Voter, ...]:
    """`voters` plus the author: one pair per user (the latest token), oldest dropped past the cap."""
    kept = tuple(v for v in voters if v[0] != author.user_id)
    return (*kept, author.voter)[-MAX_VOTERS:]


def without_token(voters: tuple[Voter, ...], token_id: int) -> tuple[Voter, ...]:
    return tuple(v for v in voters if v[1] != token_id)


# --- Identical results -------------------------------------------------------------------------


def fingerprint(result: re_pb2.ActionResult) -> tuple[object, ...]:
    """What "an identical result" compares: the exit code and every output's path and digest
    (files with their executable bit, directories by Tree, symlinks by target). stdout, stderr
    and the execution metadata differ between honest runs and are left out."""
    return (
        result.exit_code,
        tuple(
            sorted((f.path, f.digest.hash, f.digest.size_bytes, f.is_executable) for f in result.output_files)
        ),
        tuple(
            sorted((d.path, d.tree_digest.hash, d.tree_digest.size_bytes) for d in result.output_directories)
        ),
        tuple(
            sorted(
                (s.path, s.target)
                for s in (
                    *result.output_symlinks,
                    *result.output_file_symlinks,
                    *result.output_directory_symlinks,
                )
            )
        ),
    )


def summary(result: re_pb2.ActionResult, limit: int = 200) -> dict[str, object]:
    """The exit code and outputs of a result, for a person (the Cache mode page's conflicts)."""
    outputs: dict[str, str] = {}
    for f in result.output_files:
        outputs[f.path] = f"{f.digest.hash}/{f.digest.size_bytes}" + (
            " (executable)" if f.is_executable else ""
        )
    for d in result.output_directories:
        outputs[d.path + "/"] = f"tree {d.tree_digest.hash}/{d.tree_digest.size_bytes}"
    for s in (*result.output_symlinks, *result.output_file_symlinks, *result.output_directory_symlinks):
        outputs[s.path] = f"-> {s.target}"
    shown = dict(sorted(outputs.items())[:limit])
    return {"exit_code": result.exit_code, "outputs": shown, "more": max(len(outputs) - limit, 0)}
