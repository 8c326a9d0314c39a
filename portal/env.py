"""Strict readers for settings from the environment.

A malformed value stops start-up with a message naming the variable, rather
than running with a default the operator did not ask for. `NAME_FILE` is read
before `NAME` so secrets can come from mounted files.
"""

import os
from pathlib import Path


class SettingError(RuntimeError):
    pass


def env(name: str, default: str = "") -> str:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool = False) -> bool:
    value = env(name, "1" if default else "0").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingError(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def envint(name: str, default: int) -> int:
    value = env(name, str(default)).strip()
    try:
        return int(value)
    except ValueError:
        raise SettingError(f"{name} must be an integer, not {value!r}") from None


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'500M', '10G', '1T' or a plain number of bytes (binary multiples); ValueError otherwise."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SIZE_UNITS else text
    value = int(float(number) * factor)
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def envbytes(name: str, default: str) -> int:
    value = env(name, default)
    try:
        return parse_size(value)
    except ValueError:
        raise SettingError(f"{name} must be a size such as 512M or 4G, not {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def required(name: str) -> str:
    value = env(name)
    if not value:
        raise SettingError(f"{name} is required when DJANGO_PRODUCTION=1")
    return value
