"""A few threads that keep their database connections, lent to calls that must not hold one.

Execute, WaitExecution and WaitOperation wait for as long as an action runs, one call per
remote action a client has in flight, on threads of their own (methods.WAITING_METHODS).
Were each to open a database connection, a few hundred open streams would pass PostgreSQL's
connection limit; closing one after each use costs a reconnect (~3 ms here) on every
Execute. So their short database work runs here instead, and they wait with none.
"""

from collections.abc import Callable
from concurrent import futures
from typing import ParamSpec, TypeVar

from django.db import close_old_connections, connection

P = ParamSpec("P")
T = TypeVar("T")

# Enough for a burst of Executes (starting one reads the Action and Command from the CAS and
# looks in the action cache: milliseconds on S3), few against a database connection limit.
THREADS = 8

_pool = futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="reapi-db")


def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call `fn` on one of the threads and return what it returns (or raise what it raises)."""
    return _pool.submit(fn, *args, **kwargs).result()


def checked_connection() -> None:
    """Drop this thread's database connection if it broke or aged out (gRPC handler and
    download threads live long and Django's request signals never run there), but never inside
    a transaction a caller opened."""
    if not connection.in_atomic_block:
        close_old_connections()
