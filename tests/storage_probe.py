"""Looking at what a server stored on disk, to prove bad input wrote nothing."""

import os
from pathlib import Path


def blob_root(cluster: str = "external") -> Path:
    return Path(os.environ["DATA_DIR"]) / "blobs" / cluster


def stored_files(cluster: str = "external") -> set[str]:
    """Every file under the cluster's storage, partial uploads included."""
    root = blob_root(cluster)
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found
