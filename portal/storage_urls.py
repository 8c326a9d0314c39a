"""Turns REAPI_STORAGE_* URLs into Django STORAGES entries.

`file:///abs/dir` (or `file://rel/dir`) is the embedded default; `s3://bucket/prefix?endpoint_url=…`
selects django-storages' S3 backend. Query parameters other than the few we name pass through as
S3Storage options, so region, addressing style and credentials can be set the same way.
"""

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from portal.env import SettingError

FILE_BACKEND = "reapi.filestorage.BlobFileSystemStorage"
S3_BACKEND = "storages.backends.s3.S3Storage"


def storage_from_url(name: str, url: str, base_dir: Path) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme == "file":
        raw = (parts.netloc + parts.path) if parts.netloc else parts.path
        location = Path(raw)
        if not location.is_absolute():
            location = base_dir / location
        return {"BACKEND": FILE_BACKEND, "OPTIONS": {"location": str(location)}}
    if parts.scheme == "s3":
        if not parts.netloc:
            raise SettingError(f"{name}: an s3:// URL needs a bucket, as in s3://bucket/prefix")
        options: dict[str, Any] = {
            "bucket_name": parts.netloc,
            "location": parts.path.strip("/"),
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": False,
        }
        for key, value in parse_qsl(parts.query):
            options[key] = value
        return {"BACKEND": S3_BACKEND, "OPTIONS": options}
    raise SettingError(f"{name} must be a file:// or s3:// URL, not {url!r}")
