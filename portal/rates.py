"""A request rate, `RPS[:BURST]`: one grammar for REAPI_TOKEN_RATE, `manage.py tenant rate`
and the REST API's tenant resource.

RPS is calls per second (a decimal such as `0.5` is allowed), BURST how many calls a credential
may make at once after a quiet spell; without it, one second's worth (at least 1). Both are
bounded, so a typo cannot turn into a limit nobody meant.
"""

import math
import re
from dataclasses import dataclass

MAX_PER_SECOND = 1_000_000
MAX_BURST = 10_000_000
DEFAULT = "default"  # what the CLI and the API take for "the server's REAPI_TOKEN_RATE"

_GRAMMAR = re.compile(r"(?P<rps>\d{1,7}(?:\.\d{1,3})?)(?::(?P<burst>\d{1,8}))?")


class RateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int

    def __str__(self) -> str:
        return f"{self.per_second:g}:{self.burst}"

    def describe(self) -> str:
        return f"{self.per_second:g} calls/s, bursts of {self.burst}"


def parse(text: str) -> Rate:
    found = _GRAMMAR.fullmatch(text.strip())
    if found is None:
        raise RateError(f"{text[:40]!r} is not a rate: write RPS[:BURST], e.g. 50 or 50:100")
    per_second = float(found["rps"])
    if not 0 < per_second <= MAX_PER_SECOND:
        raise RateError(f"the rate must be above 0 and at most {MAX_PER_SECOND:,} calls per second")
    burst = int(found["burst"]) if found["burst"] else max(1, math.ceil(per_second))
    if not 1 <= burst <= MAX_BURST:
        raise RateError(f"the burst must be from 1 to {MAX_BURST:,} calls")
    return Rate(per_second, burst)


def parse_override(text: str) -> Rate | None:
    """A tenant's override: a rate, or None for `default` (the server's REAPI_TOKEN_RATE)."""
    return None if text.strip() == DEFAULT else parse(text)
