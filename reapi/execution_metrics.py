"""Gauges read from the database at scrape time: the execution queue and the workers online,
per pool of one cluster. They describe the cluster, not a process, so the one process that
answers a scrape reads them (never a sum over processes)."""

import logging
from collections.abc import Iterator

from django.db import close_old_connections, connection
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.models import QUEUED, Operation, Worker

log = logging.getLogger(__name__)


class ExecutionCollector(Collector):
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "reapi_execution_queue_length", "Actions queued for a worker.", labels=("cluster", "pool")
        )
        online = GaugeMetricFamily(
            "reapi_workers_online",
            "Workers online (heartbeat within their lease).",
            labels=("cluster", "pool"),
        )
        try:
            close_old_connections()
            queued = (
                Operation.objects.filter(done=False, stage=QUEUED, cluster=self.cluster)
                .values_list("pool")
                .annotate(n=Count("pk"))
            )
            workers = (
                Worker.objects.filter(
                    cluster=self.cluster, stopped_at__isnull=True, offline_after__gt=timezone.now()
                )
                .values_list("pool")
                .annotate(n=Count("pk"))
            )
            for pool, n in queued:
                queue.add_metric((self.cluster, pool), n)
            for pool, n in workers:
                online.add_metric((self.cluster, pool), n)
        except Exception:
            # A scrape without these beats no scrape; /readyz says the database is away.
            log.warning("execution gauges unavailable: the database did not answer", exc_info=True)
        finally:
            connection.close()  # each scrape runs on a thread of its own
        yield queue
        yield online
