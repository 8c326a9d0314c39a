"""The portal's forms. Every control gets a visible label (Django renders <label for=…>)."""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from portal import bazelrc, local_accounts, login_throttle, tenancy
from portal.models import (
    ADMIN_SCOPE,
    DEFAULT_SCOPES,
    MAX_CI_CONFIRMATIONS,
    MIN_CI_CONFIRMATIONS,
    SCOPES,
    CacheMode,
    CiAccepts,
    Role,
    Tenant,
)

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
    name = forms.CharField(
        max_length=200,
        help_text="What the token is for, e.g. 'laptop' or 'CI'; one active token per name and owner.",
    )
    # For admins only (see __init__): whose token it is; developers' tokens are their own.
    owner = forms.TypedChoiceField(coerce=int, label="Owner", required=False, empty_value=None)
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=list(DEFAULT_SCOPES),
        help_text=(
            "execute lets Bazel run actions on the workers (remote execution). Leave out "
            "cas:write and ac:write for a read-only token that cannot poison the cache."
        ),
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

    def __init__(
        self,
        *args: Any,
        tenant: Tenant,
        admin: bool = False,
        owners: list[tuple[int, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if tenant.allow_non_expiring_tokens:
            self.fields["expires_in_days"].choices = [*EXPIRY_CHOICES, (0, "Never")]  # type: ignore[attr-defined]
        if not admin:
            # The API opens to tenant admins' tokens only: a developer has no use for the scope.
            del self.fields["portal_admin"]
        if admin and owners:
            self.fields["owner"].choices = owners  # type: ignore[attr-defined]
            self.fields[
                "owner"
            ].help_text = (
                "The member who will hold the token; hand it to them yourself, it is shown only to you."
            )
        else:
            del self.fields["owner"]

    def chosen_scopes(self) -> list[str]:
        scopes = list(self.cleaned_data["scopes"])
        if self.cleaned_data.get("portal_admin"):
            scopes.append(ADMIN_SCOPE)
        return scopes


class InviteForm(forms.Form):
    email = forms.EmailField(help_text="They join when they sign in with this (verified) address.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class LocalAccountForm(forms.Form):
    """A password account for someone new, where no OpenID provider is configured."""

    username = forms.CharField(
        max_length=local_accounts.USERNAME_MAX,
        help_text="Letters, digits and @ . + - _; what they type to sign in.",
    )
    email = forms.EmailField(help_text="Theirs, for your records and this tenant's invitations.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", "account")  # its fields apart from the invitation form's
        super().__init__(*args, **kwargs)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


def _radio(label: str, choices: list[tuple[str, str]]) -> forms.ChoiceField:
    return forms.ChoiceField(label=label, choices=choices, widget=forms.RadioSelect)


class CacheModeForm(forms.Form):
    cache_mode = _radio(
        "Cache mode",
        [
            (CacheMode.INDEPENDENT, "Independent: workstations and CI keep separate caches"),
            (CacheMode.PASS_THROUGH, "Pass-through: workstations share CI's cache, both ways"),
        ],
    )


class CiAcceptsForm(forms.Form):
    ci_accepts = _radio(
        "What CI accepts from workstations",
        [
            (CiAccepts.ALL, "All: every result a workstation writes"),
            (CiAccepts.CONFIRMED, "Confirmed: a workstation's result once it is confirmed"),
            (CiAccepts.NONE, "None: no result a workstation writes"),
        ],
    )
    ci_confirmations = forms.IntegerField(
        label="Distinct users that confirm a result",
        min_value=MIN_CI_CONFIRMATIONS,
        max_value=MAX_CI_CONFIRMATIONS,
        help_text=f"For confirmed: how many different users must have written identical results "
        f"({MIN_CI_CONFIRMATIONS} to {MAX_CI_CONFIRMATIONS}).",
    )


class TenantCreateForm(forms.Form):
    # The service's own rule and words (portal/tenancy.py), as the command line says them.
    slug = forms.CharField(
        help_text=f"{tenancy.SLUG_RULE}; also the REAPI instance name.",
        widget=forms.TextInput(attrs={"autocapitalize": "none", "spellcheck": "false"}),
    )

    def clean_slug(self) -> str:
        try:
            return tenancy.check_slug(self.cleaned_data["slug"])
        except tenancy.TenancyError as exc:
            raise forms.ValidationError(str(exc)) from None


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
        initial=list(DEFAULT_SCOPES),
    )

    def __init__(self, *args: Any, members: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["member"].choices = [(str(i), n) for i, n in members]  # type: ignore[attr-defined]
