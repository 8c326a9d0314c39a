"""The admin site: local accounts made by tenant admins, so a superuser who has checked such an
account's email can delete the record and let invitations to other tenants match it."""

from django.contrib import admin

from portal.models import LocalAccount


@admin.register(LocalAccount)
class LocalAccountAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "tenant", "created_by", "created_at")
    search_fields = ("user__username", "user__email")
    raw_id_fields = ("user", "created_by")
