"""A tenant's rate limit on the REST tenant resource, through a real portal process: members read
it, only superusers (the service's operators) change it; the tenant's own admins cannot lift it."""

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model

from portal.models import AuditEvent, Tenant
from tests.support.oidc import PortalServer
from tests.support.tenants import Persona
from tests.test_portal_api import API_SCOPES, logged_in, pat_session


@pytest.fixture(scope="module")
def portal() -> Iterator[PortalServer]:
    with PortalServer() as p:
        yield p


def test_a_superuser_sets_a_tenants_rate_and_its_admins_cannot(portal: PortalServer, acme: Persona) -> None:
    url = f"{portal.url}/api/v1/tenants/{acme.slug}/"
    admin = pat_session(acme.pat(scopes=API_SCOPES))
    assert admin.get(url).json()["token_rate"] is None  # the server's default

    lift = admin.patch(url, json={"token_rate": "100000"})
    assert lift.status_code == 403 and "superusers" in lift.text
    mixed = admin.patch(url, json={"cache_mode": "pass-through", "token_rate": "5"})
    assert mixed.status_code == 403
    unchanged = admin.patch(url, json={"token_rate": None})  # what it already is: allowed
    assert unchanged.status_code == 200
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    assert tenant.token_rate is None and tenant.cache_mode == "independent"

    name = f"operator-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_superuser(username=name, email=f"{name}@example.com")
    operator = logged_in(portal, name)
    csrf = {"X-CSRFToken": str(operator.cookies["csrftoken"]), "Referer": f"{portal.url}/"}
    reply = operator.patch(url, json={"token_rate": "50:100"}, headers=csrf)
    assert reply.status_code == 200 and reply.json()["token_rate"] == "50:100"
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    assert (tenant.token_rate_per_second, tenant.token_rate_burst) == (50.0, 100)
    event = AuditEvent.objects.get(tenant=tenant, action="tenant.rate")
    assert event.actor is not None and event.actor.get_username() == name
    assert event.detail == {"old": "default", "new": "50:100"}
    assert admin.get(url).json()["token_rate"] == "50:100"  # members read it

    for bad, message in (("fast", "is not a rate"), ("0", "above 0"), ("5:0", "burst"), ("9" * 41, "40")):
        refused = operator.patch(url, json={"token_rate": bad}, headers=csrf)
        assert refused.status_code == 400 and message in refused.text, (bad, refused.text)
    assert Tenant.objects.get(pk=acme.tenant.pk).token_rate_per_second == 50.0

    back = operator.patch(url, json={"token_rate": "default"}, headers=csrf)
    assert back.status_code == 200 and back.json()["token_rate"] is None
    assert Tenant.objects.get(pk=acme.tenant.pk).token_rate is None
