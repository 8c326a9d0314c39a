"""Test set-up: a throw-away DATA_DIR and database shared by the tests and the real servers
they start, plus the personas every permission test reads the same way.

Personas (healthchecks' habit): in tenant "acme", alice is admin and bob a developer; charlie
is admin of tenant "globex", an outsider to acme. Slugs get a suffix per test so tests never
see each other's data.
"""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_ROOT = Path(tempfile.mkdtemp(prefix="awtest-"))
# The sandbox's uid must be able to pass through (not list) the directories above an action's.
TEST_ROOT.chmod(0o711)
os.environ["DATA_DIR"] = str(TEST_ROOT / "data")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
if os.environ.get("TEST_DATABASE_URL"):
    from tests.support.databases import fresh_postgres_database

    os.environ["DATABASE_URL"] = fresh_postgres_database(os.environ["TEST_DATABASE_URL"])
else:
    os.environ["DATABASE_URL"] = f"sqlite:///{TEST_ROOT / 'test.sqlite3'}"
if os.environ.get("TEST_STORAGE") == "s3":
    # Both clusters' storage on one SeaweedFS for the whole run (make test-s3).
    from tests.support.seaweed import session_storage_env

    os.environ.update(session_storage_env(TEST_ROOT))

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0)
# Pages name their static files by content hash (WhiteNoise's manifest): collected once here.
call_command("collectstatic", interactive=False, verbosity=0)

from tests.support.servers import ReapiServer  # noqa: E402
from tests.support.tenants import Persona, make_tenant  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def external_server() -> Iterator[ReapiServer]:
    with ReapiServer("external") as server:
        yield server


@pytest.fixture(scope="session")
def internal_server() -> Iterator[ReapiServer]:
    with ReapiServer("internal") as server:
        yield server


@pytest.fixture
def acme() -> Persona:
    slug = f"acme-{uuid.uuid4().hex[:8]}"
    return make_tenant(slug, admin="alice", developer="bob")


@pytest.fixture
def globex() -> Persona:
    slug = f"globex-{uuid.uuid4().hex[:8]}"
    return make_tenant(slug, admin="charlie")


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
