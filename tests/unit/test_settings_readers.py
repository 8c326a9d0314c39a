"""The strict settings readers: sizes."""

import pytest

from portal.env import SettingError, envbytes, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("512", 512), ("4K", 4096), ("1.5G", 3 << 29), ("8GiB", 8 << 30), ("2t", 2 << 40)],
)
def test_it_reads_sizes_in_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "4X"])
def test_it_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_bad_size_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_LIMIT", "huge")
    with pytest.raises(SettingError, match="SOME_LIMIT must be a size"):
        envbytes("SOME_LIMIT", "1G")
