"""What the workers-and-queues page shows: pools with their online workers and queue depth,
operations queued or running, and recent failures (no gRPC, no HTTP: plain queries)."""

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from workers import pools
from workers.models import EXECUTING, QUEUED, Operation, Worker
from workers.sandbox import human


@dataclass
class PoolRow:
    cluster: str
    name: str
    arch: str
    workers: list[Worker] = field(default_factory=list)
    queued: int = 0
    running: int = 0
    oldest_queued: datetime | None = None
    configured: bool = True
    network: bool = False
    limits: pools.Limits | None = None

    @property
    def waiting(self) -> bool:
        """Work is queued and nobody is there to take it."""
        return self.queued > 0 and not self.workers

    @property
    def capacity(self) -> int:
        return sum(w.concurrency for w in self.workers)

    @property
    def sandboxing(self) -> str:
        """What the online workers say of their sandbox: all, none, some or (none online) '–'."""
        states = {w.sandboxed for w in self.workers}
        if not states:
            return "–"
        if states == {True}:
            return "sandboxed"
        return "NOT sandboxed" if states == {False} else "some NOT sandboxed"

    @property
    def limits_text(self) -> str:
        if self.limits is None:
            return ""
        lim = self.limits
        return f"memory {human(lim.memory)}, {lim.pids} processes, output {human(lim.output)}"


def pool_rows(operations: QuerySet[Operation]) -> list[PoolRow]:
    rows: dict[tuple[str, str], PoolRow] = {}
    for cluster in settings.CLUSTERS:
        for pool in pools.configured(cluster):
            rows[cluster, pool.name] = PoolRow(
                cluster, pool.name, pool.arch, network=pool.network, limits=pool.action_limits()
            )
    for worker in online_workers():
        row = rows.get((worker.cluster, worker.pool))
        if row is None:  # a worker started with another machine's pool settings
            row = rows[worker.cluster, worker.pool] = PoolRow(
                worker.cluster, worker.pool, "?", configured=False
            )
        row.workers.append(worker)
    counts = (
        operations.filter(done=False)
        .values("cluster", "pool")
        .annotate(
            queued=Count("id", filter=Q(stage=QUEUED)),
            running=Count("id", filter=Q(stage=EXECUTING)),
            oldest=Min("queued_at", filter=Q(stage=QUEUED)),
        )
    )
    for c in counts:
        row = rows.get((c["cluster"], c["pool"]))
        if row is None:
            row = rows[c["cluster"], c["pool"]] = PoolRow(c["cluster"], c["pool"], "?", configured=False)
        row.queued, row.running, row.oldest_queued = c["queued"], c["running"], c["oldest"]
    return list(rows.values())


def online_workers() -> list[Worker]:
    return list(
        Worker.objects.filter(stopped_at__isnull=True, offline_after__gt=timezone.now()).order_by(
            "cluster", "pool", "name"
        )
    )


def in_flight(operations: QuerySet[Operation], limit: int = 50) -> list[Operation]:
    return list(operations.filter(done=False).select_related("tenant").order_by("queued_at")[:limit])


def recent_failures(operations: QuerySet[Operation], limit: int = 20) -> list[Operation]:
    failed = Q(status_code__gt=0) | (Q(exit_code__isnull=False) & ~Q(exit_code=0))
    return list(
        operations.filter(done=True).filter(failed).select_related("tenant").order_by("-completed_at")[:limit]
    )


def recent_completed(operations: QuerySet[Operation], limit: int = 25) -> list[Operation]:
    """The latest finished actions, succeeded or not, newest first."""
    return list(
        operations.filter(done=True).select_related("tenant").order_by("-completed_at", "-id")[:limit]
    )
