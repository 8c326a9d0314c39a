"""The Grafana dashboard and the alert rules in docs/observability name only metrics the
servers export, and the alerts cover hit rate, errors, queue wait and storage latency."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import portal.metrics  # noqa: F401  (registers the portal's metrics)
import reapi.metrics  # noqa: F401  (registers the servers' and workers' metrics)
from reapi.execution_metrics import ExecutionCollector

DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability"
METRIC = re.compile(r"\b(?:grpc_server|reapi|django_http)_[a-z0-9_]+")


def exported() -> set[str]:
    names = set(REGISTRY._names_to_collectors)
    names |= {family.name for family in ExecutionCollector("external").collect()}
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def test_the_dashboard_names_only_exported_metrics() -> None:
    named = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert len(named) >= 10, named
    assert named <= exported(), named - exported()


def test_the_alert_rules_name_only_exported_metrics_and_cover_what_operators_watch() -> None:
    alerts = alert_exprs()
    named = {name for expr in alerts.values() for name in METRIC.findall(expr)}
    assert named <= exported(), named - exported()
    assert "reapi_action_cache_requests_total" in named  # hit rate
    assert "grpc_server_handled_total" in named  # error rate
    assert "reapi_execution_duration_seconds_bucket" in named  # queue wait
    assert "reapi_storage_operation_seconds_bucket" in named  # storage latency
