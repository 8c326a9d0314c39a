"""Password accounts made by a tenant's admin on the Members page, where no OpenID provider is
configured: the account, its membership and a link on which its owner sets a password.

The admin never learns the password: they get a set-password link (Django's password-reset
token: valid for PASSWORD_RESET_TIMEOUT, three days by default, and only until a password is
set) to hand over. The typed email is recorded as unverified (LocalAccount), so the account
cannot collect other tenants' invitations with it.
"""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from portal import audit
from portal.models import Invitation, LocalAccount, Membership, Role, Tenant

USERNAME_MAX = 150


class AccountError(ValueError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the form field it is about, if one


@dataclass(frozen=True)
class NewAccount:
    membership: Membership
    set_password_path: str  # a secret: shown once, to the admin who made the account


def check_username(username: str) -> str:
    username = username.strip()
    if not username:
        raise AccountError("a username is required", "username")
    if len(username) > USERNAME_MAX:
        raise AccountError(f"a username has at most {USERNAME_MAX} characters", "username")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise AccountError("a username may hold only letters, digits and @ . + - _", "username") from None
    return username


def create(tenant: Tenant, username: str, email: str, role: str, actor: User) -> NewAccount:
    username = check_username(username)
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise AccountError(f"{email!r} is not an email address", "email") from None
    if role not in Role.values:
        raise AccountError(f"unknown role {role!r} (choose {', '.join(Role.values)})", "role")
    users = get_user_model().objects
    if users.filter(username__iexact=username).exists():
        raise AccountError(f"the username {username!r} is taken: choose another", "username")
    if users.filter(email__iexact=email).exists():
        raise AccountError(f"an account with {email} exists already: invite that address instead", "email")
    try:
        with transaction.atomic():
            user = users.create_user(username, email=email)  # no usable password until they set one
            LocalAccount.objects.create(user=user, tenant=tenant, created_by=actor)
            membership = Membership.objects.create(tenant=tenant, user=user, role=role)
            # A pending invitation of this tenant for the address is what this account answers.
            Invitation.objects.filter(tenant=tenant, email__iexact=email, accepted_at__isnull=True).update(
                accepted_at=timezone.now(), accepted_by=user
            )
            audit.record("account.create", tenant=tenant, actor=actor, username=username, email=email)
            audit.record("member.add", tenant=tenant, actor=actor, username=username, role=role)
    except IntegrityError:  # the same name made at the same moment by someone else
        raise AccountError(f"the username {username!r} is taken: choose another", "username") from None
    return NewAccount(membership, set_password_path(user))


def set_password_path(user: User) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse("set_password", args=[uid, default_token_generator.make_token(user)])


def awaiting_password(membership: Membership) -> bool:
    """An account this tenant's admins made whose owner has not set a password yet."""
    user = membership.user
    return (
        not user.has_usable_password()
        and LocalAccount.objects.filter(user=user, tenant=membership.tenant).exists()
    )


def new_link(membership: Membership, actor: User) -> str:
    """Another set-password link, for an account of this tenant still without a password (the
    first was lost before it reached its owner). Once a password is set, only its owner or a
    superuser changes it: a tenant admin could otherwise take over an account."""
    if not awaiting_password(membership):
        raise AccountError(
            f"{membership.user.get_username()} has set a password already (or their account was not made here)"
        )
    audit.record(
        "account.link", tenant=membership.tenant, actor=actor, username=membership.user.get_username()
    )
    return set_password_path(membership.user)
