"""Tenants, their members, personal access tokens and the audit log."""

from datetime import datetime

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from portal.rates import Rate

# The REAPI scopes (contract names): what a token may do on the gRPC endpoint, and the default set.
SCOPES = ("cas:read", "ac:read", "cas:write", "ac:write", "execute")
READ_SCOPES = ("cas:read", "ac:read")
WRITE_SCOPES = ("cas:write", "ac:write")
# What every way of making a token or a CI trust (command line, pages, API) starts from: all
# the REAPI scopes. One set, so a snippet for remote execution never meets a token without it.
DEFAULT_SCOPES = SCOPES
# Opens the portal's REST API as the token's owner (who must be a tenant admin). Never in a
# default set: it is asked for by name, and it grants nothing on the gRPC endpoint.
ADMIN_SCOPE = "portal:admin"
TOKEN_SCOPES = (*SCOPES, ADMIN_SCOPE)


class CacheMode(models.TextChoices):
    INDEPENDENT = "independent", "Independent"
    PASS_THROUGH = "pass-through", "Pass-through"


class CiAccepts(models.TextChoices):
    """What the internal (CI) cluster takes from results workstations wrote (README "What CI
    accepts from workstations"). CAS blobs are always shared: they are verified by digest."""

    ALL = "all", "All"
    CONFIRMED = "confirmed", "Confirmed"
    NONE = "none", "None"


# `confirmed`: how many distinct users must have written identical results before CI takes one.
DEFAULT_CI_CONFIRMATIONS = 2
MIN_CI_CONFIRMATIONS = 2
MAX_CI_CONFIRMATIONS = 20


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"


class Tenant(models.Model):
    slug = models.SlugField(unique=True, max_length=63)
    name = models.CharField(max_length=200, blank=True)
    cache_mode = models.CharField(max_length=20, choices=CacheMode.choices, default=CacheMode.INDEPENDENT)
    ci_accepts = models.CharField(max_length=20, choices=CiAccepts.choices, default=CiAccepts.ALL)
    ci_confirmations = models.PositiveSmallIntegerField(
        default=DEFAULT_CI_CONFIRMATIONS,
        validators=[MinValueValidator(MIN_CI_CONFIRMATIONS), MaxValueValidator(MAX_CI_CONFIRMATIONS)],
    )
    allow_non_expiring_tokens = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    # Calls per second, and the burst, each credential of the tenant may make on a gRPC server
    # process (reapi/limits.py); both null: the server's REAPI_TOKEN_RATE. `manage.py tenant rate`.
    token_rate_per_second = models.FloatField(null=True, blank=True)
    token_rate_burst = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(token_rate_per_second__isnull=True, token_rate_burst__isnull=True)
                | models.Q(token_rate_per_second__gt=0, token_rate_burst__gte=1),
                name="token_rate_set_whole_or_not_at_all",
            )
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def token_rate(self) -> Rate | None:
        """The tenant's own rate, or None where the server's default applies."""
        if self.token_rate_per_second is None or self.token_rate_burst is None:
            return None
        return Rate(self.token_rate_per_second, self.token_rate_burst)


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_membership_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class AccessToken(models.Model):
    """A PAT. The token itself is never stored: only its SHA-256 and a display prefix."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    first_used_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]

    def status(self, now: datetime | None = None) -> str:
        now = now or timezone.now()
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= now:
            return "expired"
        return "active"


class AuditEvent(models.Model):
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    # Who acted, as named then: kept when the account is deleted later. Empty with no actor:
    # the command line, or the servers themselves (a token's first use).
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40)
    token_prefix = models.CharField(max_length=16, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action}"


class OidcIdentity(models.Model):
    """A portal user as the OpenID provider knows them.

    Users are bound on (iss, sub), never on email: OIDC Core 5.7 says only that pair is a stable,
    unique identifier; an email can be reassigned or changed at the provider.
    """

    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities"
    )
    email = models.EmailField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="one_user_per_oidc_subject")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class Invitation(models.Model):
    """An admin's invitation to a tenant, accepted at the next login whose verified email matches."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "email"],
                condition=models.Q(accepted_at__isnull=True),
                name="one_pending_invitation_per_email",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant} ({self.role})"


class CiIdentity(models.Model):
    """Trust for CI runners' OIDC tokens on the gRPC endpoint: a JWT from `issuer` whose `claim`
    equals (or, for a list claim, contains) `value` acts as `user` in `tenant` with `scopes`."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ci_identities")
    name = models.CharField(max_length=200)
    issuer = models.CharField(max_length=255)
    claim = models.CharField(max_length=100, default="sub")
    value = models.CharField(max_length=255)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    scopes = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "issuer", "claim", "value"], name="one_ci_rule_per_claim"
            )
        ]

    def __str__(self) -> str:
        return f"{self.claim}={self.value} -> {self.tenant}"

    @property
    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]


class UsageDay(models.Model):
    """Per tenant, cluster, UTC day and credential: what the gRPC servers counted in memory and
    flushed. `user` is the credential's member and `token` its PAT (none for a CI runner's OIDC
    token); both are empty on rows counted before credentials were, and kept (emptied) when the
    account or token goes, so a tenant's totals never shrink."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_days")
    cluster = models.CharField(max_length=20)
    day = models.DateField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    token = models.ForeignKey(
        AccessToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_days"
    )
    hits = models.BigIntegerField(default=0)
    misses = models.BigIntegerField(default=0)
    bytes_stored = models.BigIntegerField(default=0)
    bytes_served = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "cluster", "day", "user", "token"], name="one_usage_row_per_credential_day"
            )
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="usage_tenant_day_idx")]

    def __str__(self) -> str:
        return f"{self.tenant} {self.cluster} {self.day}"


class LocalAccount(models.Model):
    """A password account a tenant admin made on the Members page (where no OpenID provider is
    configured). Its email was typed by that admin, not verified by anyone: it joins no other
    tenant through an invitation matched on that email (portal/invitations.py accept_pending).
    A superuser who has checked the address deletes this record in /admin/."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="local_account"
    )
    # Emptied, not deleted, with its tenant: the email stays unverified.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.SET_NULL, null=True, blank=True, related_name="local_accounts"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user} (made by an admin of {self.tenant})"
