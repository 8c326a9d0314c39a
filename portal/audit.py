"""The audit log: one explicit call per event, never a signal."""

from typing import Any

from django.contrib.auth.models import AnonymousUser, User

from portal.models import AuditEvent, Tenant


def record(
    action: str,
    *,
    tenant: Tenant | None = None,
    actor: User | AnonymousUser | None = None,
    token_prefix: str = "",
    **detail: Any,
) -> AuditEvent:
    who = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=who,
        actor_name=who.get_username() if who is not None else "",
        action=action,
        token_prefix=token_prefix,
        detail=detail,
    )
