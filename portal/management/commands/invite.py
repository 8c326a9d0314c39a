"""`manage.py invite SLUG EMAIL [--role admin|developer]`: the first admin of a tenant, or anyone,
from the command line. The invitation is accepted at their next login with that (verified) email."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import invitations, tenancy
from portal.models import Role


class Command(BaseCommand):
    help = "Invite an email address to a tenant; accepted at the next login with that verified email."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("email")
        parser.add_argument("--role", choices=Role.values, default=Role.DEVELOPER)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenancy.get_tenant(options["slug"])
            invitation, outcome = invitations.invite_once(tenant, options["email"], options["role"])
        except (tenancy.TenancyError, invitations.MembershipError) as exc:
            raise CommandError(str(exc)) from None
        if outcome == "already invited":
            self.stdout.write(f"{invitation.email} is already invited to {tenant.slug} as {invitation.role}")
            return
        self.stdout.write(
            f"invited {invitation.email} to {tenant.slug} as {invitation.role}: "
            "they join when they sign in with that email"
        )
