"""Insert-or-update (or insert-or-skip) of rows by a statement Django compiles once per model,
database and columns.

QuerySet.bulk_create(update_conflicts=True, or ignore_conflicts=True) builds its INSERT ... ON
CONFLICT statement anew on every call, and wants a model instance per row: ~0.5 ms of Python
for the one provenance row an UpdateActionResult commits (reapi.provenance), several times what
the database itself does with it; ~40 µs per row for the misses of an invocation
(reapi.invocations), most of it the instances. The statement depends only on the model, the
database and the column lists, so it is compiled once, by Django's own compiler (every backend
keeps Django's dialect), and each batch runs it once per row with executemany. Values go
through each field's get_db_prep_save, as bulk_create's do.

On SQLite the statement is also turned into sqlite3's own placeholder style once, and run by
sqlite3's executemany under Django's error wrapping: Django's cursor turns `%s` into `?` with a
regular expression over the whole statement on every call, ~0.19 M instructions of the ~0.8 M
that recording one UpdateActionResult's provenance cost (the provenance UPSERT is ~820
characters).
"""

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from django.db import connections, models
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery


class Upsert:
    """One model's insert-or-update on `unique` columns, setting `update` on a conflict; with
    no `update`, a row that conflicts with one already there is skipped (ignore_conflicts)."""

    def __init__(
        self, model: type[models.Model], unique: Sequence[str] = (), update: Sequence[str] = ()
    ) -> None:
        meta = model._meta
        self.model = model
        # The columns bulk_create writes: every concrete one but the automatic primary key.
        self.fields = [f for f in meta.concrete_fields if not isinstance(f, models.AutoField)]
        self.names = [f.attname for f in self.fields]
        self.unique = [meta.get_field(name) for name in unique]
        self.update = [meta.get_field(name) for name in update]
        # database alias -> the statement, and on SQLite the same in sqlite3's own style
        self._sql: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def run(self, rows: Sequence[dict[str, Any]], using: str = "default") -> None:
        """Write `rows` (attribute name -> value, every column named) in the current transaction."""
        if not rows:
            return
        connection = connections[using]
        sql, native = self._sql.get(using) or self._compile(using, rows[0])
        if connection.queries_logged:
            native = None  # through Django's cursor, which records the query
        params = [
            [
                f.get_db_prep_save(row[name], connection)
                for f, name in zip(self.fields, self.names, strict=True)
            ]
            for row in rows
        ]
        with connection.cursor() as cursor:
            if native is not None:
                # What CursorWrapper.executemany does, but the placeholders' regex.
                connection.validate_no_broken_transaction()
                with connection.wrap_database_errors:
                    sqlite3.Cursor.executemany(cursor.cursor, native, params)
            else:
                cursor.executemany(sql, params)

    def _compile(self, using: str, row: dict[str, Any]) -> tuple[str, str | None]:
        query = InsertQuery(
            self.model,
            on_conflict=OnConflict.UPDATE if self.update else OnConflict.IGNORE,
            update_fields=self.update,
            unique_fields=self.unique,
        )
        query.insert_values(self.fields, [self.model(**row)])
        [(sql, params)] = query.get_compiler(using=using).as_sql()
        # One placeholder per column and nothing else: then any row's values fit it.
        if len(params) != len(self.fields):
            raise RuntimeError(f"{self.model.__name__}'s upsert does not take one value per column: {sql}")
        connection = connections[using]
        native = None
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                native = cursor.cursor.convert_query(sql)
        with self._lock:
            self._sql[using] = (sql, native)
        return sql, native
