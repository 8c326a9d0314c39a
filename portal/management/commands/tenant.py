"""`manage.py tenant create|mode|rate|ci-accepts|add-member` (a command-line contract: README)."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import rates, tenancy
from portal.models import MAX_CI_CONFIRMATIONS, MIN_CI_CONFIRMATIONS, CacheMode, CiAccepts, Role


class Command(BaseCommand):
    help = "Create tenants, change their cache mode, rate limit or what CI accepts from workstations, add members."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a tenant")
        create.add_argument("slug")
        create.add_argument("--mode", choices=CacheMode.values, default=CacheMode.INDEPENDENT)
        mode = sub.add_parser("mode", help="set a tenant's cache mode")
        mode.add_argument("slug")
        mode.add_argument("mode", choices=CacheMode.values)
        rate = sub.add_parser("rate", help="set the calls per second each of a tenant's credentials may make")
        rate.add_argument("slug")
        rate.add_argument("rate", metavar="RPS[:BURST]|default", help="e.g. 50, 50:100, or default")
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
            elif options["action"] == "rate":
                tenant = tenancy.get_tenant(options["slug"])
                tenancy.set_token_rate(tenant, rates.parse_override(options["rate"]))
                own = tenant.token_rate
                described = own.describe() if own else f"{settings.REAPI_TOKEN_RATE.describe()} (the default)"
                self.stdout.write(f"tenant {tenant.slug}: each credential may make {described}")
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
                username = options["username"]
                existed = get_user_model().objects.filter(username=username).exists()
                m = tenancy.add_member(tenant, username, options["role"])
                self.stdout.write(f"{m.user.get_username()} is {m.role} of {tenant.slug}")
                if not existed:
                    self.stderr.write(no_login_yet(username, tenant.slug))
        except (tenancy.TenancyError, rates.RateError) as exc:
            raise CommandError(str(exc)) from None


def no_login_yet(username: str, slug: str) -> str:
    """What a user made here lacks: a way to sign in."""
    if settings.OIDC_ENABLED:
        return (
            f"note: user {username} was created without a password and cannot sign in. With an "
            "OpenID provider, sign-ins make their own accounts: invite their email instead "
            f"(manage.py invite {slug} EMAIL), which joins the account the provider signs in."
        )
    return (
        f"note: user {username} was created without a password and cannot sign in until given one: "
        f"manage.py changepassword {username} (or a Members page admin's 'Make a local account' "
        "for someone new, which hands them a set-password link). Tokens issued for them work now."
    )
