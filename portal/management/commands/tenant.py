"""`manage.py tenant create|mode|ci-accepts|add-member` (DESIGN.md command-line contract)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import tenancy
from portal.models import MAX_CI_CONFIRMATIONS, MIN_CI_CONFIRMATIONS, CacheMode, CiAccepts, Role


class Command(BaseCommand):
    help = "Create tenants, change their cache mode and what CI accepts from workstations, add members."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a tenant")
        create.add_argument("slug")
        create.add_argument("--mode", choices=CacheMode.values, default=CacheMode.INDEPENDENT)
        mode = sub.add_parser("mode", help="set a tenant's cache mode")
        mode.add_argument("slug")
        mode.add_argument("mode", choices=CacheMode.values)
        accepts = sub.add_parser(
            "ci-accepts",
            help="set what CI accepts of the action results workstations write (pass-through)",
            description="all: every workstation result is CI's hit (the default). confirmed: only "
            "once CI wrote the identical result, or --users distinct users did. none: never; "
            "CI's results still reach workstations, and CAS blobs stay shared.",
        )
        accepts.add_argument("slug")
        accepts.add_argument("accepts", choices=CiAccepts.values)
        accepts.add_argument(
            "--users",
            type=int,
            metavar="N",
            help=f"confirmed: distinct users whose identical results CI takes "
            f"({MIN_CI_CONFIRMATIONS}-{MAX_CI_CONFIRMATIONS}; default: unchanged, 2 for a new tenant)",
        )
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
            elif options["action"] == "ci-accepts":
                tenant = tenancy.set_ci_accepts(
                    tenancy.get_tenant(options["slug"]), options["accepts"], options["users"]
                )
                # e.g. "tenant acme: CI accepts none from workstations"
                self.stdout.write(
                    f"tenant {tenant.slug}: CI accepts {tenancy.describe_ci_accepts(tenant)} from workstations"
                )
            else:
                tenant = tenancy.get_tenant(options["slug"])
                m = tenancy.add_member(tenant, options["username"], options["role"])
                self.stdout.write(f"{m.user.get_username()} is {m.role} of {tenant.slug}")
        except tenancy.TenancyError as exc:
            raise CommandError(str(exc)) from None
