"""`manage.py quota set|remove|list|evict`: per-tenant byte quotas on each cluster's storage."""

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from portal import tenancy
from portal.management.subcommands import SubcommandCommand
from reapi import eviction, quotas
from reapi.models import TenantQuota


class Command(SubcommandCommand):
    refusals = (quotas.QuotaError, tenancy.TenancyError)
    help = "Set, remove and list tenant quotas; run an eviction pass now."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        put = sub.add_parser("set", help="set a tenant's quota on one cluster's storage")
        put.add_argument("slug")
        put.add_argument("--cluster", choices=settings.CLUSTERS, required=True)
        put.add_argument("--max", required=True, help="evict down to this, as in 50G")
        put.add_argument(
            "--hard", help="refuse writes past this when nothing can be evicted (default: --max)"
        )
        remove = sub.add_parser("remove", help="remove a tenant's quota on one cluster's storage")
        remove.add_argument("slug")
        remove.add_argument("--cluster", choices=settings.CLUSTERS, required=True)
        sub.add_parser("list", help="quotas and their last measurement")
        sub.add_parser(
            "evict",
            help="expire abandoned uploads and run one eviction pass now (the periodic job does this)",
        )

    def do_set(self, options: dict[str, Any]) -> None:
        tenant = tenancy.get_tenant(options["slug"])
        hard = quotas.parse_bytes(options["hard"]) if options["hard"] else None
        quota = quotas.set_quota(tenant, options["cluster"], quotas.parse_bytes(options["max"]), hard)
        self.stdout.write(
            f"{tenant.slug} on {quota.cluster}: quota {quota.max_bytes}, hard limit {quota.hard_limit}"
        )

    def do_remove(self, options: dict[str, Any]) -> None:
        tenant = tenancy.get_tenant(options["slug"])
        if not quotas.remove_quota(tenant, options["cluster"]):
            raise CommandError(f"{tenant.slug} has no quota on {options['cluster']}")
        self.stdout.write(f"{tenant.slug} on {options['cluster']}: no quota")

    def do_list(self, options: dict[str, Any]) -> None:
        self.stdout.write("tenant\tcluster\tquota\thard\tused\tevictable\tmeasured")
        for q in TenantQuota.objects.select_related("tenant").order_by("tenant__slug", "cluster"):
            measured = f"{q.measured_at:%Y-%m-%d %H:%M}" if q.measured_at else "never"
            self.stdout.write(
                f"{q.tenant.slug}\t{q.cluster}\t{q.max_bytes}\t{q.hard_limit}\t{q.used_bytes}\t"
                f"{q.evictable_bytes}\t{measured}"
            )

    def do_evict(self, options: dict[str, Any]) -> None:
        for e in eviction.expire_uploads():
            self.stdout.write(
                f"{e.storage}: expired {e.files} abandoned upload files ({e.freed_bytes} bytes)"
                + (f", aborted {e.multipart_uploads} multipart uploads" if e.multipart_uploads else "")
            )
        for o in eviction.evict_all():
            flag = "  OVER HARD LIMIT: writes refused" if o.over_hard_limit else ""
            self.stdout.write(
                f"{o.tenant} on {o.cluster}: evicted {o.evicted_bytes} bytes, uses {o.used_bytes} "
                f"of {o.max_bytes}{flag}"
            )
