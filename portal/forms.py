"""The portal's forms. Every control gets a visible label (Django renders <label for=…>)."""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from portal import bazelrc, login_throttle
from portal.models import ADMIN_SCOPE, READ_SCOPES, SCOPES, CacheMode, Role, Tenant

SCOPE_CHOICES = [(s, s) for s in SCOPES]
EXPIRY_CHOICES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")]
CLUSTER_CHOICES = [
    ("external", "External (developer workstations)"),
    ("internal", "Internal (CI runners)"),
]


class LoginForm(AuthenticationForm):
    """The portal's password sign-in, throttled per account and address (portal/login_throttle.py)."""

    def clean(self) -> dict[str, Any]:
        data = self.cleaned_data
        return login_throttle.guard(self.request, data.get("username"), data.get("password"), super().clean)


class AdminLoginForm(AdminAuthenticationForm):
    """The admin site's password sign-in, under the same throttle as the portal's."""

    def clean(self) -> dict[str, Any]:
        data = self.cleaned_data
        return login_throttle.guard(self.request, data.get("username"), data.get("password"), super().clean)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="What the token is for, e.g. 'laptop' or 'CI'.")
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=[*READ_SCOPES, "cas:write", "ac:write"],
        help_text="Leave out cas:write and ac:write for a read-only token that cannot poison the cache.",
    )
    expires_in_days = forms.TypedChoiceField(
        label="Expires in", coerce=int, choices=EXPIRY_CHOICES, initial=settings.TOKEN_DEFAULT_EXPIRY_DAYS
    )
    cluster = forms.ChoiceField(label="Cluster for the .bazelrc", choices=CLUSTER_CHOICES, initial="external")
    # Apart from the REAPI scopes and never ticked for you: for admins only (see __init__).
    portal_admin = forms.BooleanField(
        label=f"{ADMIN_SCOPE}: also open the REST API as me",
        required=False,
        initial=False,
        widget=forms.CheckboxInput(attrs={"aria-describedby": "portal-admin-warning"}),
        help_text=(
            "Warning: whoever holds this token can create tokens, invite and remove members and "
            "change the cache mode through /api/v1/, as you. Only for automation that needs it; "
            "never for a .bazelrc."
        ),
    )

    def __init__(self, *args: Any, tenant: Tenant, admin: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tenant.allow_non_expiring_tokens:
            self.fields["expires_in_days"].choices = [*EXPIRY_CHOICES, (0, "Never")]  # type: ignore[attr-defined]
        if not admin:
            # The API opens to tenant admins' tokens only: a developer has no use for the scope.
            del self.fields["portal_admin"]

    def chosen_scopes(self) -> list[str]:
        scopes = list(self.cleaned_data["scopes"])
        if self.cleaned_data.get("portal_admin"):
            scopes.append(ADMIN_SCOPE)
        return scopes


class InviteForm(forms.Form):
    email = forms.EmailField(help_text="They join when they sign in with this (verified) address.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class CacheModeForm(forms.Form):
    cache_mode = forms.ChoiceField(
        label="Cache mode",
        choices=[
            (CacheMode.INDEPENDENT, "Independent: workstations and CI keep separate caches"),
            (CacheMode.PASS_THROUGH, "Pass-through: workstations share CI's cache, both ways"),
        ],
        widget=forms.RadioSelect,
    )


class TenantCreateForm(forms.Form):
    slug = forms.SlugField(
        max_length=63, help_text="Lowercase letters, digits and hyphens; also the instance name."
    )


class BazelrcForm(forms.Form):
    cluster = forms.ChoiceField(choices=CLUSTER_CHOICES, initial="external")
    execution = forms.TypedChoiceField(
        label="Use",
        coerce=lambda v: v == "1",
        choices=[("0", "Remote cache only"), ("1", "Remote execution")],
        initial="0",
    )
    read_only = forms.BooleanField(label="Read-only (adds --noremote_upload_local_results)", required=False)
    download = forms.ChoiceField(
        label="Download outputs",
        choices=[
            ("all", "All (Bazel's default)"),
            ("toplevel", "Top-level targets only (--remote_download_toplevel)"),
            ("minimal", "Minimal (--remote_download_minimal)"),
        ],
        initial="all",
    )
    instance_name = forms.BooleanField(
        label="Send the instance name (--remote_instance_name)", required=False
    )
    timeout = forms.IntegerField(
        label="Timeout (seconds)",
        min_value=bazelrc.MIN_TIMEOUT,
        max_value=bazelrc.MAX_TIMEOUT,
        initial=bazelrc.Options.timeout,
    )
    downloader = forms.BooleanField(
        label="Remote downloader: external dependencies through the cache (--experimental_remote_downloader)",
        required=False,
    )


class CiIdentityForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="e.g. 'main branch builds'")
    claim = forms.CharField(
        max_length=100, initial="sub", help_text="The JWT claim to match, e.g. sub, repository, groups."
    )
    value = forms.CharField(max_length=255, help_text="The value it must equal (or, for a list, contain).")
    member = forms.ChoiceField(label="Acts as member")
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=[*READ_SCOPES, "cas:write", "ac:write"],
    )

    def __init__(self, *args: Any, members: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["member"].choices = [(str(i), n) for i, n in members]  # type: ignore[attr-defined]
