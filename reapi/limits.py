"""Per-credential limits of one server process: a request rate and a number of open streams.

The rate is a token bucket per credential (a PAT, or a CI runner's OIDC subject), kept as one
number in the form of the generic cell rate algorithm: `tat`, the time at which the bucket
would be full again. A call at `now` is admitted while tat - now <= (burst - 1) / rate, and
moves tat on by 1 / rate; a refused call learns exactly when a token will be there again.
The rate is the tenant's own when it has one (it arrives with the cached credential,
reapi.auth.Principal) and REAPI_TOKEN_RATE otherwise, read per call, so a change reaches a
running server with the credential cache.

Every call of every credential passes here, so nothing on this path takes a lock, waits or asks
the database:
- rates are checked where grpcio admits calls, which it does one at a time (its serving loop
  holds its server lock around our interceptor), so each bucket has one writer;
- streams are tickets in a set per credential. Adding, discarding and counting are single
  operations on a built-in set, atomic under the GIL, and a stream proceeds only if the set is
  within the cap once its own ticket is in: two racing streams may both be refused, never
  both let past the cap;
- refusals are counted per thread (Tally) and summed only when read.
"""

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from portal.rates import Rate
from reapi import metrics
from reapi.errors import RateLimited
from reapi.tally import Tally

log = logging.getLogger(__name__)

# A client refused for its streams is told to wait this long: nothing says when one will end.
STREAM_RETRY_SECONDS = 1.0
# A credential over a limit is logged at most this often, with the count since.
WARN_INTERVAL_SECONDS = 10.0
# Past this many credentials, those idle for IDLE_SECONDS with no stream open are forgotten.
PRUNE_ABOVE = 10_000
IDLE_SECONDS = 60.0


# Calls refused for a credential's limits, by (tenant slug, "rate" or "streams"): what a
# metrics endpoint exports as reapi_rate_limited_total.
RATE_LIMITED = Tally()
# Calls answered UNAVAILABLE because a thread pool's queue was full, by pool name.
SHED = Tally()


@dataclass(slots=True)
class Credential:
    """What the limiter keeps about one credential."""

    tat: float = 0.0
    streams: set[int] = field(default_factory=set)
    refused_since_warning: int = 0
    warned_at: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as far as the limits go."""

    key: str  # one bucket per key: "pat:<id>" or "oidc:<subject>"
    tenant: str
    label: str  # for messages and logs: a token prefix, never the token
    rate: Rate | None  # the tenant's own rate, None for the server's default


_shed_warned: dict[str, float] = {}


def note_shed(pool: str, now: float) -> None:
    """Count a call shed from a full pool queue, and say so in the log at most every few seconds.

    Called at grpcio's admission only, like Limiter.admit."""
    SHED.add(pool)
    if now - _shed_warned.get(pool, float("-inf")) >= WARN_INTERVAL_SECONDS:
        _shed_warned[pool] = now
        log.warning("overloaded: the %s pool's queue is full; calls are answered UNAVAILABLE", pool)


class Limiter:
    def __init__(
        self, default_rate: Rate, max_streams: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default_rate = default_rate
        self.max_streams = max_streams
        self.clock = clock
        self._credentials: dict[str, Credential] = {}
        self._prune_above = PRUNE_ABOVE
        self._tickets = itertools.count()

    def admit(self, caller: Caller) -> Credential:
        """Take a token from the caller's bucket, or raise RateLimited with the wait.

        Call from grpcio's admission only (one thread at a time, see the module docstring)."""
        now = self.clock()
        state = self._credentials.get(caller.key)
        if state is None:
            if len(self._credentials) >= self._prune_above:
                self._prune(now)
            state = self._credentials[caller.key] = Credential(tat=now)
        rate = caller.rate or self.default_rate
        interval = 1.0 / rate.per_second
        # Never further ahead than a whole burst at this rate: the same bound the arithmetic
        # keeps on its own while the rate stays put, and after a limit is raised the debt run
        # up under the old one is not carried over.
        tat = state.tat = min(max(state.tat, now), now + rate.burst * interval)
        wait = tat - now - (rate.burst - 1) * interval
        if wait > 1e-9:  # not a rounding error of the sums above
            self._refused(state, caller, "rate", now)
            raise RateLimited(
                f"{caller.label} is over its rate limit ({rate.describe()}); retry in {max(wait, 0.01):.2f} s",
                wait,
            )
        state.tat = tat + interval
        return state

    def streams_full(self, state: Credential) -> bool:
        """A cheap early test at admission; open_stream is the one that holds the cap."""
        return len(state.streams) >= self.max_streams

    def open_stream(self, state: Credential, caller: Caller) -> int:
        """A ticket for one open stream, to hand back to close_stream; or RateLimited."""
        ticket = next(self._tickets)
        state.streams.add(ticket)
        if len(state.streams) > self.max_streams:
            state.streams.discard(ticket)
            raise self.streams_refusal(state, caller)
        return ticket

    def streams_refusal(self, state: Credential, caller: Caller) -> RateLimited:
        self._refused(state, caller, "streams", self.clock())
        return RateLimited(
            f"{caller.label} has {self.max_streams} streams open, its limit; retry when one ends",
            STREAM_RETRY_SECONDS,
        )

    @staticmethod
    def close_stream(state: Credential, ticket: int) -> None:
        state.streams.discard(ticket)  # twice is harmless: both ends of a stream call it

    def _refused(self, state: Credential, caller: Caller, reason: str, now: float) -> None:
        # Stream refusals come from handler threads: two may race on the counts below, which
        # costs a log line a miscounted call at worst, never a limit.
        RATE_LIMITED.add((caller.tenant, reason))
        metrics.rate_limited(reason)
        state.refused_since_warning += 1
        if now - state.warned_at >= WARN_INTERVAL_SECONDS:
            count, state.refused_since_warning, state.warned_at = state.refused_since_warning, 0, now
            log.warning(
                "rate limited: %s of tenant %s over its %s limit, %d call(s) refused since the last report",
                caller.label,
                caller.tenant,
                reason,
                count,
            )

    def _prune(self, now: float) -> None:
        # A credential idle this long has a full bucket, so forgetting it changes nothing; one
        # with a stream open keeps its count.
        idle = [k for k, s in self._credentials.items() if s.tat < now - IDLE_SECONDS and not s.streams]
        for key in idle:
            del self._credentials[key]
        # With that many busy credentials, look again only once there are twice as many.
        self._prune_above = max(PRUNE_ABOVE, 2 * len(self._credentials))
