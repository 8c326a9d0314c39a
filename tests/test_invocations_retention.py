"""Invocation records go after REAPI_INVOCATION_RETENTION_DAYS (30 by default), with their
misses; the saving beat (reapi.invocations.flush) deletes them once an hour."""

from datetime import timedelta

from django.utils import timezone

from reapi import invocations
from reapi.models import Invocation, InvocationMiss
from tests.support.tenants import Persona


def build(acme: Persona, name: str, days_ago: int) -> Invocation:
    when = timezone.now() - timedelta(days=days_ago)
    row = Invocation.objects.create(
        tenant=acme.tenant, invocation_id=name, cluster="external", first_call=when, last_call=when
    )
    InvocationMiss.objects.create(
        invocation=row,
        tenant=acme.tenant,
        storage="reapi-external",
        cluster="external",
        action_hash="a" * 64,
        action_size=10,
        missed_at=when,
    )
    return row


def test_invocations_older_than_the_retention_go_with_their_misses(acme: Persona) -> None:
    old, recent = build(acme, "old", days_ago=31), build(acme, "recent", days_ago=29)
    assert invocations.prune() == 2  # the old invocation and its miss
    assert not Invocation.objects.filter(pk=old.pk).exists()
    assert not InvocationMiss.objects.filter(invocation_id=old.pk).exists()
    assert Invocation.objects.filter(pk=recent.pk).exists()
    assert InvocationMiss.objects.filter(invocation_id=recent.pk).count() == 1
