"""The presence index of an S3 store: one `reapi.models.Blob` row per CAS object it holds.

reapi/s3store.py keeps it beside the bucket (a row only after S3 accepted the object, removed
before the object is deleted); this module holds its queries. Presence for a FindMissingBlobs
of 10,000 digests is one indexed query here, where asking S3 would take seconds.
"""

import json
import time
from collections.abc import Iterable, Iterator

from django.db import connection, transaction

from reapi.db_threads import checked_connection
from reapi.models import Blob
from reapi.presence import TRUST_SECONDS

# Fallback chunk for databases without an array or JSON parameter.
IN_CHUNK = 500


def is_cas(key: str) -> bool:
    # CAS blobs only: presence and eviction are about them. An action-cache entry is read
    # with one GET whether or not it exists, and a missing one is an ordinary miss.
    return "/cas/" in key


class BlobIndex:
    def __init__(self, store_id: str) -> None:
        self.store_id = store_id
        self._table = connection.ops.quote_name(Blob._meta.db_table)

    def stat_many(self, keys: list[str]) -> dict[str, tuple[int, float]]:
        """(size, last touched) of the keys the index holds, in one query.

        A row older than the presence trust window is touched here, in the same call, before
        it is reported present: the eviction job deletes only rows still untouched, under the
        database's row locks, so a blob this reports present cannot be evicted behind it.
        """
        checked_connection()
        now = time.time()
        found = {key: (size, touched) for key, size, touched in self._select(keys)}
        stale = [key for key, (_size, touched) in found.items() if now - touched > TRUST_SECONDS]
        if stale:
            kept = self._touch_returning(stale, now)
            for key in stale:
                if key in kept:
                    found[key] = (found[key][0], now)
                else:
                    del found[key]  # evicted between the two statements
        return found

    def _select(self, keys: list[str]) -> list[tuple[str, int, float]]:
        t = self._table
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                # The keys go as one text parameter split by the server (adapting a
                # 10,000-element list costs the client more than the query; keys hold no
                # comma), and each is looked up through the unique index: LIMIT 1 in a
                # lateral subquery keeps the planner from the sequential scan it picks for
                # `key = ANY(...)`, which grows with the table (90 ms at 200,000 rows, 250 ms
                # at 1,000,000; this stays at ~25 ms for 10,000 keys).
                cur.execute(
                    "SELECT b.key, b.size, b.touched_at FROM unnest(string_to_array(%s, ',')) AS k(key) "
                    f"CROSS JOIN LATERAL (SELECT key, size, touched_at FROM {t} "
                    "WHERE store = %s AND key = k.key LIMIT 1) AS b",
                    [",".join(keys), self.store_id],
                )
                return cur.fetchall()
            if connection.vendor == "sqlite":
                # CROSS JOIN fixes the loop order in SQLite: for each key, one probe of the
                # unique index. A plain JOIN lets the planner, without statistics, scan the
                # table and the key list inside it (seconds for 10,000 keys).
                cur.execute(
                    f"SELECT b.key, b.size, b.touched_at FROM json_each(%s) AS j "
                    f"CROSS JOIN {t} AS b ON b.store = %s AND b.key = j.value",
                    [json.dumps(keys), self.store_id],
                )
                return cur.fetchall()
        rows: list[tuple[str, int, float]] = []
        for i in range(0, len(keys), IN_CHUNK):
            rows += Blob.objects.filter(store=self.store_id, key__in=keys[i : i + IN_CHUNK]).values_list(
                "key", "size", "touched_at"
            )
        return rows

    def _touch_returning(self, keys: list[str], now: float) -> set[str]:
        t = self._table
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute(
                    f"UPDATE {t} SET touched_at = %s FROM (SELECT b.id FROM unnest(string_to_array(%s, ',')) "
                    f"AS k(key) CROSS JOIN LATERAL (SELECT id FROM {t} WHERE store = %s AND key = k.key "
                    f"LIMIT 1) AS b) AS s WHERE {t}.id = s.id RETURNING {t}.key",
                    [now, ",".join(keys), self.store_id],
                )
                return {row[0] for row in cur.fetchall()}
            if connection.vendor == "sqlite":
                cur.execute(
                    f"UPDATE {t} SET touched_at = %s WHERE store = %s "
                    "AND key IN (SELECT value FROM json_each(%s)) RETURNING key",
                    [now, self.store_id, json.dumps(keys)],
                )
                return {row[0] for row in cur.fetchall()}
        self.touch(keys)
        return {key for key, _size, _touched in self._select(keys)}

    def touch(self, keys: Iterable[str]) -> None:
        checked_connection()
        now = time.time()
        keys = list(keys)
        for i in range(0, len(keys), IN_CHUNK):
            Blob.objects.filter(store=self.store_id, key__in=keys[i : i + IN_CHUNK]).update(touched_at=now)

    def add(self, items: list[tuple[str, int]], now: float) -> None:
        """Record objects S3 accepted: (key, size) each; keys outside the CAS are passed over."""
        rows = [
            Blob(store=self.store_id, key=key, tenant=key.split("/", 1)[0], size=size, touched_at=now)
            for key, size in items
            if is_cas(key)
        ]
        if not rows:
            return
        checked_connection()
        Blob.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["store", "key"],
            update_fields=["size", "touched_at"],
        )

    def remove(self, key: str) -> int:
        """Drop the key's row; how many rows went (0 or 1)."""
        if not is_cas(key):
            return 0
        checked_connection()
        deleted, _ = Blob.objects.filter(store=self.store_id, key=key).delete()
        return deleted

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, last touched) of every indexed object under `prefix`."""
        checked_connection()
        tenant = prefix.split("/", 1)[0]
        rows = Blob.objects.filter(store=self.store_id, tenant=tenant, key__startswith=prefix)
        yield from rows.values_list("key", "size", "touched_at").iterator(chunk_size=5000)

    def take_untouched(self, keys: list[str], untouched_since: float, batch: int) -> tuple[list[str], int]:
        """Drop the rows of `keys` still untouched since `untouched_since`, `batch` keys per
        transaction: (the keys dropped, their bytes). The database checks the condition as it
        deletes, under row locks, so a blob touched since the keys were listed stays."""
        checked_connection()
        freed = 0
        gone: list[str] = []
        for i in range(0, len(keys), batch):
            chunk = keys[i : i + batch]
            with transaction.atomic():
                rows = list(
                    Blob.objects.select_for_update()
                    .filter(store=self.store_id, key__in=chunk, touched_at__lt=untouched_since)
                    .values_list("id", "key", "size")
                )
                Blob.objects.filter(id__in=[row[0] for row in rows]).delete()
            gone += [row[1] for row in rows]
            freed += sum(row[2] for row in rows)
        return gone, freed

    def reconcile(self, listed: dict[str, tuple[int, float]], started: float) -> tuple[int, int]:
        """Make the index match a listing of the bucket's CAS objects, (size, last modified)
        by key, begun at `started`: (rows added, rows dropped). Rows touched after the listing
        began are left alone: their objects may be newer than the listing."""
        checked_connection()
        indexed = dict(Blob.objects.filter(store=self.store_id).values_list("key", "touched_at"))
        stale = [key for key, touched in indexed.items() if key not in listed and touched < started]
        for i in range(0, len(stale), IN_CHUNK):
            Blob.objects.filter(
                store=self.store_id, key__in=stale[i : i + IN_CHUNK], touched_at__lt=started
            ).delete()
        new = [
            Blob(store=self.store_id, key=key, tenant=key.split("/", 1)[0], size=size, touched_at=modified)
            for key, (size, modified) in listed.items()
            if key not in indexed
        ]
        Blob.objects.bulk_create(new, ignore_conflicts=True, batch_size=IN_CHUNK)
        return len(new), len(stale)
