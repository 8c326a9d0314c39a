"""Execution operations and the workers that run them.

An Operation row is the one truth about an Execute: the gRPC server creates it and streams it,
a worker claims it under a lease, runs it and completes it with a conditional update, so it
ends exactly once however many times its task is delivered.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from reapi import error_status

# REAPI ExecutionStage values (remote_execution.proto).
QUEUED = 2
EXECUTING = 3
COMPLETED = 4
STAGE_NAMES = {QUEUED: "queued", EXECUTING: "executing", COMPLETED: "completed"}


class Operation(models.Model):
    name = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey("portal.Tenant", on_delete=models.CASCADE, related_name="operations")
    cluster = models.CharField(max_length=16)
    # The storage the action's inputs and outputs live in (cluster plus the tenant's cache
    # mode when it was submitted), so the worker uses the same one as the client.
    storage_alias = models.CharField(max_length=64)
    pool = models.CharField(max_length=64)
    action_hash = models.CharField(max_length=64)
    action_size = models.BigIntegerField()
    # Set while the action is queued or running (unless do_not_cache): an identical Execute
    # from the same tenant joins this operation instead of running the action again.
    # NULL, not "", when unset: NULLs never collide in the unique constraint below.
    inflight_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    stage = models.PositiveSmallIntegerField(default=QUEUED)
    done = models.BooleanField(default=False)
    cached = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    # Deliveries claimed so far; a claim by another worker after a lapsed lease increments it.
    attempt = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Bumped on every change, so watchers see an update with one cheap query.
    version = models.PositiveIntegerField(default=0)
    status_code = models.IntegerField(default=0)  # google.rpc code of ExecuteResponse.status
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    response = models.BinaryField(null=True, blank=True)  # serialized ExecuteResponse
    # The credential and tool behind the request (reapi.provenance.Writer fields), recorded as
    # the writer of the action-cache entry the worker stores.
    requested_by = models.JSONField(default=dict, blank=True)
    queued_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "inflight_key"],
                condition=Q(inflight_key__isnull=False),
                name="one_inflight_operation_per_action",
            )
        ]
        indexes = [
            models.Index(fields=["done", "stage", "cluster", "pool"], name="op_queue_idx"),
            models.Index(fields=["tenant", "cluster", "-id"], name="op_tenant_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({STAGE_NAMES.get(self.stage, self.stage)})"

    @property
    def stage_name(self) -> str:
        return STAGE_NAMES.get(self.stage, str(self.stage))

    @property
    def status_name(self) -> str:
        # google.rpc.Code names, for people reading ExecuteResponse.status codes.
        return error_status.name(self.status_code)


class Worker(models.Model):
    """A `manage.py worker` process, as its heartbeats describe it."""

    name = models.CharField(max_length=200, unique=True)
    cluster = models.CharField(max_length=16)
    pool = models.CharField(max_length=64)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    concurrency = models.PositiveIntegerField(default=1)
    running = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    # Three missed heartbeats after the last one, by the worker's own heartbeat interval.
    offline_after = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Whether its actions run in the sandbox (REAPI_SANDBOX), and may ask for the network.
    sandboxed = models.BooleanField(default=False)
    network = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name
