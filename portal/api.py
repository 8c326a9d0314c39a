"""REST API v1 (README "REST API"): tenants, tokens and members, over the same services as the
pages. Members see only their own tenants; developers only their own tokens (others' are 404);
admin-only actions are 403 for developers. A PAT (with portal:admin, portal/api_auth.py) opens
only its own tenant, and the tokens it creates have no scope it lacks and expire no later."""

import dataclasses
from typing import Any

from django.conf import settings
from django.http import Http404
from django.utils.cache import patch_cache_control
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import bazelrc, invitations, rates, tenancy, tokens
from portal.access import TenantAccess, access, tenants_of, token_or_404, visible_invocations, visible_tokens
from portal.models import (
    DEFAULT_SCOPES,
    MAX_CI_CONFIRMATIONS,
    MIN_CI_CONFIRMATIONS,
    TOKEN_SCOPES,
    WRITE_SCOPES,
    AccessToken,
    CacheMode,
    CiAccepts,
    Membership,
    Role,
)
from reapi import invocation_queries


def api_access(request: Request, slug: str, admin: bool = False) -> TenantAccess:
    if isinstance(request.auth, AccessToken) and request.auth.tenant.slug != slug:
        raise Http404("no such tenant")
    acc = access(request.user, slug)
    if admin and not acc.is_admin:
        raise PermissionDenied("only the tenant's admins may do this")
    return acc


# --- Serializers --------------------------------------------------------------------------------


class TenantSerializer(serializers.Serializer):
    slug = serializers.SlugField(read_only=True)
    name = serializers.CharField(read_only=True)
    cache_mode = serializers.ChoiceField(choices=CacheMode.choices, required=False)
    ci_accepts = serializers.ChoiceField(
        choices=CiAccepts.choices,
        required=False,
        help_text="pass-through: what CI takes of the action results workstations write (all, "
        "confirmed: once CI or ci_confirmations distinct users wrote the identical result, none)",
    )
    ci_confirmations = serializers.IntegerField(
        min_value=MIN_CI_CONFIRMATIONS,
        max_value=MAX_CI_CONFIRMATIONS,
        required=False,
        help_text="confirmed: distinct users whose identical results CI takes",
    )
    token_rate = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=40,
        help_text="calls per second each credential of the tenant may make on a gRPC server process, "
        "RPS[:BURST]; null (or 'default') for the server's REAPI_TOKEN_RATE; superusers change it",
    )
    role = serializers.ChoiceField(choices=Role.choices, read_only=True, help_text="the caller's role")

    def validate_token_rate(self, value: str | None) -> rates.Rate | None:
        try:
            return None if value is None else rates.parse_override(value)
        except rates.RateError as exc:
            raise ValidationError(str(exc)) from None


class TokenSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    prefix = serializers.CharField(read_only=True, help_text="the first characters, for recognition")
    owner = serializers.CharField(source="user.username", read_only=True)
    scopes = serializers.ListField(source="scope_list", child=serializers.CharField(), read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    expires_at = serializers.DateTimeField(read_only=True, allow_null=True)
    first_used_at = serializers.DateTimeField(read_only=True, allow_null=True)
    last_used_at = serializers.DateTimeField(read_only=True, allow_null=True)
    revoked_at = serializers.DateTimeField(read_only=True, allow_null=True)
    status = serializers.SerializerMethodField()

    def get_status(self, token: AccessToken) -> str:
        return token.status()


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=TOKEN_SCOPES),
        min_length=1,
        max_length=len(TOKEN_SCOPES),
        default=list(DEFAULT_SCOPES),
        help_text=(
            f"default {', '.join(DEFAULT_SCOPES)} (as on the command line and the Tokens page); "
            "portal:admin (this API) only by name; a token creating a token grants only its own scopes"
        ),
    )
    expires_in_days = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=tokens.MAX_EXPIRY_DAYS,
        help_text="default 90; 0 (never) only where the tenant allows it; never past the calling token's expiry",
    )
    cluster = serializers.ChoiceField(choices=settings.CLUSTERS, default="external")


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the PAT itself: shown once, copy it now")
    bazelrc = serializers.CharField(read_only=True, help_text="remote cache lines")
    bazelrc_execution = serializers.CharField(
        read_only=True, allow_null=True, help_text="remote execution lines; null without the execute scope"
    )


class MemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    role = serializers.ChoiceField(choices=Role.choices)
    created_at = serializers.DateTimeField(read_only=True)


class InviteSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.DEVELOPER)


class InvitationSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    email = serializers.EmailField(read_only=True)
    role = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


def _tenant_data(acc: TenantAccess) -> dict[str, Any]:
    t = acc.tenant
    rate = t.token_rate
    return {
        "slug": t.slug,
        "name": t.name,
        "cache_mode": t.cache_mode,
        "token_rate": str(rate) if rate else None,
        "ci_accepts": t.ci_accepts,
        "ci_confirmations": t.ci_confirmations,
        "role": acc.role,
    }


# --- Views --------------------------------------------------------------------------------------


class TenantList(APIView):
    @extend_schema(responses=TenantSerializer(many=True), summary="Tenants the caller belongs to")
    def get(self, request: Request) -> Response:
        tenants = tenants_of(request.user)
        if isinstance(request.auth, AccessToken):
            tenants = tenants.filter(pk=request.auth.tenant_id)
        return Response([_tenant_data(access(request.user, t.slug)) for t in tenants])


class TenantDetail(APIView):
    @extend_schema(responses=TenantSerializer, summary="A tenant")
    def get(self, request: Request, slug: str) -> Response:
        return Response(_tenant_data(api_access(request, slug)))

    @extend_schema(
        request=TenantSerializer,
        responses=TenantSerializer,
        summary="Set the cache mode or what CI accepts from workstations (admins), or the rate limit (superusers)",
    )
    def patch(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug, admin=True)
        body = TenantSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if not {"cache_mode", "ci_accepts", "ci_confirmations", "token_rate"} & set(data):
            raise ValidationError("give cache_mode, ci_accepts, ci_confirmations or token_rate")
        new_rate = "token_rate" in data and data["token_rate"] != acc.tenant.token_rate
        # The limit protects the service from a tenant, so the tenant's own admins cannot lift it.
        if new_rate and not getattr(request.user, "is_superuser", False):
            raise PermissionDenied(
                "only the service's operators (superusers) may change a tenant's rate limit"
            )
        if "cache_mode" in data:
            tenancy.set_cache_mode(acc.tenant, data["cache_mode"], actor=acc.user)
        if "ci_accepts" in data or "ci_confirmations" in data:
            tenancy.set_ci_accepts(
                acc.tenant,
                data.get("ci_accepts", acc.tenant.ci_accepts),
                data.get("ci_confirmations"),
                actor=acc.user,
            )
        if new_rate:
            tenancy.set_token_rate(acc.tenant, data["token_rate"], actor=acc.user)
        return Response(_tenant_data(acc))


class TokenList(APIView):
    @extend_schema(responses=TokenSerializer(many=True), summary="Tokens (developers: their own)")
    def get(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug)
        return Response(TokenSerializer(visible_tokens(acc), many=True).data)

    @extend_schema(
        request=TokenCreateSerializer,
        responses={201: TokenCreatedSerializer},
        summary="Create a token for the caller; the PAT is in this response only",
    )
    def post(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug)
        body = TokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            issued = tokens.issue(
                acc.tenant,
                acc.user.get_username(),
                name=data["name"],
                scopes=data["scopes"],
                expires_in_days=data.get("expires_in_days"),
                actor=acc.user,
                issued_by=request.auth if isinstance(request.auth, AccessToken) else None,
                unique_name=True,
            )
        except tokens.TokenRefused as exc:
            raise PermissionDenied(str(exc)) from None
        except tokens.TokenError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        read_only = not set(WRITE_SCOPES) & set(issued.token.scope_list)
        options = bazelrc.Options(
            tenant=acc.tenant.slug, cluster=data["cluster"], token=issued.secret, read_only=read_only
        )
        reply = dict(TokenSerializer(issued.token).data)
        reply["token"] = issued.secret
        reply["bazelrc"] = bazelrc.render(options)
        reply["bazelrc_execution"] = (
            bazelrc.render(dataclasses.replace(options, execution=True))
            if "execute" in issued.token.scope_list
            else None
        )
        response = Response(reply, status=status.HTTP_201_CREATED)
        patch_cache_control(response, no_store=True)
        return response


class TokenDetail(APIView):
    @extend_schema(responses=TokenSerializer, summary="A token (developers: their own)")
    def get(self, request: Request, slug: str, token_id: int) -> Response:
        return Response(TokenSerializer(token_or_404(api_access(request, slug), token_id)).data)


class TokenRevoke(APIView):
    @extend_schema(request=None, responses=TokenSerializer, summary="Revoke a token")
    def post(self, request: Request, slug: str, token_id: int) -> Response:
        acc = api_access(request, slug)
        token = token_or_404(acc, token_id)
        return Response(TokenSerializer(tokens.revoke(token, actor=acc.user)).data)


