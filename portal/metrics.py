"""The portal's own Prometheus metrics: requests by method, responses by status, latency by
view (django-prometheus's names), served at /metrics to addresses in METRICS_ALLOWED_IPS or to
a scraper sending `Authorization: Bearer` METRICS_BEARER_TOKEN; anyone else gets the 403 page.

Under gunicorn with several workers, set PROMETHEUS_MULTIPROC_DIR (an empty directory) so a
scrape adds up every worker.
"""

import hmac
import ipaddress
import time
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reapi import metrics_http

REQUESTS = Counter(
    "django_http_requests_total_by_method_total", "Requests the portal received, by method.", ("method",)
)
RESPONSES = Counter(
    "django_http_responses_total_by_status_total", "Responses the portal sent, by status.", ("status",)
)
LATENCY = Histogram(
    "django_http_requests_latency_seconds_by_view_method",
    "Time the portal took to answer, by view and method.",
    ("view", "method"),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Methods outside these are counted as "other": the label stays bounded whatever clients send.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(method).inc()
        start = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name if match is not None else "") or "unresolved"
        LATENCY.labels(view, method).observe(time.perf_counter() - start)
        RESPONSES.labels(str(response.status_code)).inc()
        return response


def allowed(request: HttpRequest) -> bool:
    bearer = settings.METRICS_BEARER_TOKEN
    sent = request.META.get("HTTP_AUTHORIZATION", "")
    if bearer and hmac.compare_digest(sent.encode(), f"Bearer {bearer}".encode()):
        return True
    raw = ""
    if settings.PORTAL_CLIENT_IP_META:
        # The address the trusted proxy appended, as sign-in throttling reads it.
        raw = request.META.get(settings.PORTAL_CLIENT_IP_META, "").rsplit(",", 1)[-1].strip()
    for text in (raw, request.META.get("REMOTE_ADDR", "")):
        try:
            address = ipaddress.ip_address(text[:64])
        except ValueError:
            continue
        return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)
    return False


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        raise PermissionDenied("metrics are for the addresses or the bearer the operator configured")
    return HttpResponse(generate_latest(metrics_http.registry()), content_type=CONTENT_TYPE_LATEST)
