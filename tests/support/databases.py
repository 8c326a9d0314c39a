"""A fresh PostgreSQL database per test session, when TEST_DATABASE_URL names a server."""

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg


def fresh_postgres_database(server_url: str) -> str:
    parts = urlsplit(server_url)
    name = f"awtest_{uuid.uuid4().hex[:10]}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))
