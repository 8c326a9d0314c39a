"""Commands whose first argument names what to do (`token issue`, `quota set`…)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError


class SubcommandCommand(BaseCommand):
    """Runs `do_<action>(options)` for the subparser chosen (`dest="action"`); the errors in
    `refusals` are the user's to fix, so they end the command with their message alone."""

    refusals: tuple[type[Exception], ...] = ()

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, "do_" + options["action"])(options)
        except self.refusals as exc:
            raise CommandError(str(exc)) from None
