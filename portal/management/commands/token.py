"""`manage.py token issue|revoke|list` (a command-line contract: README)."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandParser

from portal import tenancy, tokens
from portal.management.subcommands import SubcommandCommand
from portal.models import ADMIN_SCOPE, DEFAULT_SCOPES, TOKEN_SCOPES, AccessToken


class Command(SubcommandCommand):
    refusals = (tokens.TokenError, tenancy.TenancyError)
    help = "Issue, revoke and list personal access tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        issue = sub.add_parser("issue", help="issue a PAT; it is printed alone on the last line")
        issue.add_argument("--tenant", required=True)
        issue.add_argument("--user", required=True)
        issue.add_argument("--name", default="")
        issue.add_argument(
            "--scopes",
            default=",".join(DEFAULT_SCOPES),
            help=f"comma-separated, from {', '.join(TOKEN_SCOPES)}; default: every scope but {ADMIN_SCOPE}, "
            f"which opens the REST API and must be named",
        )
        issue.add_argument(
            "--expires-in", type=int, default=None, help="days (0: never, if the tenant allows)"
        )
        revoke = sub.add_parser("revoke", help="revoke a PAT, given the token or its id")
        revoke.add_argument("pat_or_id")
        revoke.add_argument(
            "--purge", action="store_true", help="also delete every action-cache entry the token wrote"
        )
        listing = sub.add_parser("list", help="list tokens (never the secrets)")
        listing.add_argument("--tenant")

    def do_issue(self, options: dict[str, Any]) -> None:
        tenant = tenancy.get_tenant(options["tenant"])
        owner = get_user_model().objects.filter(username=options["user"]).first()
        clash = tokens.active_named(tenant, owner, options["name"]) if owner else None
        issued = tokens.issue(
            tenant,
            options["user"],
            name=options["name"],
            scopes=options["scopes"],
            expires_in_days=options["expires_in"],
        )
        t = issued.token
        if clash is not None:
            # Scripts rotate tokens by name (the new one first), so the command line warns where
            # the pages and the API refuse.
            self.stderr.write(f"warning: another token has this name: {tokens.name_clash(clash)}")
        expiry = f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "never expires"
        self.stdout.write(f"token {t.id} for {options['user']} in {t.tenant.slug}: {t.scopes}, {expiry}")
        self.stdout.write("shown once: copy it now")
        self.stdout.write(issued.secret)

    def do_revoke(self, options: dict[str, Any]) -> None:
        token = tokens.revoke(tokens.find(options["pat_or_id"]))
        self.stdout.write(f"revoked token {token.id} ({token.prefix}…)")
        if options["purge"]:
            from reapi.provenance import purge_token

            purged = purge_token(token.id)
            self.stdout.write(f"purged {purged} action-cache entries written by token {token.id}")

    def do_list(self, options: dict[str, Any]) -> None:
        qs = AccessToken.objects.select_related("tenant", "user").order_by("tenant__slug", "id")
        if options["tenant"]:
            qs = qs.filter(tenant=tenancy.get_tenant(options["tenant"]))
        self.stdout.write("id\ttenant\tuser\tprefix\tname\tscopes\tstatus\texpires\tlast used")
        for t in qs:
            self.stdout.write(
                "\t".join(
                    [
                        str(t.id),
                        t.tenant.slug,
                        t.user.get_username(),
                        t.prefix + "…",
                        t.name or "-",
                        t.scopes,
                        t.status(),
                        f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never",
                        f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
                    ]
                )
            )
