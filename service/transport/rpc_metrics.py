"""The gRPC side of the metrics: an interceptor that counts and times every call into
``service.observability.metrics.ServiceMetrics`` (which knows nothing of gRPC). Installed
first, it also sees the calls later interceptors (auth) refuse."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from service.observability.metrics import ServiceMetrics

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class RpcMetricsInterceptor(_Interceptor):
    """Counts and times every unary-unary RPC by method and final status code."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED) and streams are not counted
        behaviour = handler.unary_unary
        method = handler_call_details.method
        observe = self._metrics.observe_rpc

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = behaviour(request, context)
            except BaseException:
                observe(method, _code(context, grpc.StatusCode.UNKNOWN).name, _since(started))
                raise
            observe(method, _code(context, grpc.StatusCode.OK).name, _since(started))
            return response

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _since(started: float) -> float:
    return time.perf_counter() - started


def _code(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status the handler set (abort sets it before raising), else ``default``."""
    # grpc's ServicerContext.code() (grpcio >= 1.38) is missing from the type stubs.
    get_code = getattr(context, "code", None)
    code = get_code() if callable(get_code) else None
    return code if isinstance(code, grpc.StatusCode) else default
