"""The portal's /metrics: its own requests counted under django-prometheus's names, served
only to the addresses of METRICS_ALLOWED_IPS or to the configured bearer."""

import ipaddress

from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@override_settings(METRICS_ALLOWED_NETWORKS=LOOPBACK, METRICS_BEARER_TOKEN="")
def test_it_counts_the_portals_requests_for_an_allowed_address() -> None:
    client = Client(REMOTE_ADDR="127.0.0.1")
    assert client.get("/login/").status_code == 200
    first = samples(client.get("/metrics").content.decode())
    assert client.get("/login/").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    second = samples(response.content.decode())
    gets = ("django_http_requests_total_by_method_total", (("method", "GET"),))
    assert second[gets] - first[gets] == 2  # /login/ and the first /metrics
    ok = ("django_http_responses_total_by_status_total", (("status", "200"),))
    assert second[ok] - first[ok] == 2
    login = (
        "django_http_requests_latency_seconds_by_view_method_count",
        (("method", "GET"), ("view", "login")),
    )
    assert second[login] >= 2


@override_settings(METRICS_ALLOWED_NETWORKS=LOOPBACK, METRICS_BEARER_TOKEN="s3cret-bearer")
def test_it_refuses_metrics_to_other_addresses_unless_they_send_the_bearer() -> None:
    outside = Client(REMOTE_ADDR="203.0.113.9")
    refused = outside.get("/metrics")
    assert refused.status_code == 403
    assert b"django_http" not in refused.content
    assert outside.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    accepted = outside.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-bearer")
    assert accepted.status_code == 200
    assert b"django_http_requests_total_by_method_total" in accepted.content


@override_settings(METRICS_ALLOWED_NETWORKS=[], METRICS_BEARER_TOKEN="")
def test_it_refuses_metrics_to_everyone_when_nothing_is_configured() -> None:
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
