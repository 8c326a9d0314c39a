"""The one .bazelrc renderer, shared by the portal pages, the token-created page and
`manage.py bazelrc`."""

from dataclasses import dataclass

from django.conf import settings

DOWNLOADS = ("all", "toplevel", "minimal")
MIN_TIMEOUT, MAX_TIMEOUT = 1, 3600
PLACEHOLDER = "aw_pat_REPLACE_WITH_YOUR_TOKEN"


@dataclass(frozen=True)
class Options:
    tenant: str
    cluster: str = "external"
    token: str = ""
    execution: bool = False
    read_only: bool = False
    download: str = "all"
    instance_name: bool = False
    timeout: int = 60
    tls_certificate: str = ""
    # External dependencies (http_archive, http_file) through the cache's Remote Asset API.
    downloader: bool = False


def render(opts: Options) -> str:
    if opts.cluster not in settings.CLUSTERS:
        raise ValueError(f"unknown cluster {opts.cluster!r}")
    if opts.download not in DOWNLOADS:
        raise ValueError(f"download must be one of {', '.join(DOWNLOADS)}")
    if not MIN_TIMEOUT <= opts.timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be between {MIN_TIMEOUT} and {MAX_TIMEOUT} seconds")
    if any(c in opts.token for c in "\n\r ") or any(c in opts.tls_certificate for c in "\n\r"):
        raise ValueError("token and certificate path must be single words")
    url = settings.REAPI_URLS[opts.cluster]
    lines = [
        f"# Remote {'execution' if opts.execution else 'cache'}: tenant {opts.tenant}, {opts.cluster} cluster"
    ]
    if opts.execution:
        lines.append(f"build --remote_executor={url}")
    else:
        lines.append(f"build --remote_cache={url}")
    lines.append(f"build --remote_header=X-Aspect={opts.token or PLACEHOLDER}")
    if opts.downloader:
        # Bazel 4.2.3 sends --remote_header to the downloader too, and needs the gRPC cache
        # (or executor) line above beside it.
        lines.append(f"build --experimental_remote_downloader={url}")
    if opts.instance_name:
        lines.append(f"build --remote_instance_name={opts.tenant}")
    lines.append(f"build --remote_timeout={opts.timeout}")
    if opts.read_only:
        lines.append("build --noremote_upload_local_results")
    if opts.download != "all":
        lines.append(f"build --remote_download_{opts.download}")
    if opts.tls_certificate:
        lines.append(f"build --tls_certificate={opts.tls_certificate}")
    return "\n".join(lines) + "\n"
