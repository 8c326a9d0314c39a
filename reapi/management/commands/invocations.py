"""`manage.py invocations --tenant SLUG [--user U] [--limit N]`: a tenant's builds, most recent first."""

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import tenancy
from reapi import invocation_queries


class Command(BaseCommand):
    help = "List a tenant's invocations (builds), most recent first, one a line starting with its id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's slug")
        parser.add_argument("--user", help="only invocations made with this member's credentials")
        parser.add_argument("--limit", type=int, default=20)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenancy.get_tenant(options["tenant"])
        except tenancy.TenancyError as exc:
            raise CommandError(str(exc)) from None
        user_id = None
        if options["user"]:
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']}")
            user_id = user.pk
        limit = max(1, min(options["limit"], 10_000))
        for row in invocation_queries.of_tenant(tenant.pk, user_id)[:limit]:
            rate = "-" if row.hit_rate is None else f"{row.hit_rate:.0%}"
            self.stdout.write(
                f"{row.invocation_id}  {row.last_call:%Y-%m-%d %H:%M:%S}  {row.cluster}  "
                f"{row.username or '-'}  hits {row.hits}  misses {row.misses}  hit rate {rate}  "
                f"executed {row.executed}  up {row.bytes_up} B  down {row.bytes_down} B  "
                f"{row.duration:.1f} s  {row.tool_name} {row.tool_version}".rstrip()
            )
