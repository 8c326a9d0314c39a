"""Counts added by many threads without a lock: each thread adds to a dict only it writes, and a
reader (a scrape, a fold into the metrics) sums them. Adding is a dict update; reading is rare.
A value is a number, or a row of numbers (a list of fixed length per key, added to in place)
that is summed position by position."""

import threading
from collections.abc import Hashable
from typing import Any


class Tally:
    def __init__(self) -> None:
        self.local = threading.local()
        self._shards: list[dict[Hashable, Any]] = []

    def shard(self) -> dict[Hashable, Any]:
        """This thread's own counts (made on its first use): add to it directly on a hot path.
        Hotter still, `getattr(tally.local, "shard", None) or tally.shard()` saves the call."""
        shard: dict[Hashable, Any] | None = getattr(self.local, "shard", None)
        if shard is None:
            shard = self.local.shard = {}
            self._shards.append(shard)
        return shard

    def add(self, key: Hashable, amount: float = 1) -> None:
        shard = self.shard()
        shard[key] = shard.get(key, 0) + amount

    def totals(self) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        for shard in list(self._shards):
            for key, count in dict(shard).items():  # a copy: its thread goes on adding
                if isinstance(count, list):
                    mine = out.get(key)
                    # A row is copied too: the totals must not change under their reader.
                    out[key] = (
                        list(count) if mine is None else [a + b for a, b in zip(mine, count, strict=True)]
                    )
                else:
                    out[key] = out.get(key, 0) + count
        return out
