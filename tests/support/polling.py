"""Waiting for something to become true, the one way the tests do it (no fixed sleeps)."""

import time


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """The first truthy value `predicate` returns; AssertionError if none comes within `timeout`
    (a bound on waiting for a state, not a measurement of speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
