"""Template filters for the Workers pages (portal/action_detail.py holds the logic)."""

from datetime import timedelta

from django import template

from portal import action_detail
from workers.models import Operation

register = template.Library()


@register.filter
def what(op: Operation) -> str:
    return action_detail.what(op)


@register.filter
def outcome(op: Operation) -> str:
    return action_detail.outcome(op)


@register.filter
def failed(op: Operation) -> bool:
    return action_detail.failed(op)


@register.filter
def duration(op: Operation) -> timedelta | None:
    return action_detail.duration(op)
