"""The one .bazelrc renderer, shared by the portal pages, the token-created page and
`manage.py bazelrc`."""

from dataclasses import dataclass

from django.conf import settings

DOWNLOADS = ("all", "toplevel", "minimal")


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


def render(opts: Options) -> str:
    if opts.cluster not in settings.CLUSTERS:
        raise ValueError(f"unknown cluster {opts.cluster!r}")
    if opts.download not in DOWNLOADS:
        raise ValueError(f"download must be one of {', '.join(DOWNLOADS)}")
    url = settings.REAPI_URLS[opts.cluster]
    lines = [f"# Remote {'execution' if opts.execution else 'cache'}: tenant {opts.tenant}, {opts.cluster} cluster"]
    if opts.execution:
        lines.append(f"build --remote_executor={url}")
    else:
        lines.append(f"build --remote_cache={url}")
    lines.append(f"build --remote_header=X-Aspect={opts.token or 'aw_pat_REPLACE_WITH_YOUR_TOKEN'}")
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
