"""`manage.py tenant create|mode|add-member` (a command-line contract: README)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import tenancy
from portal.models import CacheMode, Role


class Command(BaseCommand):
    help = "Create tenants, change their cache mode, add members."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a tenant")
        create.add_argument("slug")
        create.add_argument("--mode", choices=CacheMode.values, default=CacheMode.INDEPENDENT)
        mode = sub.add_parser("mode", help="set a tenant's cache mode")
        mode.add_argument("slug")
        mode.add_argument("mode", choices=CacheMode.values)
        member = sub.add_parser("add-member", help="add a user (created if absent) to a tenant")
        member.add_argument("slug")
        member.add_argument("username")
        member.add_argument("--role", choices=Role.values, default=Role.DEVELOPER)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "create":
                tenant = tenancy.create_tenant(options["slug"], options["mode"])
                self.stdout.write(f"created tenant {tenant.slug} ({tenant.cache_mode})")
            elif options["action"] == "mode":
                tenant = tenancy.set_cache_mode(tenancy.get_tenant(options["slug"]), options["mode"])
                self.stdout.write(f"tenant {tenant.slug} is now {tenant.cache_mode}")
            else:
                tenant = tenancy.get_tenant(options["slug"])
                m = tenancy.add_member(tenant, options["username"], options["role"])
                self.stdout.write(f"{m.user.get_username()} is {m.role} of {tenant.slug}")
        except tenancy.TenancyError as exc:
            raise CommandError(str(exc)) from None
