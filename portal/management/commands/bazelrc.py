"""`manage.py bazelrc --tenant SLUG --cluster internal|external [--token PAT] [--execution]
[--remote-downloader]`."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal import bazelrc, tenancy


class Command(BaseCommand):
    help = "Print a .bazelrc snippet for a tenant and cluster."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--cluster", choices=settings.CLUSTERS, default="external")
        parser.add_argument("--token", default="")
        parser.add_argument("--execution", action="store_true", help="remote execution, not cache only")
        parser.add_argument("--read-only", action="store_true")
        parser.add_argument("--download", choices=bazelrc.DOWNLOADS, default="all")
        parser.add_argument("--instance-name", action="store_true")
        parser.add_argument("--timeout", type=int, default=60)
        parser.add_argument("--tls-certificate", default="")
        parser.add_argument(
            "--remote-downloader",
            action="store_true",
            help="fetch external dependencies through the cache (--experimental_remote_downloader)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenancy.get_tenant(options["tenant"])
        except tenancy.TenancyError as exc:
            raise CommandError(str(exc)) from None
        try:
            snippet = bazelrc.render(
                bazelrc.Options(
                    tenant=tenant.slug,
                    cluster=options["cluster"],
                    token=options["token"],
                    execution=options["execution"],
                    read_only=options["read_only"],
                    download=options["download"],
                    instance_name=options["instance_name"],
                    timeout=options["timeout"],
                    tls_certificate=options["tls_certificate"],
                    downloader=options["remote_downloader"],
                )
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(snippet, ending="")
