"""zstd for blobs in the batch CAS methods (REAPI v2.3 `Compressor`).

A client that lists ZSTD in `supported_batch_update_compressors` may send batch blobs
compressed, and one that lists it in `BatchReadBlobsRequest.acceptable_compressors` may get
them back compressed: a workstation across the internet sends and fetches fewer bytes. The
digest is always of the uncompressed blob (REAPI: compression never changes a digest).
"""

import zstandard

from reapi.errors import InvalidArgument

# Fast, and most of the gain: build outputs are compressed for the wire, not for the archive.
LEVEL = 1
_READ_CHUNK = 64 * 1024


def decompress(data: bytes, size: int) -> bytes:
    """The blob `data` holds, read to at most `size` + 1 bytes: a frame that would inflate
    beyond its digest's size (a zip bomb) stops there, and the digest check refuses it."""
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while len(out) <= size:
                chunk = reader.read(min(_READ_CHUNK, size + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError:
        raise InvalidArgument("compressed data is not valid zstd") from None
    return bytes(out)


def compress_if_smaller(data: bytes) -> bytes | None:
    """The blob compressed, or None when that would not make it smaller (random bytes, tiny
    blobs): the server then answers with the blob as it is, which REAPI allows."""
    packed = zstandard.ZstdCompressor(level=LEVEL).compress(data)
    return packed if len(packed) < len(data) else None
