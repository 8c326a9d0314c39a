"""The thread pools of one server process, and which calls run on which (reapi.methods)."""

from concurrent import futures
from dataclasses import dataclass

from reapi.methods import HEALTH, QUICK_METHODS, WAITING_METHODS


@dataclass(frozen=True)
class Pools:
    """The thread pools of one server process, by the calls they run.

    grpcio hands each admitted call to a pool's queue; a call waits there for a thread.
    """

    main: futures.ThreadPoolExecutor  # every call not named below
    refusals: futures.ThreadPoolExecutor  # refusals: they answer at once and read no request
    health: futures.ThreadPoolExecutor  # grpc.health.v1 Check, which must answer under load
    waiting: futures.ThreadPoolExecutor | None = None  # WAITING_METHODS, and health Watch
    quick: futures.ThreadPoolExecutor | None = None  # QUICK_METHODS

    def routes(self) -> dict[str, tuple[str, futures.ThreadPoolExecutor]]:
        table = {HEALTH + "Check": ("health", self.health)}
        if self.quick is not None:
            table.update(dict.fromkeys(QUICK_METHODS, ("quick", self.quick)))
        if self.waiting is not None:
            table.update(dict.fromkeys(WAITING_METHODS | {HEALTH + "Watch"}, ("waiting", self.waiting)))
        return table
