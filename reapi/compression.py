"""zstd for blobs (REAPI v2.3 `Compressor`): ByteStream `compressed-blobs` and the batch methods.

A client that lists ZSTD in `supported_batch_update_compressors` may send batch blobs
compressed, and one that lists it in `BatchReadBlobsRequest.acceptable_compressors` may get
them back compressed: a workstation across the internet sends and fetches fewer bytes. The
digest is always of the uncompressed blob (REAPI: compression never changes a digest).

Every compressed input is inflated by `inflate`, the one bounded path: a few KB of zstd can
stand for gigabytes, so nothing is inflated past the size the digest declares.
"""

import io
import logging
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

import zstandard

from reapi.digests import Digest
from reapi.errors import InvalidArgument

log = logging.getLogger(__name__)

# Fast, and most of the gain: build outputs are compressed for the wire, not for the archive.
LEVEL = 1
# Inflated bytes in memory at once, beyond what the caller keeps.
CHUNK = 1024 * 1024
# The largest window a frame may ask the decoder to keep. RFC 8878 §3.1.1.1.2 recommends that
# decoders support windows up to 8 MB and that encoders not need more (zstd -19 stays within
# it), and a window is memory the decoder fills for every upload in flight.
MAX_WINDOW = 8 * 1024 * 1024


class _Pieces(io.RawIOBase):
    """The compressed stream as a file the decoder reads from: a piece is taken from
    `pieces` only when the decoder has used up the one before."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        super().__init__()
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def inflate(digest: Digest, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The blob a zstd stream (`pieces`, in order) stands for, in chunks of at most CHUNK bytes.

    Raises InvalidArgument, naming the digest, as soon as the stream inflates past
    `digest.size`: the decoder is asked for one byte more than the size, never for the
    rest, and works a zstd block (at most 128 KiB) at a time, so a few KB that stand for
    gigabytes cost no more memory than an honest upload. The request's pieces are taken one
    by one as the decoder needs them. A stream may hold several frames (RFC 8878 §3.1:
    their contents follow one another). A stream that ends early yields fewer bytes; the
    caller's size and hash check refuses it.
    """
    decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    inflated = 0
    try:
        with decoder.stream_reader(cast(IO[bytes], _Pieces(pieces)), read_across_frames=True) as reader:
            # One byte more than the digest allows is how an overlong stream shows itself.
            while chunk := reader.read(min(CHUNK, digest.size + 1 - inflated)):
                inflated += len(chunk)
                if inflated > digest.size:
                    raise InvalidArgument(
                        f"compressed data for {digest} inflates to more than its {digest.size} bytes"
                    )
                yield chunk
    except zstandard.ZstdError as exc:
        log.info("refused zstd data for %s: %s", digest, exc)
        raise InvalidArgument(
            f"compressed data for {digest} is not valid zstd, or needs a window over {MAX_WINDOW >> 20} MiB"
        ) from None


def decompress(data: bytes, digest: Digest) -> bytes:
    """The blob one compressed message holds (a batch entry), through `inflate`."""
    return b"".join(inflate(digest, [data]))


def compress_if_smaller(data: bytes) -> bytes | None:
    """The blob compressed, or None when that would not make it smaller (random bytes, tiny
    blobs): the server then answers with the blob as it is, which REAPI allows."""
    packed = zstandard.ZstdCompressor(level=LEVEL).compress(data)
    return packed if len(packed) < len(data) else None
