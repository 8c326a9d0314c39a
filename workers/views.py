"""The workers-and-queues page of the portal."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from portal.access import tenants_of
from workers import fleet
from workers.models import Operation


@login_required
@require_GET
def fleet_page(request: HttpRequest) -> HttpResponse:
    # The fleet is shared; operations are shown for the caller's tenants (all for superusers).
    operations = Operation.objects.all()
    if not request.user.is_superuser:
        operations = operations.filter(tenant__in=tenants_of(request.user))
    return render(
        request,
        "workers/fleet.html",
        {
            "pools": fleet.pool_rows(operations),
            "in_flight": fleet.in_flight(operations),
            "failures": fleet.recent_failures(operations),
        },
    )
