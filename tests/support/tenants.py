"""Creating tenants, members and tokens for tests through the same functions the CLI uses."""

from dataclasses import dataclass

from portal import tenancy, tokens
from portal.models import SCOPES, Role, Tenant


@dataclass
class Persona:
    tenant: Tenant
    admin: str
    developer: str | None

    @property
    def slug(self) -> str:
        return self.tenant.slug

    def pat(self, user: str | None = None, scopes: str = ",".join(SCOPES), days: int | None = None) -> str:
        return tokens.issue(
            self.tenant, user or self.admin, scopes=scopes, expires_in_days=days, name="test"
        ).secret


def make_tenant(slug: str, admin: str, developer: str | None = None) -> Persona:
    tenant = tenancy.create_tenant(slug)
    # Usernames are shared across tenants the way real people are; suffix keeps tests apart.
    admin_name = f"{admin}-{slug}"
    tenancy.add_member(tenant, admin_name, Role.ADMIN)
    dev_name = None
    if developer:
        dev_name = f"{developer}-{slug}"
        tenancy.add_member(tenant, dev_name, Role.DEVELOPER)
    return Persona(tenant, admin_name, dev_name)
