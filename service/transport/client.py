"""``FaceGateClient``: the Python client of a running facegate server (the CLI uses it).

Methods mirror the engine (``service.ports.FaceServicePort``) and take and return the same
domain objects, so code written against the engine runs against a server unchanged.

Errors: a failed call raises the exact ``service.errors`` class the server raised (rebuilt
from the google.rpc.ErrorInfo reason, with its metadata), e.g. ``NoFace``, ``UnknownUser``;
``ServiceNotReady`` while the server loads its models; ``DeadlineExceeded`` when the call's
timeout passes. Anything else, such as no server listening or gRPC's own limits, raises
``RemoteError`` with ``.code`` (a ``grpc.StatusCode``) and ``.reason`` (the status name
when the server sent no reason). The original ``grpc.RpcError`` is the ``__cause__``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.domain import (
    CollectionInfo,
    CollectionSpec,
    CollectionUpdate,
    EnrollRequest,
    EnrollResult,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
    ServerInfo,
    UserInfo,
    UserPage,
    VerifyRequest,
    VerifyResult,
)
from service.errors import ServiceNotReady
from service.transport import convert
from service.transport.status import error_from_rpc
from service.transport.tls import ClientTls

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["FaceGate"].full_name

_Call = Callable[..., Any]


class FaceGateClient:
    """A connection to one facegate server; use as a context manager or call ``close()``.

    ``timeout`` is the default per-call deadline in seconds (None: no deadline); each method
    takes ``timeout=`` to override it for one call. ``api_key`` is sent with every call as
    ``authorization: Bearer <key>``; ``metadata`` is sent with every call too. ``tls``
    (``service.transport.tls.ClientTls``) makes the channel TLS, with a client certificate for mTLS;
    without it the channel is plaintext.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
        tls: ClientTls | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        # Plain metadata rather than grpc call credentials: those refuse plaintext channels,
        # and the embedded loopback server is plaintext.
        auth = () if api_key is None else (("authorization", f"Bearer {api_key}"),)
        self._metadata = (*auth, *metadata)
        self._owns_channel = channel is None
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if channel is not None:
            self._channel = channel
        elif tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(
                target, tls.credentials(), options=[*options, *tls.channel_options()]
            )
        self._health = health_pb2_grpc.HealthStub(self._channel)
        # Calls are built from the service descriptor: typed, and independent of the grpc
        # version the committed *_pb2_grpc.py stub demands.
        service = pb.DESCRIPTOR.services_by_name["FaceGate"]
        self._calls: dict[str, _Call] = {}
        for method in service.methods:
            response_type: type[Message] = getattr(pb, method.output_type.name)
            self._calls[method.name] = self._channel.unary_unary(
                f"/{service.full_name}/{method.name}",
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def health(self, service: str = SERVICE_NAME, *, timeout: float | None = None) -> str:
        """The server's health status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN, ..."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._timeout(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Block until the server answers SERVING (it is up and its models are loaded).

        Raises ``ServiceNotReady`` if that does not happen within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceNotReady(
                    f"{self.target} not serving after {timeout:g}s (last: {last})",
                    metadata={"target": self.target, "last": last},
                )
            try:
                reply = self._health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                    timeout=min(left, 5.0),
                    metadata=self._metadata,
                    wait_for_ready=True,  # wait for the server to come up, not fail fast
                )
            except grpc.RpcError as err:
                last = err.code().name if isinstance(err, grpc.Call) else "error"
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------------- collections
    def create_collection(
        self, spec: CollectionSpec, *, timeout: float | None = None
    ) -> CollectionInfo:
        reply = self._invoke("CreateCollection", convert.collection_spec_to_proto(spec), timeout)
        return convert.collection_info_from_proto(reply)

    def update_collection(
        self, change: CollectionUpdate, *, timeout: float | None = None
    ) -> CollectionInfo:
        request = convert.collection_update_to_proto(change)
        return convert.collection_info_from_proto(
            self._invoke("UpdateCollection", request, timeout)
        )

    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._invoke("DeleteCollection", convert.delete_collection_request_to_proto(name), timeout)

    def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        reply = self._invoke(
            "GetCollection", convert.get_collection_request_to_proto(name), timeout
        )
        return convert.collection_info_from_proto(reply)

    def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        reply = self._invoke(
            "ListCollections", convert.list_collections_request_to_proto(), timeout
        )
        return list(convert.list_collections_response_from_proto(reply))

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Model pack, liveness (configured or not), default quality limits, version."""
        reply = self._invoke("GetServerInfo", convert.get_server_info_request_to_proto(), timeout)
        return convert.server_info_from_proto(reply)

    # ---------------------------------------------------------------- faces
    def enroll(self, req: EnrollRequest, *, timeout: float | None = None) -> EnrollResult:
        reply = self._invoke("Enroll", convert.enroll_request_to_proto(req), timeout)
        return convert.enroll_result_from_proto(reply)

    def identify(self, req: IdentifyRequest, *, timeout: float | None = None) -> IdentifyResult:
        reply = self._invoke("Identify", convert.identify_request_to_proto(req), timeout)
        return convert.identify_result_from_proto(reply)

    def verify(self, req: VerifyRequest, *, timeout: float | None = None) -> VerifyResult:
        reply = self._invoke("Verify", convert.verify_request_to_proto(req), timeout)
        return convert.verify_result_from_proto(reply)

    # ---------------------------------------------------------------- users
    def delete_user(self, collection: str, uid: str, *, timeout: float | None = None) -> int:
        request = convert.delete_user_request_to_proto(convert.UserKey(collection, uid))
        return convert.delete_user_response_from_proto(self._invoke("DeleteUser", request, timeout))

    def get_user(self, collection: str, uid: str, *, timeout: float | None = None) -> UserInfo:
        request = convert.get_user_request_to_proto(convert.UserKey(collection, uid))
        return convert.user_info_from_proto(self._invoke("GetUser", request, timeout))

    def list_users(
        self,
        collection: str,
        *,
        page_size: int = convert.DEFAULT_PAGE_SIZE,
        page_token: str = "",
        timeout: float | None = None,
    ) -> UserPage:
        request = convert.list_users_request_to_proto(
            convert.UserPageRequest(collection, page_size, page_token)
        )
        return convert.user_page_from_proto(self._invoke("ListUsers", request, timeout))

    def import_templates(
        self,
        collection: str,
        model_id: str,
        uids: Sequence[str],
        embeddings: np.ndarray,
        *,
        phone_numbers: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, str]] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, ...]:
        """Admin: add new users from templates of the collection's model; their face ids."""
        request = convert.import_templates_request_to_proto(
            ImportTemplatesRequest(
                collection=collection,
                model_id=model_id,
                uids=tuple(uids),
                embeddings=np.asarray(embeddings, dtype=np.float32),
                phone_numbers=tuple(phone_numbers) if phone_numbers is not None else None,
                metadata=tuple(metadata) if metadata is not None else None,
            )
        )
        response = self._invoke("ImportTemplates", request, timeout)
        return convert.import_templates_response_from_proto(response)

    def iter_users(
        self, collection: str, *, page_size: int = convert.DEFAULT_PAGE_SIZE
    ) -> Iterator[UserInfo]:
        """Every user of a collection, fetching ``page_size`` at a time."""
        token = ""
        while True:
            page = self.list_users(collection, page_size=page_size, page_token=token)
            yield from page.users
            if not page.next_page_token:
                return
            token = page.next_page_token

    # ---------------------------------------------------------------- plumbing
    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _invoke(self, method: str, request: Message, timeout: float | None) -> Any:
        try:
            return self._calls[method](
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
