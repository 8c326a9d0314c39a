"""The Content-Security-Policy every portal response carries (W3C CSP Level 3).

The portal's pages load their style and script from static files only (portal/static)
and have no inline <script>, <style> or style attribute, so the policy needs
no 'unsafe-inline': markup injected into a page could neither run a script nor restyle it.
frame-ancestors 'none' forbids framing (clickjacking), as X-Frame-Options: DENY does for older
browsers; form-action 'self' keeps injected forms from posting elsewhere.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response