class MemberList(APIView):
    @extend_schema(responses=MemberSerializer(many=True), summary="Members of the tenant")
    def get(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug)
        rows = Membership.objects.filter(tenant=acc.tenant).select_related("user").order_by("user__username")
        return Response(MemberSerializer(rows, many=True).data)

    @extend_schema(
        request=InviteSerializer,
        responses={201: InvitationSerializer},
        summary="Invite an email address (admins); accepted at their next verified login",
    )
    def post(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug, admin=True)
        body = InviteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            invitation = invitations.invite(
                acc.tenant, body.validated_data["email"], body.validated_data["role"], acc.user
            )
        except invitations.MembershipError as exc:
            raise ValidationError({"email": [str(exc)]}) from None
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class MemberDetail(APIView):
    def _membership(self, request: Request, slug: str, membership_id: int) -> tuple[TenantAccess, Membership]:
        acc = api_access(request, slug, admin=True)
        membership = (
            Membership.objects.filter(tenant=acc.tenant, pk=membership_id).select_related("user").first()
        )
        if membership is None:
            raise Http404("no such member")
        return acc, membership

    @extend_schema(request=MemberSerializer, responses=MemberSerializer, summary="Change a role (admins)")
    def patch(self, request: Request, slug: str, membership_id: int) -> Response:
        acc, membership = self._membership(request, slug, membership_id)
        body = MemberSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            invitations.change_role(membership, body.validated_data["role"], acc.user)
        except invitations.MembershipError as exc:
            raise ValidationError({"role": [str(exc)]}) from None
        return Response(MemberSerializer(membership).data)

    @extend_schema(
        request=None, responses={204: None}, summary="Remove a member and revoke their tokens (admins)"
    )
    def delete(self, request: Request, slug: str, membership_id: int) -> Response:
        acc, membership = self._membership(request, slug, membership_id)
        try:
            invitations.remove(membership, acc.user)
        except invitations.MembershipError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Invocations --------------------------------------------------------------------------------


class InvocationSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the client's tool_invocation_id (REAPI RequestMetadata)")
    correlated_invocations_id = serializers.CharField()
    cluster = serializers.CharField()
    user = serializers.CharField()
    token = serializers.CharField(help_text="the token's prefix (empty for a CI runner's OIDC token)")
    tool = serializers.CharField()
    first_call = serializers.DateTimeField()
    last_call = serializers.DateTimeField()
    duration_seconds = serializers.FloatField()
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(allow_null=True)
    executed = serializers.IntegerField(help_text="actions executed remotely")
    bytes_up = serializers.IntegerField()
    bytes_down = serializers.IntegerField()


class ChangeSerializer(serializers.Serializer):
    kind = serializers.CharField()
    text = serializers.CharField()


class ExplanationSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["explained", "no-relative", "action-missing", "later"])
    text = serializers.CharField()
    relative = serializers.DictField(required=False, help_text="the earlier action compared with")
    changes = ChangeSerializer(many=True)


class MissSerializer(serializers.Serializer):
    action = serializers.CharField(help_text="hash/size")
    mnemonic = serializers.CharField()
    target = serializers.CharField()
    outputs = serializers.ListField(child=serializers.CharField())
    explanation = ExplanationSerializer()


class InvocationDetailSerializer(InvocationSerializer):
    missed = MissSerializer(many=True)


class InvocationList(APIView):
    @extend_schema(
        responses=InvocationSerializer(many=True),
        summary="Invocations, most recent first (developers: their own)",
    )
    def get(self, request: Request, slug: str) -> Response:
        acc = api_access(request, slug)
        try:
            limit = max(1, min(int(request.query_params.get("limit", "50")), 500))
        except ValueError:
            raise ValidationError({"limit": ["a whole number"]}) from None
        rows = visible_invocations(acc)[:limit]
        return Response([invocation_queries.summary(row) for row in rows])


class InvocationDetail(APIView):
    @extend_schema(
        responses=InvocationDetailSerializer,
        summary="An invocation with each miss explained (developers: their own)",
    )
    def get(self, request: Request, slug: str, invocation_id: str) -> Response:
        acc = api_access(request, slug)
        row = visible_invocations(acc).filter(invocation_id=invocation_id).first()
        if row is None:
            raise Http404("no such invocation")
        return Response({**invocation_queries.summary(row), "missed": invocation_queries.explained(row)})
