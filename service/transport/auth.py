"""Who may call what: the one interceptor that authenticates and authorises every call.

A key travels in the call's metadata as ``authorization: Bearer <key>`` or ``x-api-key:
<key>``. For each FaceGate method, ``RULES`` names the least role that may call it (roles
are ranked terminal < enroller < admin, each allowed what the lower ones are) and the
request field naming the collection the call touches. A key scoped to collections may only
touch those; ``ListCollections`` shows it only those.

Failures: no key -> UNAUTHENTICATED / API_KEY_MISSING; a key that matches no entry ->
UNAUTHENTICATED / API_KEY_INVALID; a role below the method's -> PERMISSION_DENIED /
ROLE_DENIED; a collection outside the scope -> PERMISSION_DENIED / COLLECTION_DENIED.
Health and reflection stay open (load balancers and grpcurl need no key); any other
service needs an admin key.

The scope check needs the request's collection. The servicer's handlers take raw bytes and
parse them themselves (so a malformed message is INVALID_ARGUMENT with a reason), so the
interceptor wraps the handler's behaviour: for a scoped key it parses the bytes once with
the servicer's own parse function and the generated request class, and hands the parsed
message on; the servicer uses a message it is given as is. Unscoped keys parse nothing here.
The authenticated principal is bound (``service.access.principal.acting_as``) while the call runs.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.message import Message

from service.access.api_keys import KeyRing
from service.access.principal import Principal, Role, acting_as
from service.config import Settings
from service.errors import (
    ApiKeyInvalid,
    ApiKeyMissing,
    CollectionDenied,
    FacegateError,
    InvalidArgument,
    RoleDenied,
)
from service.observability import audit
from service.observability.audit import AuditEvent, AuditSink
from service.transport.status import status_for

log = logging.getLogger(__name__)

FACEGATE_SERVICE: str = pb.DESCRIPTOR.services_by_name["FaceGate"].full_name
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
RANK: Mapping[Role, int] = {Role.TERMINAL: 0, Role.ENROLLER: 1, Role.ADMIN: 2}

# (request type, raw bytes) -> the parsed request; raises InvalidArgument when malformed.
Parse = Callable[[type[Message], bytes], Any]


@dataclass(frozen=True, slots=True)
class Rule:
    role: Role  # the least role that may call the method
    collection_field: str | None  # the request field naming the collection, if any


RULES: Mapping[str, Rule] = {
    "Identify": Rule(Role.TERMINAL, "collection"),
    "Verify": Rule(Role.TERMINAL, "collection"),
    "Enroll": Rule(Role.ENROLLER, "collection"),
    "DeleteUser": Rule(Role.ENROLLER, "collection"),
    "GetUser": Rule(Role.ENROLLER, "collection"),
    "ListUsers": Rule(Role.ENROLLER, "collection"),
    "CreateCollection": Rule(Role.ADMIN, "name"),
    "UpdateCollection": Rule(Role.ADMIN, "name"),
    "DeleteCollection": Rule(Role.ADMIN, "name"),
    "GetCollection": Rule(Role.ADMIN, "name"),
    "ListCollections": Rule(Role.ADMIN, None),  # a scoped key sees only its collections
    "ImportTemplates": Rule(Role.ADMIN, "collection"),
    # Terminals may see whether liveness is checked and which limits faces must meet.
    "GetServerInfo": Rule(Role.TERMINAL, None),
}
_OTHER_SERVICES = Rule(Role.ADMIN, None)


def presented_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The API key in a call's metadata; ``ApiKeyMissing`` / ``ApiKeyInvalid`` otherwise."""
    found: set[str] = set()
    for raw_name, value in metadata or ():
        name = raw_name.lower()
        if name not in ("authorization", "x-api-key"):
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if name == "authorization":
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiKeyInvalid("the authorization metadata must be 'Bearer <key>'")
            text = token
        if text.strip():
            found.add(text.strip())
    if not found:
        raise ApiKeyMissing(
            "this server requires an API key: send 'authorization: Bearer <key>' or "
            "'x-api-key: <key>' metadata"
        )
    if len(found) > 1:
        raise ApiKeyInvalid("the call carries two different API keys")
    return found.pop()


def check_role(principal: Principal, method: str, rule: Rule) -> None:
    if RANK[principal.role] < RANK[rule.role]:
        raise RoleDenied(
            f"key {principal.key_id!r} (role {principal.role.value}) may not call {method};"
            f" it needs role {rule.role.value} or above",
            metadata={
                "key_id": principal.key_id,
                "role": principal.role.value,
                "required_role": rule.role.value,
                "method": method,
            },
        )


def check_collection(principal: Principal, method: str, collection: str) -> None:
    if not principal.may_use(collection):
        raise CollectionDenied(
            f"key {principal.key_id!r} may not use collection {collection!r}",
            metadata={"key_id": principal.key_id, "collection": collection, "method": method},
        )


if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


def _request_types() -> dict[str, type[Message]]:
    service = pb.DESCRIPTOR.services_by_name["FaceGate"]
    return {m.name: getattr(pb, m.input_type.name) for m in service.methods}


