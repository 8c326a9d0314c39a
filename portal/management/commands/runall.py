"""`manage.py runall`: the whole service on one machine, as `make run` starts it.

Starts the portal on :8000 (gunicorn, the production server), the external REAPI cluster on
:8980 and the internal one on :8981, a worker per cluster and the maintenance beat, each as a
child process, and stops them all together; they die with it even when it is killed outright
(portal/supervise.py).
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from portal.supervise import start_child


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def wait_for_ports(
    endpoints: list[str], children: dict[str, subprocess.Popen[bytes]], timeout: float
) -> bool:
    """True once every HOST:PORT accepts connections; False if a child died first."""
    deadline = time.monotonic() + timeout
    pending = list(endpoints)
    while pending and time.monotonic() < deadline:
        if any(child.poll() is not None for child in children.values()):
            return False
        host, _, port = pending[0].rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.2)
    return not pending


def wait_for_workers(pids: list[int], children: dict[str, subprocess.Popen[bytes]], timeout: float) -> bool:
    """True once every worker process registered itself (after proving its sandbox)."""
    from workers.models import Worker

    host = socket.gethostname()
    names = {f".{pid}@{host}" for pid in pids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children.values()):
            return False
        registered = Worker.objects.filter(stopped_at__isnull=True).values_list("name", flat=True)
        if all(any(name.endswith(suffix) for name in registered) for suffix in names):
            time.sleep(0.5)  # Celery prints its own lines once it consumes
            return True
        time.sleep(0.2)
    return False


class Command(BaseCommand):
    help = "Run the portal, both REAPI clusters and the workers in the foreground."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--portal", default="127.0.0.1:8000")
        parser.add_argument("--no-workers", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        commands = {
            "portal": [
                sys.executable,
                "-m",
                "gunicorn",
                "portal.wsgi:application",
                f"--chdir={settings.BASE_DIR}",
                f"--bind={options['portal']}",
                f"--workers={settings.PORTAL_WORKERS}",
                f"--timeout={settings.PORTAL_TIMEOUT}",
                "--access-logfile=-",
            ],
            "reapi-external": [
                *manage,
                "reapi",
                "serve",
                "--cluster",
                "external",
                "--listen",
                _hostport(settings.REAPI_URLS["external"]),
            ],
            "reapi-internal": [
                *manage,
                "reapi",
                "serve",
                "--cluster",
                "internal",
                "--listen",
                _hostport(settings.REAPI_URLS["internal"]),
            ],
        }
        commands.update(self.worker_commands(manage) if not options["no_workers"] else {})
        if not options["no_workers"]:
            commands["maintenance"] = [*manage, "maintenance"]  # periodic jobs: eviction
        call_command("collectstatic", interactive=False, verbosity=0)
        children = {name: start_child(argv) for name, argv in commands.items()}
        endpoints = [
            options["portal"],
            _hostport(settings.REAPI_URLS["external"]),
            _hostport(settings.REAPI_URLS["internal"]),
        ]
        workers = [child.pid for name, child in children.items() if name.startswith("worker-")]
        if wait_for_ports(endpoints, children, timeout=60) and wait_for_workers(workers, children, 60):
            # The workers printed their banners first, so the welcome is the last thing shown.
            self.print_welcome(options["portal"])

        def stop(signum: int, _frame: object) -> None:
            for child in children.values():
                if child.poll() is None:
                    child.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        stop(signal.SIGTERM, None)
        for name, child in children.items():
            code = child.wait()
            if code not in (0, -signal.SIGTERM):
                self.stderr.write(f"{name} exited with {code}")

    def worker_commands(self, manage: list[str]) -> dict[str, list[str]]:
        """One execution worker per cluster, on the cluster's default (first) pool."""
        from workers import pools

        return {
            f"worker-{cluster}": [
                *manage,
                "worker",
                "--cluster",
                cluster,
                "--pool",
                pools.configured(cluster)[0].name,
            ]
            for cluster in settings.CLUSTERS
        }

    def print_welcome(self, portal: str) -> None:
        login = self.bootstrap_admin()
        ext = settings.REAPI_URLS["external"]
        self.stdout.write(
            f"""
Portal:            http://{portal}/
REAPI external:    {ext}   (developer workstations)
REAPI internal:    {settings.REAPI_URLS["internal"]}   (CI runners)
{login}
Create a tenant, a member and a token from another shell:
  .venv/bin/python manage.py tenant create acme
  .venv/bin/python manage.py tenant add-member acme alice --role admin
  .venv/bin/python manage.py token issue --tenant acme --user alice --name laptop
Then put this in your workspace's .bazelrc (the last line of `token issue` is the PAT):
  build --remote_cache={ext}
  build --remote_header=X-Aspect=aw_pat_…
or print it ready-made:  .venv/bin/python manage.py bazelrc --tenant acme --cluster external --token aw_pat_…
To run the actions on the workers started here, add --execution to that command.
Stop everything with Ctrl-C.
"""
        )

    def bootstrap_admin(self) -> str:
        if settings.OIDC_ENABLED:
            return (
                "Sign in to the portal through your OpenID provider. Make yourself a tenant's first admin:\n"
                "  .venv/bin/python manage.py tenant create acme\n"
                "  .venv/bin/python manage.py invite acme you@example.com --role admin"
            )
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            return "Log in to the portal as your superuser (manage.py createsuperuser adds one)."
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", password=password)
        return f"First admin login (shown once):  user admin  password {password}"
