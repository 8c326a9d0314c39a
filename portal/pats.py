"""Personal access tokens: the `aw_pat_` format, its checksum, and the stored digest.

Format (a contract, docs/architecture.md): `aw_pat_` + 30 base62 characters from `secrets` + 6 base62
characters of CRC32 over those 30. The checksum lets a typo or a random string be refused
before any database lookup, and the fixed prefix lets secret scanners match
`aw_pat_[0-9A-Za-z]{36}`. Only a SHA-256 digest is stored: the random part carries ~178 bits,
so a plain digest cannot be brute-forced and needs no pepper that could be lost.
"""

import hashlib
import re
import secrets
import zlib

PREFIX = "aw_pat_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
DISPLAY_LENGTH = len(PREFIX) + 6
PATTERN = re.compile(r"aw_pat_[0-9A-Za-z]{36}")


class MalformedToken(ValueError):
    pass


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), CHECKSUM_LENGTH)


def generate() -> str:
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return PREFIX + random_part + checksum(random_part)


def check_format(token: str) -> None:
    """Raise MalformedToken unless `token` is well formed and its checksum matches."""
    if not PATTERN.fullmatch(token):
        raise MalformedToken("not a personal access token (expected aw_pat_ and 36 characters)")
    random_part = token[len(PREFIX) : len(PREFIX) + RANDOM_LENGTH]
    if not secrets.compare_digest(checksum(random_part), token[-CHECKSUM_LENGTH:]):
        raise MalformedToken("personal access token checksum does not match (a typo?)")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_LENGTH]
