"""Digests and the REAPI resource-name grammar, validated before anything touches storage.

REAPI v2 (ContentAddressableStorage comments): reads are `{instance}/blobs/{hash}/{size}`,
writes `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/optional_metadata}`, compressed forms use
`compressed-blobs/{compressor}/…`. Instance-name segments may not be reserved words. This server
only accepts SHA-256, so a hash is exactly 64 lowercase hex characters.
"""

import hashlib
import re
from dataclasses import dataclass

from reapi.errors import InvalidArgument
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

HASH_RE = re.compile(r"[0-9a-f]{64}")
EMPTY_HASH = hashlib.sha256(b"").hexdigest()
# The largest blob any store here can hold (S3's largest object, 5 TiB): a digest claiming more
# names nothing that can exist, and keeps sizes far from int64 sums in the database.
MAX_BLOB_BYTES = 5 * 1024**4
RESERVED = frozenset(
    {"blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs"}
)
COMPRESSORS = frozenset({"zstd"})
UUID_RE = re.compile(r"[0-9A-Za-z-]{1,64}")


@dataclass(frozen=True, slots=True)
class Digest:
    hash: str
    size: int

    def __str__(self) -> str:
        return f"{self.hash}/{self.size}"


# The one blob every CAS holds without storing it. The size is part of the digest: the empty
# hash with any other size names no blob at all.
EMPTY = Digest(EMPTY_HASH, 0)


def is_empty(d: Digest) -> bool:
    """`d == EMPTY`, without the dataclass's tuple-building __eq__ (once a blob in batches)."""
    return d.size == 0 and d.hash == EMPTY_HASH


def check(hash_: str, size: int) -> Digest:
    if not HASH_RE.fullmatch(hash_):
        raise InvalidArgument(f"digest hash {hash_[:80]!r} is not 64 lowercase hex characters (SHA-256)")
    if size < 0:
        raise InvalidArgument(f"digest {hash_} has a negative size ({size})")
    if size > MAX_BLOB_BYTES:
        raise InvalidArgument(f"digest {hash_} has a size ({size}) above the largest blob ({MAX_BLOB_BYTES})")
    return Digest(hash_, size)


def check_field(d: re_pb2.Digest, field: str) -> Digest:
    """`check` of a Digest inside a client's message (ActionResult, Tree, Directory, Action):
    the same rules as a request's digest, and the error names the field, e.g.
    `output_files[2].digest`. Only a checked digest may become a storage key."""
    try:
        return check(d.hash, d.size_bytes)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}: {exc.message}") from None


def of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), len(data))


def verify(expected: Digest, data: bytes) -> None:
    if len(data) != expected.size:
        raise InvalidArgument(f"blob {expected}: got {len(data)} bytes, the digest says {expected.size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.hash:
        raise InvalidArgument(f"blob {expected}: data hashes to {actual}")


@dataclass(frozen=True, slots=True)
class ResourceName:
    instance: str
    digest: Digest
    compressor: str  # "" for plain blobs
    upload_id: str  # "" for reads


def _parse_size(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise InvalidArgument(f"blob size {text[:40]!r} is not a non-negative integer")
    return int(text)


def _split_instance(segments: list[str], marker_index: int, resource: str) -> str:
    instance_segments = segments[:marker_index]
    for seg in instance_segments:
        if seg in RESERVED:
            raise InvalidArgument(f"resource name {resource!r}: {seg!r} is a reserved segment")
    return "/".join(instance_segments)


def _check_path_shape(resource: str) -> list[str]:
    if not resource:
        raise InvalidArgument("resource name is empty")
    if len(resource) > 1024:
        raise InvalidArgument("resource name is longer than 1024 characters")
    segments = resource.split("/")
    if any(seg == "" for seg in segments):
        raise InvalidArgument(f"resource name {resource!r} has an empty segment ('//' or an edge '/')")
    if any(seg in (".", "..") for seg in segments):
        raise InvalidArgument(f"resource name {resource!r} contains '.' or '..'")
    return segments


def _parse_blob_tail(tail: list[str], resource: str) -> tuple[str, Digest]:
    """Parse `blobs/{hash}/{size}` or `compressed-blobs/{compressor}/{hash}/{size}`."""
    if tail and tail[0] == "blobs" and len(tail) >= 3:
        return "", check(tail[1], _parse_size(tail[2]))
    if tail and tail[0] == "compressed-blobs" and len(tail) >= 4:
        if tail[1] not in COMPRESSORS:
            raise InvalidArgument(f"resource name {resource!r}: compressor {tail[1]!r} is not supported")
        return tail[1], check(tail[2], _parse_size(tail[3]))
    raise InvalidArgument(
        f"resource name {resource!r} is not of the form "
        "[instance/]blobs/HASH/SIZE or [instance/]compressed-blobs/zstd/HASH/SIZE"
    )


def parse_read(resource: str) -> ResourceName:
    segments = _check_path_shape(resource)
    for i, seg in enumerate(segments):
        if seg in ("blobs", "compressed-blobs"):
            instance = _split_instance(segments, i, resource)
            tail = segments[i:]
            compressor, digest = _parse_blob_tail(tail, resource)
            expected_len = 3 if not compressor else 4
            if len(tail) != expected_len:
                raise InvalidArgument(f"resource name {resource!r} has trailing segments")
            return ResourceName(instance, digest, compressor, "")
    raise InvalidArgument(f"resource name {resource!r} has no blobs/ segment")


def parse_write(resource: str) -> ResourceName:
    segments = _check_path_shape(resource)
    for i, seg in enumerate(segments):
        if seg == "uploads":
            instance = _split_instance(segments, i, resource)
            if len(segments) < i + 2 or not UUID_RE.fullmatch(segments[i + 1]):
                raise InvalidArgument(f"resource name {resource!r}: missing or malformed upload id")
            # Anything after {size} is optional metadata, which REAPI lets servers ignore.
            compressor, digest = _parse_blob_tail(segments[i + 2 :], resource)
            return ResourceName(instance, digest, compressor, segments[i + 1])
        if seg in RESERVED:
            raise InvalidArgument(
                f"resource name {resource!r}: {seg!r} is a reserved segment where the instance "
                "name or uploads/UUID/blobs/HASH/SIZE was expected"
            )
    raise InvalidArgument(
        f"resource name {resource!r} is not of the form [instance/]uploads/UUID/blobs/HASH/SIZE"
    )


def cas_key(tenant: str, digest: Digest) -> str:
    # Built only from the validated tenant slug and hash, never from a raw resource name.
    return f"{tenant}/cas/{digest.hash[:2]}/{digest.hash}"


def ac_key(tenant: str, digest: Digest) -> str:
    return f"{tenant}/ac/{digest.hash[:2]}/{digest.hash}"
