"""The gRPC server: a thin servicer over the engine, plus health, reflection and limits.

``create_server`` builds a server (not started) and returns it with its bound port;
``serve`` runs one until SIGTERM/SIGINT. The engine loads in a background thread once the
server starts, because loading a model pack takes seconds: until then the health service
answers NOT_SERVING and FaceGate RPCs fail with UNAVAILABLE / reason NOT_READY.

The servicer takes raw request bytes and parses them itself, so a malformed message (bad
UTF-8, truncated bytes) is INVALID_ARGUMENT with a reason, not gRPC's opaque INTERNAL
"exception deserializing request". Conversion lives in ``service.transport.convert`` and every error
is mapped by ``service.transport.status``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.app import Loader, ServiceHost
from service.cancellation import call_scope
from service.config import Settings
from service.errors import DeadlineExceeded, InvalidArgument, ServiceNotReady
from service.ports import FaceServicePort
from service.transport import convert
from service.transport.auth import build_auth
from service.transport.rpc_metrics import RpcMetricsInterceptor
from service.transport.status import is_expected, status_for
from service.transport.tls import server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["FaceGate"].full_name
DEFAULT_GRACE_S = 10.0
# gRPC reports "no deadline" as a remaining time of decades; treat anything this long as none.
_NO_DEADLINE_S = 1e7

# One RPC's work: (engine, parsed request, monotonic deadline or None) -> response message.
_Handler = Callable[[FaceServicePort, Any, float | None], Any]


class _Servicer:
    """The FaceGate RPCs: parse, convert, call the engine, convert back; nothing more."""

    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        table: dict[str, tuple[type[Message], _Handler]] = {
            "CreateCollection": (pb.CreateCollectionRequest, _create_collection),
            "UpdateCollection": (pb.UpdateCollectionRequest, _update_collection),
            "DeleteCollection": (pb.DeleteCollectionRequest, _delete_collection),
            "GetCollection": (pb.GetCollectionRequest, _get_collection),
            "ListCollections": (pb.ListCollectionsRequest, _list_collections),
            "Enroll": (pb.EnrollRequest, _enroll),
            "Identify": (pb.IdentifyRequest, _identify),
            "Verify": (pb.VerifyRequest, _verify),
            "DeleteUser": (pb.DeleteUserRequest, _delete_user),
            "GetUser": (pb.GetUserRequest, _get_user),
            "ListUsers": (pb.ListUsersRequest, _list_users),
            "ImportTemplates": (pb.ImportTemplatesRequest, _import_templates),
            "GetServerInfo": (pb.GetServerInfoRequest, _get_server_info),
        }
        methods = set(pb.DESCRIPTOR.services_by_name["FaceGate"].methods_by_name)
        if methods != set(table):  # a new RPC in the proto must get a handler here
            raise RuntimeError(f"unhandled FaceGate methods: {sorted(methods ^ set(table))}")
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._behaviour(name, request_type, handler),
                    request_deserializer=None,  # raw bytes: parsed in _behaviour
                    response_serializer=_serialize,
                )
                for name, (request_type, handler) in table.items()
            },
        )

    def _behaviour(
        self, method: str, request_type: type[Message], handler: _Handler
    ) -> Callable[[bytes | Message, grpc.ServicerContext], Message]:
        def behaviour(raw: bytes | Message, context: grpc.ServicerContext) -> Message:
            try:
                # The auth interceptor hands on a message it already parsed (scope check).
                request = raw if isinstance(raw, Message) else _parse(request_type, raw)
                service = self._host.engine()
                deadline = _deadline(context)
                # The engine checks this between stages: a call its client abandoned stops
                # there and gives its max_concurrent_rpcs slot back (service.cancellation).
                with call_scope(context.is_active):
                    response: Message = handler(service, request, deadline)
                return response
            except Exception as exc:
                if not is_expected(exc):
                    log.exception("unexpected error in %s", method)
                elif isinstance(exc, ServiceNotReady):
                    log.debug("%s refused: %s", method, exc)
                status = status_for(exc)
            context.abort_with_status(status)

        behaviour.__name__ = method
        return behaviour


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _parse(request_type: type[Message], raw: bytes) -> Any:
    try:
        return request_type.FromString(raw)
    except (DecodeError, ValueError) as exc:
        raise InvalidArgument(
            f"malformed {request_type.DESCRIPTOR.name}: {exc}", metadata={"field": "(message)"}
        ) from exc


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a monotonic instant, for the engine to stop work at."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    if remaining <= 0 or not context.is_active():
        raise DeadlineExceeded("the call's deadline passed before work started")
    return time.monotonic() + remaining


# ---------------------------------------------------------------- one function per RPC


def _create_collection(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    return convert.collection_info_to_proto(
        svc.create_collection(convert.collection_spec_from_proto(msg))
    )


def _update_collection(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    change = convert.collection_update_from_proto(msg)
    return convert.collection_info_to_proto(svc.update_collection(change))


def _delete_collection(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    svc.delete_collection(convert.delete_collection_request_from_proto(msg))
    return convert.delete_collection_response_to_proto()


def _get_collection(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    name = convert.get_collection_request_from_proto(msg)
    return convert.collection_info_to_proto(svc.get_collection(name))


def _list_collections(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    convert.list_collections_request_from_proto(msg)
    return convert.list_collections_response_to_proto(svc.list_collections())


def _enroll(svc: FaceServicePort, msg: Any, deadline: float | None) -> Any:
    req = convert.enroll_request_from_proto(msg)
    return convert.enroll_result_to_proto(svc.enroll(req, deadline=deadline))


def _identify(svc: FaceServicePort, msg: Any, deadline: float | None) -> Any:
    req = convert.identify_request_from_proto(msg)
    return convert.identify_result_to_proto(svc.identify(req, deadline=deadline))


def _verify(svc: FaceServicePort, msg: Any, deadline: float | None) -> Any:
    req = convert.verify_request_from_proto(msg)
    return convert.verify_result_to_proto(svc.verify(req, deadline=deadline))


def _delete_user(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    key = convert.delete_user_request_from_proto(msg)
    return convert.delete_user_response_to_proto(svc.delete_user(key.collection, key.uid))


def _get_user(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    key = convert.get_user_request_from_proto(msg)
    return convert.user_info_to_proto(svc.get_user(key.collection, key.uid))


def _list_users(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    req = convert.list_users_request_from_proto(msg)
    page = svc.list_users(req.collection, page_size=req.page_size, page_token=req.page_token)
    return convert.user_page_to_proto(page)


def _import_templates(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    req = convert.import_templates_request_from_proto(msg)
    return convert.import_templates_response_to_proto(svc.import_templates(req))


def _get_server_info(svc: FaceServicePort, msg: Any, _: float | None) -> Any:
    convert.get_server_info_request_from_proto(msg)
    return convert.server_info_to_proto(svc.server_info())


# ---------------------------------------------------------------- the server


class FaceGateServer(grpc.Server):
    """A ``grpc.Server`` over a ``service.app.ServiceHost``: ``start()`` starts the host
    (the engine loads in the background) and flips health to SERVING when it is ready;
    ``stop()`` goes NOT_SERVING first, lets in-flight RPCs finish within the grace period,
    then closes the host (engine, metrics endpoint, audit log)."""

    def __init__(
        self, server: grpc.Server, host: ServiceHost, health_servicer: health.HealthServicer
    ) -> None:
        self._server = server
        self._host = host
        self._health = health_servicer
        self._stop_lock = threading.Lock()
        self._terminated: threading.Event | None = None

    # grpc.Server interface
    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()
        self._host.start(on_ready=self.set_serving)

    def stop(self, grace: float | None = None) -> threading.Event:
        with self._stop_lock:
            if self._terminated is not None:
                return self._terminated
            self._terminated = terminated = threading.Event()
        self._health.enter_graceful_shutdown()
        stopped = self._server.stop(grace)

        def close_host() -> None:
            stopped.wait()
            try:
                self._host.close()
            finally:
                terminated.set()

        threading.Thread(target=close_host, name="facegate-shutdown", daemon=True).start()
        return terminated

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until ``stop()`` has finished (engine closed); True if it timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._stop_lock:
                terminated = self._terminated
            if terminated is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return not terminated.wait(left)
            if deadline is not None and time.monotonic() >= deadline:
                return True
            self._server.wait_for_termination(0.2)

    # facegate extras
    @property
    def metrics_port(self) -> int | None:
        """The Prometheus endpoint's port, once listening."""
        return self._host.metrics_port

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the engine is loaded; False on timeout or if loading failed."""
        return self._host.wait_ready(timeout)

    @property
    def load_error(self) -> BaseException | None:
        return self._host.load_error

    def set_serving(self) -> None:
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)


def warn_without_liveness(settings: Settings) -> None:
    """Say loudly at start when no PAD model is configured: no face is checked for
    liveness, whatever a collection's kind (GetServerInfo says so too)."""
    if settings.liveness.model_dir is None:
        log.warning(
            "LIVENESS IS OFF: no [liveness] model_dir, so no face is checked for presentation "
            "attacks (photos, screens), not even in pay collections. Set liveness.model_dir "
            "to a directory with MiniFASNetV2.onnx and MiniFASNetV1SE.onnx "
            "(FACEGATE_LIVENESS_MODEL_DIR). GetServerInfo reports liveness.configured=false."
        )


