"""Execution pools per cluster and the routing of an action's platform to one of them.

Pools are `x86-64`, `arm64` or a custom name, configured per cluster as
REAPI_POOLS_<CLUSTER>=NAME[:ARCH][:OPTION...],... (the first is the default). Options set what
the pool's sandbox allows: `network` (actions may ask for the network with the platform property
`network=on`) and limits per action overriding the REAPI_SANDBOX_* defaults: `memory=4G`,
`pids=1024`, `nofile=4096`, `file-size=4G`, `output=8G`.

The platform properties `Arch` (or Bazel's `cpu`), `OSFamily`, `Pool` and `network` choose the
pool; a platform that no configured pool serves is refused at once with FAILED_PRECONDITION
naming it, rather than queued forever.
"""

import dataclasses
import platform as host_platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from portal.env import parse_size
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
SUPPORTED = ("Arch", "cpu", "OSFamily", "Pool", "network")
NETWORK_PROPERTY = "network"


class PoolConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    """What one action may use on a pool's workers."""

    memory: int  # bytes, for the whole action (every process it starts)
    pids: int  # processes and threads at once
    nofile: int  # open files per process
    file_size: int  # bytes, the largest file a process may write
    output: int  # bytes written under the input root, all files together

    @staticmethod
    def defaults() -> "Limits":
        return Limits(
            memory=settings.REAPI_SANDBOX_MEMORY,
            pids=settings.REAPI_SANDBOX_PIDS,
            nofile=settings.REAPI_SANDBOX_NOFILE,
            file_size=settings.REAPI_SANDBOX_FILE_SIZE,
            output=settings.REAPI_SANDBOX_OUTPUT_BYTES,
        )


# Pool option name -> (Limits field, parser).
_LIMIT_OPTIONS: dict[str, tuple[str, Callable[[str], int]]] = {
    "memory": ("memory", parse_size),
    "pids": ("pids", int),
    "nofile": ("nofile", int),
    "file-size": ("file_size", parse_size),
    "output": ("output", parse_size),
}


@dataclass(frozen=True)
class Pool:
    name: str
    arch: str
    network: bool = False
    limits: Limits | None = None  # None: the REAPI_SANDBOX_* defaults

    def queue(self, cluster: str) -> str:
        return queue_name(cluster, self.name)

    def action_limits(self) -> Limits:
        return self.limits or Limits.defaults()


def normalise_arch(value: str) -> str | None:
    return _ARCHES.get(value.strip().lower())


def host_arch() -> str:
    return normalise_arch(host_platform.machine()) or host_platform.machine().lower()


def parse(entries: Iterable[str]) -> list[Pool]:
    pools: list[Pool] = []
    for entry in entries:
        name, _, rest = entry.partition(":")
        arch, *options = rest.split(":")
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
        network, limits = _options(name, options)
        pools.append(Pool(name, resolved, network, limits))
    return pools


def _options(pool: str, options: list[str]) -> tuple[bool, Limits | None]:
    network = False
    overrides: dict[str, int] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if key == "network" and not eq:
            network = True
        elif key in _LIMIT_OPTIONS and value:
            field, parser = _LIMIT_OPTIONS[key]
            try:
                number = parser(value)
            except ValueError:
                raise PoolConfigError(f"pool {pool}: {key}={value!r} is not a valid value") from None
            if number <= 0:
                raise PoolConfigError(f"pool {pool}: {key} must be positive")
            overrides[field] = number
        else:
            known = ", ".join(["network", *(f"{k}=…" for k in _LIMIT_OPTIONS)])
            raise PoolConfigError(f"pool {pool}: unknown option {option!r} (known: {known})")
    if not overrides:
        return network, None
    return network, dataclasses.replace(Limits.defaults(), **overrides)


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


def asks_for_network(properties: Iterable[tuple[str, str]]) -> bool:
    """Whether a platform asks for the network (`network=on`), as `route` reads it."""
    return any(n.lower() == NETWORK_PROPERTY and v.strip().lower() == "on" for n, v in properties)


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
    wants_network = asks_for_network(properties)
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
        elif key == NETWORK_PROPERTY:
            if value.strip().lower() not in ("on", "off"):
                raise refuse(f"property {name}={value} must be on or off")
        else:
            raise refuse(f"property {name!r} is not supported (use {', '.join(SUPPORTED)})")

    no_network = "network=on, but no such pool allows network access (pool option `network`)"
    if wanted_pool is not None:
        match = next((p for p in pools if p.name == wanted_pool), None)
        if match is None:
            raise refuse(f"there is no pool named {wanted_pool!r}")
        if wanted_arch is not None and match.arch != wanted_arch:
            raise refuse(f"pool {wanted_pool} runs {match.arch}, not {wanted_arch}")
        if wants_network and not match.network:
            raise refuse(f"network=on, but pool {wanted_pool} does not allow network access")
        return match
    # Without a pool named, an action asking for the network goes only where it is allowed.
    candidates = [p for p in pools if p.network] if wants_network else pools
    if wanted_arch is not None:
        # The pool named after the architecture first, else any pool running it.
        for pool in candidates:
            if pool.name == wanted_arch:
                return pool
        for pool in candidates:
            if pool.arch == wanted_arch:
                return pool
        served_elsewhere = any(p.arch == wanted_arch for p in pools)
        raise refuse(no_network if served_elsewhere else f"no pool runs {wanted_arch}")
    if not candidates:
        raise refuse(no_network)
    return candidates[0]
