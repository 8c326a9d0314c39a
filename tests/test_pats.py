"""Unit tests for the PAT format (a contract: docs/architecture.md)."""

import re
import zlib

import pytest

from portal import pats


def test_it_generates_tokens_in_the_contract_format() -> None:
    token = pats.generate()
    assert re.fullmatch(r"aw_pat_[0-9A-Za-z]{36}", token)
    pats.check_format(token)


def test_the_checksum_is_crc32_of_the_random_part_in_base62() -> None:
    token = pats.generate()
    random_part, check = token[7:37], token[37:]
    number = 0
    for ch in check:
        number = number * 62 + pats.ALPHABET.index(ch)
    assert number == zlib.crc32(random_part.encode())


def test_tokens_do_not_repeat() -> None:
    assert len({pats.generate() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "text",
    ["", "aw_pat_", "aw_pat_short", "gh_pat_" + "a" * 36, "aw_pat_" + "a" * 35 + "!", "aw_pat_" + "a" * 37],
)
def test_it_rejects_malformed_tokens(text: str) -> None:
    with pytest.raises(pats.MalformedToken, match="not a personal access token"):
        pats.check_format(text)


def test_it_rejects_a_typo_by_checksum() -> None:
    token = pats.generate()
    i = 12
    typo = token[:i] + ("b" if token[i] != "b" else "c") + token[i + 1 :]
    with pytest.raises(pats.MalformedToken, match="checksum"):
        pats.check_format(typo)


def test_only_a_digest_and_a_short_prefix_are_derived_for_storage() -> None:
    token = pats.generate()
    assert pats.digest(token) != token and len(pats.digest(token)) == 64
    assert pats.display_prefix(token) == token[:13]
    assert token[13:] not in pats.digest(token)
