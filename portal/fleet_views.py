"""The workers-and-queues pages of the portal: the fleet as a whole (/workers/), the same seen
from one tenant with its navigation and its own actions (/t/SLUG/workers/), and one finished
action of that tenant with the end of its stderr."""

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from portal import action_detail, fleet
from portal.access import TenantAccess, tenants_of
from portal.views import tenant_view
from workers.models import Operation


@login_required
@require_GET
def fleet_page(request: HttpRequest) -> HttpResponse:
    # The fleet is shared; operations are shown for the caller's tenants (all for superusers).
    operations = Operation.objects.all()
    if not request.user.is_superuser:
        operations = operations.filter(tenant__in=tenants_of(request.user))
    return render(request, "workers/fleet.html", _fleet(operations))


@tenant_view()
@require_GET
def tenant_fleet_page(request: HttpRequest, acc: TenantAccess) -> HttpResponse:
    """The pools (shared by every tenant) with this tenant's queue, failures and history."""
    operations = Operation.objects.filter(tenant=acc.tenant)
    return render(request, "workers/fleet.html", {**_fleet(operations), "acc": acc, "tenant": acc.tenant})


@tenant_view()
@require_GET
def operation_page(request: HttpRequest, acc: TenantAccess, name: str) -> HttpResponse:
    op = get_object_or_404(Operation.objects.select_related("tenant"), tenant=acc.tenant, name=name)
    return render(
        request,
        "workers/operation.html",
        {
            "acc": acc,
            "tenant": acc.tenant,
            "op": op,
            "what": action_detail.what(op),
            "outcome": action_detail.outcome(op),
            "failed": action_detail.failed(op),
            "duration": action_detail.duration(op),
            "stderr": action_detail.stderr_tail(op) if op.done else None,
            "command": action_detail.command_line(op),
            "requested_by": op.requested_by or {},
            "tail_bytes": action_detail.STDERR_TAIL_BYTES,
        },
    )


def _fleet(operations: QuerySet[Operation]) -> dict[str, object]:
    pools = fleet.pool_rows(operations)
    return {
        "pools": pools,
        "online": sum(len(p.workers) for p in pools),
        "in_flight": fleet.in_flight(operations),
        "failures": fleet.recent_failures(operations),
        "completed": fleet.recent_completed(operations),
    }
