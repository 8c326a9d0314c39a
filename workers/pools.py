"""Execution pools per cluster and the routing of an action's platform to one of them.

DESIGN.md pools: `x86-64`, `arm64` or a custom name, configured per cluster as
REAPI_POOLS_<CLUSTER>=NAME[:ARCH],... (the first is the default). The platform properties
`Arch` (or Bazel's `cpu`), `OSFamily` and `Pool` choose the pool; a platform that no configured
pool serves is refused at once with FAILED_PRECONDITION naming it, rather than queued forever.
"""

import platform as host_platform
import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from reapi.errors import FailedPrecondition

_ARCHES = {
    "x86-64": "x86-64",
    "x86_64": "x86-64",
    "amd64": "x86-64",
    "k8": "x86-64",
    "x64": "x86-64",
    "arm64": "arm64",
    "aarch64": "arm64",
}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
OS_FAMILY = "linux"
SUPPORTED = ("Arch", "cpu", "OSFamily", "Pool")


class PoolConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Pool:
    name: str
    arch: str

    def queue(self, cluster: str) -> str:
        return queue_name(cluster, self.name)


def normalise_arch(value: str) -> str | None:
    return _ARCHES.get(value.strip().lower())


def host_arch() -> str:
    return normalise_arch(host_platform.machine()) or host_platform.machine().lower()


def parse(entries: Iterable[str]) -> list[Pool]:
    pools: list[Pool] = []
    for entry in entries:
        name, _, arch = entry.partition(":")
        if not NAME_RE.fullmatch(name):
            raise PoolConfigError(f"pool name {name!r} must be letters, digits, '.', '_' or '-'")
        if arch:
            resolved = normalise_arch(arch)
            if resolved is None:
                raise PoolConfigError(f"pool {name}: unknown architecture {arch!r} (x86-64, arm64)")
        else:
            resolved = normalise_arch(name) or host_arch()
        if any(p.name == name for p in pools):
            raise PoolConfigError(f"pool {name!r} is configured twice")
        pools.append(Pool(name, resolved))
    return pools


def configured(cluster: str) -> list[Pool]:
    try:
        pools = parse(settings.REAPI_POOLS[cluster])
    except PoolConfigError as exc:
        raise PoolConfigError(f"REAPI_POOLS_{cluster.upper()}: {exc}") from None
    if not pools:
        raise PoolConfigError(f"REAPI_POOLS_{cluster.upper()} configures no pool")
    return pools


def get(cluster: str, name: str) -> Pool:
    for pool in configured(cluster):
        if pool.name == name:
            return pool
    names = ", ".join(p.name for p in configured(cluster))
    raise PoolConfigError(f"no pool {name!r} on the {cluster} cluster (configured: {names})")


def queue_name(cluster: str, pool: str) -> str:
    return f"reapi.{cluster}.{pool}"


def describe(properties: Iterable[tuple[str, str]]) -> str:
    text = ", ".join(f"{n}={v}" for n, v in properties)
    return f"{{{text}}}" if text else "{} (no properties)"


def route(cluster: str, properties: list[tuple[str, str]]) -> Pool:
    """The pool that serves this platform, or FAILED_PRECONDITION naming the platform."""
    pools = configured(cluster)
    served = ", ".join(f"{p.name} (Arch={p.arch})" for p in pools)

    def refuse(why: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"no pool on the {cluster} cluster serves platform {describe(properties)}: {why}; "
            f"configured pools: {served}"
        )

    wanted_pool = wanted_arch = None
    for name, value in properties:
        key = name.lower()
        if key in ("arch", "cpu"):
            arch = normalise_arch(value)
            if arch is None:
                raise refuse(f"unknown architecture {name}={value}")
            if wanted_arch not in (None, arch):
                raise refuse("it asks for two architectures")
            wanted_arch = arch
        elif key == "osfamily":
            if value.strip().lower() != OS_FAMILY:
                raise refuse(f"workers run Linux, not OSFamily={value}")
        elif key == "pool":
            if wanted_pool not in (None, value):
                raise refuse("it names two pools")
            wanted_pool = value
        else:
            raise refuse(f"property {name!r} is not supported (use {', '.join(SUPPORTED)})")

    if wanted_pool is not None:
        match = next((p for p in pools if p.name == wanted_pool), None)
        if match is None:
            raise refuse(f"there is no pool named {wanted_pool!r}")
        if wanted_arch is not None and match.arch != wanted_arch:
            raise refuse(f"pool {wanted_pool} runs {match.arch}, not {wanted_arch}")
        return match
    if wanted_arch is not None:
        # The pool named after the architecture first, else any pool running it.
        for pool in pools:
            if pool.name == wanted_arch:
                return pool
        for pool in pools:
            if pool.arch == wanted_arch:
                return pool
        raise refuse(f"no pool runs {wanted_arch}")
    return pools[0]
