"""What a servicer knows of the call it serves beyond its request: the credential's principal
(set by reapi.admission before the call runs) and, for provenance, who is writing."""

import contextvars

import grpc

from reapi import auth, provenance, request_metadata

# Set by reapi.admission on the thread that runs the call, before the servicer does.
current_principal: contextvars.ContextVar[auth.Principal] = contextvars.ContextVar("principal")


def principal() -> auth.Principal:
    return current_principal.get()


def writer_of(who: auth.Principal, cluster: str, context: grpc.ServicerContext) -> provenance.Writer:
    """Who is writing, for provenance: the credential, plus the tool's own RequestMetadata."""
    meta = request_metadata.of_call(context)
    return provenance.Writer(
        token_id=who.token_id,
        token_prefix=who.token_prefix,
        user_id=who.user_id,
        username=who.username,
        cluster=cluster,
        tool_name=meta.tool_details.tool_name,
        tool_version=meta.tool_details.tool_version,
        tool_invocation_id=meta.tool_invocation_id,
        correlated_invocations_id=meta.correlated_invocations_id,
        action_mnemonic=meta.action_mnemonic[:100],
        target_id=meta.target_id[:300],
    )
