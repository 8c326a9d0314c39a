"""Pool configuration and the routing of a platform to a pool (no server: plain functions)."""

import pytest
from django.test import override_settings

from reapi.errors import FailedPrecondition
from workers import pools

POOLS = {
    "external": ["x86-64", "arm64", "net:x86-64:network:memory=8G:pids=99", "gpu:x86-64"],
    "internal": ["x86-64"],
}


def test_it_parses_names_architectures_and_options() -> None:
    parsed = pools.parse(POOLS["external"])
    assert [(p.name, p.arch, p.network) for p in parsed] == [
        ("x86-64", "x86-64", False),
        ("arm64", "arm64", False),
        ("net", "x86-64", True),
        ("gpu", "x86-64", False),
    ]
    net = parsed[2].action_limits()
    assert (net.memory, net.pids) == (8 << 30, 99)
    assert parsed[0].limits is None  # the REAPI_SANDBOX_* defaults


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("bad name!", "must be letters"),
        ("x:sparc", "unknown architecture"),
        ("x:x86-64:memory=lots", "not a valid value"),
        ("x:x86-64:pids=0", "must be positive"),
        ("x:x86-64:wifi", "unknown option 'wifi'"),
    ],
)
def test_it_refuses_a_bad_pool_entry_naming_the_problem(entry: str, why: str) -> None:
    with pytest.raises(pools.PoolConfigError, match=why):
        pools.parse([entry])


@pytest.mark.parametrize(
    ("platform", "pool"),
    [
        ({}, "x86-64"),
        ({"Arch": "aarch64"}, "arm64"),
        ({"cpu": "k8"}, "x86-64"),
        ({"Pool": "gpu"}, "gpu"),
        ({"network": "on"}, "net"),
        ({"network": "on", "Arch": "x86_64"}, "net"),
        ({"network": "off"}, "x86-64"),
        ({"OSFamily": "Linux", "Arch": "arm64"}, "arm64"),
    ],
)
@override_settings(REAPI_POOLS=POOLS)
def test_it_routes_a_platform_to_its_pool(platform: dict[str, str], pool: str) -> None:
    assert pools.route("external", list(platform.items())).name == pool


@pytest.mark.parametrize(
    ("platform", "named"),
    [
        ({"Arch": "sparc"}, "unknown architecture Arch=sparc"),
        ({"Pool": "gpu", "network": "on"}, "network=on, but pool gpu does not allow network access"),
        ({"Arch": "arm64", "network": "on"}, "network=on"),
        ({"network": "maybe"}, "network=maybe must be on or off"),
        ({"OSFamily": "Windows"}, "OSFamily=Windows"),
        ({"color": "blue"}, "property 'color' is not supported"),
    ],
)
@override_settings(REAPI_POOLS=POOLS)
def test_it_refuses_a_platform_no_pool_serves_naming_why(platform: dict[str, str], named: str) -> None:
    with pytest.raises(FailedPrecondition) as err:
        pools.route("external", list(platform.items()))
    assert named in err.value.message


@override_settings(REAPI_POOLS=POOLS)
def test_network_on_is_refused_where_no_pool_allows_it() -> None:
    with pytest.raises(FailedPrecondition, match="network=on"):
        pools.route("internal", [("network", "on")])
