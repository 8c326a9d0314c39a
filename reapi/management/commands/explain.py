"""`manage.py explain INVOCATION_ID [--tenant SLUG] [--action DIGEST]`: why each action of a
build missed the cache."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reapi import invocation_queries
from reapi.models import Invocation


class Command(BaseCommand):
    help = "Print each missed action of an invocation: its output paths and why it missed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("invocation_id")
        parser.add_argument("--tenant", help="the tenant's slug (needed when two tenants share the id)")
        parser.add_argument("--action", help="only this action's digest (hash or hash/size)")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = Invocation.objects.filter(invocation_id=options["invocation_id"])
        if options["tenant"]:
            rows = rows.filter(tenant__slug=options["tenant"])
        found = list(rows[:2])
        if not found:
            raise CommandError(f"no invocation {options['invocation_id']}")
        if len(found) > 1:
            raise CommandError("two tenants have an invocation with this id: name one with --tenant")
        invocation = found[0]
        self.stdout.write(
            f"invocation {invocation.invocation_id}: {invocation.misses} misses, {invocation.hits} hits"
        )
        explained = invocation_queries.explained(invocation, options["action"])
        if options["action"] and not explained:
            raise CommandError(f"no missed action {options['action']} in this invocation")
        for item in explained:
            why = item["explanation"]
            self.stdout.write(f"\n{item['action']}  {item['mnemonic']}  {item['target']}".rstrip())
            for path in item["outputs"]:
                self.stdout.write(f"  output: {path}")
            self.stdout.write(f"  {why['text']}")
            for change in why["changes"]:
                self.stdout.write(f"    {change['text']}")