def _address(listen: str, port: int | None) -> str:
    if port is None:
        return listen
    host, sep, _ = listen.rpartition(":")
    if not sep:
        raise InvalidArgument(f"listen address {listen!r} has no port")
    return f"{host}:{port}"


def create_server(
    settings: Settings,
    *,
    service: FaceServicePort | None = None,
    loader: Loader | None = None,
    port: int | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
) -> tuple[FaceGateServer, int]:
    """Build (not start) a server listening on ``settings.listen`` (``port`` overrides the
    port; 0 picks a free one) and return it with the bound port.

    ``[tls]`` settings make it a TLS (or mTLS) port; ``[auth]`` settings add the API-key
    interceptor (``service.transport.auth``) after ``interceptors``. Without keys, a loopback
    address logs a loud warning and any other address is refused (``InvalidArgument``) unless
    ``auth.allow_unauthenticated`` waives it.

    The engine is ``service`` when given (ready at once), else what ``loader`` returns, by
    default ``service.app.build_served_service(settings)`` (timed and audited); loading
    runs after ``start()``. Unless ``[metrics] listen`` is empty, RPCs are counted and timed
    and the Prometheus endpoint listens there (``server.metrics_port``).
    """
    host = ServiceHost(settings, service=service, loader=loader)
    metrics, audit_log = host.metrics, host.audit_log
    if metrics is not None:  # first: it also counts calls later interceptors refuse
        interceptors = [RpcMetricsInterceptor(metrics), *interceptors]

    address = _address(settings.listen, port)
    warn_without_liveness(settings)
    credentials = server_credentials(settings.tls)  # checks the files before binding
    auth = build_auth(
        settings, address, _parse, tls_enabled=credentials is not None, audit_sink=audit_log
    )
    if auth is not None:  # innermost, so outer interceptors (metrics) see refusals too
        interceptors = [*interceptors, auth]

    limit = settings.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.worker_threads, thread_name_prefix="facegate-rpc"
        ),
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # one server per port: a second process must fail to bind, not share the port
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((_Servicer(host).handlers(),))

    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    wrapper = FaceGateServer(server, host, health_servicer)
    if service is not None:
        host.start(on_ready=wrapper.set_serving)  # ready at once: SERVING before start()

    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc raises on bind failure in recent versions
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    host.serve_metrics()
    return wrapper, bound


def serve(settings: Settings, *, grace_s: float = DEFAULT_GRACE_S) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully (health NOT_SERVING first, in-flight
    RPCs get ``grace_s`` seconds, then the engine is closed). Raises the loader's error if
    the engine cannot be loaded."""
    server, port = create_server(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        log.info("facegate listening on %s", _address(settings.listen, port))
        if server.metrics_port is not None:
            log.info(
                "metrics on http://%s/metrics",
                _address(settings.metrics.listen, server.metrics_port),
            )
        while not stop.wait(0.2):
            if server.load_error is not None:
                break
    finally:
        server.stop(grace_s).wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    error = server.load_error
    if error is not None:
        raise error
    log.info("facegate stopped")
