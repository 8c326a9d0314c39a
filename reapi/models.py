"""What the REAPI core keeps in the database: the S3 presence index, quotas, provenance, and
the Remote Asset API's index.

Blobs themselves live in the cluster storages; these tables hold what storage cannot answer
cheaply (which of 10,000 digests exist, in one query), what an admin decided (quotas), and
who wrote each action-cache entry (so a bad token's writes can be purged).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.models import Tenant


class Blob(models.Model):
    """One object known to be in an S3 store (reapi.s3store): the index FindMissingBlobs reads.

    `store` names the bucket and prefix, so two aliases on one bucket share one index.
    `touched_at` (epoch seconds) is the last use the eviction job sees: S3 has no atime.
    """

    store = models.CharField(max_length=200)
    key = models.CharField(max_length=255)
    tenant = models.CharField(max_length=63)
    size = models.BigIntegerField()
    touched_at = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["store", "key"], name="reapi_blob_one_row_per_key")]
        indexes = [models.Index(fields=["store", "tenant", "touched_at"], name="reapi_blob_lru")]

    def __str__(self) -> str:
        return f"{self.store}:{self.key}"


class TenantQuota(models.Model):
    """A tenant's byte quota on one cluster's storage, and the eviction job's last measurement.

    The job evicts least recently used blobs down to `max_bytes`, never one touched within
    reapi.presence.EVICTION_GRACE_SECONDS. Writes are refused (RESOURCE_EXHAUSTED) while the
    bytes nothing could evict exceed `hard_limit_bytes` (default: `max_bytes`).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quotas")
    cluster = models.CharField(max_length=20, choices=[(c, c) for c in settings.CLUSTERS])
    max_bytes = models.BigIntegerField()
    hard_limit_bytes = models.BigIntegerField(null=True, blank=True)
    used_bytes = models.BigIntegerField(default=0)
    evictable_bytes = models.BigIntegerField(default=0)
    evicted_bytes = models.BigIntegerField(default=0)
    measured_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "cluster"], name="reapi_one_quota_per_storage")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} on {self.cluster}: {self.max_bytes} bytes"

    @property
    def storage_alias(self) -> str:
        return f"reapi-{self.cluster}"

    @property
    def hard_limit(self) -> int:
        return self.max_bytes if self.hard_limit_bytes is None else self.hard_limit_bytes