class AuthInterceptor(_Interceptor):
    """Authenticates every call against a ``KeyRing`` and enforces ``RULES``."""

    def __init__(self, keys: KeyRing, parse: Parse, audit_sink: AuditSink | None = None) -> None:
        self._keys = keys
        self._parse = parse
        self._audit = audit_sink  # records each refused call (they never reach the engine)
        self._types = _request_types()
        missing = set(self._types) ^ set(RULES)
        if missing:  # a new RPC in the proto must get an access rule here
            raise RuntimeError(f"FaceGate methods without an access rule: {sorted(missing)}")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        if service == FACEGATE_SERVICE and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard(method, RULES[method], handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return _rewrap(handler, lambda behaviour: self._guard(method, _OTHER_SERVICES, behaviour))

    def _authorise(
        self, method: str, rule: Rule, request: Any, context: Any, seen: _Seen
    ) -> tuple[Any, Any]:
        """(principal, request): the request parsed here when the scope check needed it.
        ``seen`` learns the principal and collection as they become known (for the audit)."""
        principal = self._keys.authenticate(presented_key(context.invocation_metadata()))
        seen.principal = principal
        check_role(principal, method, rule)
        if principal.collections is not None and rule.collection_field is not None:
            if isinstance(request, bytes):
                request = self._parse(self._types[method], request)
            seen.collection = getattr(request, rule.collection_field)
            check_collection(principal, method, seen.collection)
        return principal, request

    def _guard(self, method: str, rule: Rule, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            seen = _Seen()
            try:
                principal, request = self._authorise(method, rule, request, context, seen)
            except FacegateError as exc:
                log.info("refused %s from %s: %s", method, context.peer(), exc.message)
                self._record_refusal(method, exc, context.peer(), seen)
                context.abort_with_status(status_for(exc))
            with acting_as(principal):
                response = behaviour(request, context)
            if method == "ListCollections" and principal.collections is not None:
                visible = [c for c in response.collections if principal.may_use(c.name)]
                del response.collections[:]
                response.collections.extend(visible)
            return response

        guarded.__name__ = method
        return guarded

    def _record_refusal(self, method: str, exc: FacegateError, peer: str, seen: _Seen) -> None:
        if self._audit is None:
            return
        principal = seen.principal
        event = AuditEvent(
            time=time.time(),
            action=audit_action(method),
            outcome=audit.REFUSED,
            key_id=principal.key_id if principal is not None else UNKNOWN_CALLER,
            role=principal.role.value if principal is not None else UNKNOWN_CALLER,
            collection=seen.collection,
            reason=exc.reason,
            peer=peer,
        )
        try:
            self._audit.write(event)
        except Exception:  # the refusal stands; a logging fault must not change it
            log.exception("audit: could not record the refused %s (%s)", method, event.id)


@dataclass(slots=True)
class _Seen:
    """What a refused call revealed before it was refused."""

    principal: Principal | None = None
    collection: str | None = None


UNKNOWN_CALLER = "-"  # key id and role of a call whose key was missing or matched none


def audit_action(method: str) -> str:
    """The audit action of an RPC: ``DeleteUser`` -> ``delete_user`` (the engine's names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method.rpartition("/")[2]).lower()


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behaviour wrapped (for services other than FaceGate; a
    streaming behaviour is checked before it starts, its principal bound only while it is
    created)."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for behaviour, make in kinds:
        if behaviour is not None:
            return make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


# ---------------------------------------------------------------- startup


def is_loopback(address: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost, unix:."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host, sep, _ = address.rpartition(":")
    if not sep:
        host = address
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, or "" (every interface)
        return False


def build_auth(
    settings: Settings,
    address: str,
    parse: Parse,
    *,
    tls_enabled: bool,
    audit_sink: AuditSink | None = None,
) -> AuthInterceptor | None:
    """The interceptor for ``settings.auth`` (None without a keys file), after refusing or
    loudly warning about an exposed server without keys."""
    auth = settings.auth
    local = is_loopback(address)
    if auth.keys_file is None:
        if local:
            log.warning(
                "AUTHENTICATION IS OFF: no auth.keys_file, so every caller that can reach %s "
                "acts as admin. Fine for a local test; create keys with `facegate keys create` "
                "and set auth.keys_file before serving terminals.",
                address,
            )
        elif auth.allow_unauthenticated:
            log.warning(
                "AUTHENTICATION IS OFF on %s, which other machines can reach: every caller "
                "acts as admin (waived by auth.allow_unauthenticated = true).",
                address,
            )
        else:
            raise InvalidArgument(
                f"refusing to listen on {address} without API keys: every caller on the "
                "network would act as admin. Set auth.keys_file (create keys with `facegate "
                "keys create`), listen on 127.0.0.1, or waive this with "
                "auth.allow_unauthenticated = true (FACEGATE_AUTH_ALLOW_UNAUTHENTICATED=1).",
                metadata={"setting": "auth.keys_file", "listen": address},
            )
        return None
    keys = KeyRing(auth.keys_file, reload_s=auth.reload_s)
    log.info("API keys required: %d key(s) from %s", len(keys.entries), auth.keys_file)
    if not local and not tls_enabled:
        log.warning(
            "API keys travel in plaintext on %s: configure [tls] so they cannot be sniffed.",
            address,
        )
    return AuthInterceptor(keys, parse, audit_sink)
