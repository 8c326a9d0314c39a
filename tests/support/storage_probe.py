"""Looking at what a server stored, to prove bad input wrote nothing: files on disk, or with
TEST_STORAGE=s3 the bucket's objects plus the local spool of partial uploads."""

import os
from pathlib import Path


def _s3_prefix(cluster: str) -> str | None:
    url = os.environ.get(f"REAPI_STORAGE_{cluster.upper()}", "")
    if not url.startswith("s3://"):
        return None
    return url.split("?", 1)[0].split("/", 3)[3]


def blob_root(cluster: str = "external") -> Path:
    return Path(os.environ["DATA_DIR"]) / "blobs" / cluster


def stored_files(cluster: str = "external") -> set[str]:
    """Every file under the cluster's storage, partial uploads included."""
    prefix = _s3_prefix(cluster)
    root = (
        blob_root(cluster)
        if prefix is None
        else Path(os.environ["DATA_DIR"]) / "uploads" / f"reapi-{cluster}"
    )
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    if prefix is not None:
        from tests.support.seaweed import session_server

        s3 = session_server()
        assert s3 is not None
        found |= {key.removeprefix(f"{prefix}/") for key in s3.keys(f"{prefix}/")}
    return found


def delete_blob(key: str, cluster: str = "external") -> None:
    """Remove a stored blob behind the server's back (as a lost disk or bucket object would)."""
    prefix = _s3_prefix(cluster)
    if prefix is None:
        (blob_root(cluster) / key).unlink()
        return
    from tests.support.seaweed import session_server

    s3 = session_server()
    assert s3 is not None
    s3.client().delete_object(Bucket=s3.bucket, Key=f"{prefix}/{key}")


def put_blob(key: str, data: bytes, cluster: str = "external") -> None:
    """Store bytes under `key` behind the server's back (as an older server could have)."""
    prefix = _s3_prefix(cluster)
    if prefix is None:
        path = blob_root(cluster) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    from tests.support.seaweed import session_server

    s3 = session_server()
    assert s3 is not None
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=data)