class ActionProvenance(models.Model):
    """Who wrote an action-cache entry: the last writer of each (storage, tenant, action).

    Recorded before the entry becomes visible (reapi.provenance), so no entry exists without
    its record. `token_id` is a plain column rather than a foreign key: a purge must still find
    what a token wrote after the token row is gone.
    """

    storage = models.CharField(max_length=40)
    tenant = models.CharField(max_length=63)
    action_hash = models.CharField(max_length=64)
    action_size = models.BigIntegerField()
    token_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    token_prefix = models.CharField(max_length=16, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    username = models.CharField(max_length=150, blank=True)
    cluster = models.CharField(max_length=20)
    written_at = models.DateTimeField(default=timezone.now)
    tool_name = models.CharField(max_length=100, blank=True)
    tool_version = models.CharField(max_length=100, blank=True)
    tool_invocation_id = models.CharField(max_length=100, blank=True)
    correlated_invocations_id = models.CharField(max_length=100, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["storage", "tenant", "action_hash"], name="reapi_one_writer_per_action"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/ac/{self.action_hash[:12]} by {self.token_prefix or '?'}"


class ActionVote(models.Model):
    """A workstation token's vote for the result stored under one action in CI's storage.

    In pass-through, a result written through the external cluster carries the (user, token)
    of every workstation that wrote an identical result (reapi.ac_entries); with `confirmed`
    CI takes it once enough distinct users did. The entry itself is what the read path
    consults; these rows only let a purge find the entries a token voted for without being
    their last writer (ActionProvenance), so its vote is withdrawn there too.
    """

    storage = models.CharField(max_length=40)
    tenant = models.CharField(max_length=63)
    action_hash = models.CharField(max_length=64)
    action_size = models.BigIntegerField()
    token_id = models.BigIntegerField(db_index=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    written_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["storage", "tenant", "action_hash", "token_id"], name="reapi_one_vote_per_token"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/ac/{self.action_hash[:12]} voted by token {self.token_id}"


class ResultConflict(models.Model):
    """CI wrote a result for an action that differs from the one workstations had stored for it
    (other output digests or exit code): CI's replaced it for everyone. A reproducibility bug,
    listed on the Cache mode page with both writers and both results."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="result_conflicts")
    action_hash = models.CharField(max_length=64)
    action_size = models.BigIntegerField()
    # The workstation side: every user who had written that result, and when the last did.
    workstation_users = models.CharField(max_length=500, blank=True)
    workstation_tokens = models.CharField(max_length=200, blank=True)
    workstation_written_at = models.DateTimeField(null=True, blank=True)
    workstation_result = models.CharField(max_length=90, help_text="digest of the ActionResult")
    workstation_outputs = models.JSONField(default=dict)
    # The CI side.
    ci_user = models.CharField(max_length=150, blank=True)
    ci_token = models.CharField(max_length=40, blank=True)
    ci_result = models.CharField(max_length=90)
    ci_outputs = models.JSONField(default=dict)
    detected_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-detected_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-detected_at"], name="reapi_conflict_recent")]

    def __str__(self) -> str:
        return f"{self.tenant_id}: {self.action_hash[:12]} at {self.detected_at:%Y-%m-%d %H:%M}"


class Asset(models.Model):
    """One Remote Asset API entry: a URI and its qualifiers, mapped to content in the CAS.

    Per storage (as the CAS: a pass-through tenant's external fetches land in the internal
    storage) and tenant. `key` is the SHA-256 of what identifies the asset (reapi.assets.
    asset_key): kind, URI, checksum, canonical id, and without a checksum the HTTP headers
    sent. The URI is kept without user or password; no header value is kept. `fetched_at` is
    the content's age (FetchBlob's `oldest_content_accepted`), `first_fetched_at` when it was
    first stored; `hits` and `last_used_at` are counted in memory by each server process and
    added every few seconds (reapi.assets.Hits), as the usage counters are.
    """

    class Kind(models.TextChoices):
        BLOB = "blob", "Blob"
        DIRECTORY = "directory", "Directory"

    class Origin(models.TextChoices):
        FETCHED = "fetched", "Downloaded by the server"
        PUSHED = "pushed", "Pushed by a client"

    storage = models.CharField(max_length=40)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="assets")
    key = models.CharField(max_length=64)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.BLOB)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.FETCHED)
    uri = models.TextField()
    sri = models.CharField(max_length=200, blank=True)
    canonical_id = models.TextField(blank=True)
    digest_hash = models.CharField(max_length=64)
    digest_size = models.BigIntegerField()
    first_fetched_at = models.DateTimeField(default=timezone.now)
    fetched_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    hits = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Who fetched or pushed it last. A plain column, as in ActionProvenance: `token revoke
    # --purge` deletes what a token pushed (a claim, unlike a download) after the token is gone.
    token_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    token_prefix = models.CharField(max_length=16, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["storage", "tenant", "key"], name="reapi_asset_one_row_per_key")
        ]
        indexes = [
            models.Index(fields=["storage", "tenant", "digest_hash"], name="reapi_asset_by_content"),
            models.Index(fields=["storage", "tenant", "sri"], name="reapi_asset_by_checksum"),
            models.Index(fields=["tenant", "last_used_at"], name="reapi_asset_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}:{self.uri[:80]} -> {self.digest_hash[:12]}/{self.digest_size}"

    @property
    def cluster(self) -> str:
        return self.storage.removeprefix("reapi-")


class Invocation(models.Model):
    """One build (Bazel's `tool_invocation_id`) as one tenant's server saw it: who, where, when,
    and what it cost. Counted in memory by each server process and added every few seconds
    (reapi.invocations), as the usage counters are; `token_id` and `user_id` are plain columns
    so the record outlives the credential, kept REAPI_INVOCATION_RETENTION_DAYS."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invocations")
    invocation_id = models.CharField(max_length=100)
    correlated_invocations_id = models.CharField(max_length=100, blank=True)
    cluster = models.CharField(max_length=20)
    token_id = models.BigIntegerField(null=True, blank=True)
    token_prefix = models.CharField(max_length=16, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    username = models.CharField(max_length=150, blank=True)
    tool_name = models.CharField(max_length=100, blank=True)
    tool_version = models.CharField(max_length=100, blank=True)
    first_call = models.DateTimeField()
    last_call = models.DateTimeField()
    hits = models.BigIntegerField(default=0)
    misses = models.BigIntegerField(default=0)
    executed = models.BigIntegerField(default=0)
    bytes_up = models.BigIntegerField(default=0)
    bytes_down = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "invocation_id"], name="reapi_one_row_per_invocation")
        ]
        indexes = [models.Index(fields=["tenant", "last_call"], name="reapi_invocation_recent")]

    def __str__(self) -> str:
        return f"{self.tenant_id}: invocation {self.invocation_id}"

    @property
    def hit_rate(self) -> float | None:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else None

    @property
    def duration(self) -> float:
        return (self.last_call - self.first_call).total_seconds()


class InvocationMiss(models.Model):
    """An action-cache miss of one invocation, and (computed on first view, then kept) why:
    reapi.explain compares the action with its nearest earlier relative in the tenant."""

    invocation = models.ForeignKey(Invocation, on_delete=models.CASCADE, related_name="missed")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    storage = models.CharField(max_length=40)
    cluster = models.CharField(max_length=20)
    action_hash = models.CharField(max_length=64)
    action_size = models.BigIntegerField()
    mnemonic = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=300, blank=True)
    missed_at = models.DateTimeField()
    # SHA-256 of the Command's sorted output paths, once the Action is in the CAS.
    outputs_key = models.CharField(max_length=64, blank=True)
    outputs = models.JSONField(default=list, blank=True)
    explanation = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invocation", "action_hash"], name="reapi_one_miss_per_action")
        ]
        indexes = [
            models.Index(fields=["tenant", "outputs_key", "missed_at"], name="reapi_miss_by_outputs"),
            models.Index(fields=["tenant", "missed_at"], name="reapi_miss_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.invocation_id}: miss {self.action_hash[:12]}"
