"""The one place where facegate's exceptions meet gRPC status codes, both ways.

Server side, ``status_for(exc)`` turns an exception into a ``grpc.Status`` whose details
carry a ``google.rpc.ErrorInfo(reason, domain="facegate", metadata)``:

    InvalidInput (InvalidArgument, ImageUndecodable, ImageTooLarge)   INVALID_ARGUMENT
    FaceRejected (NoFace, MultipleFaces, LowQuality, LivenessFailed)  FAILED_PRECONDITION
    NotFound (UnknownCollection, UnknownUser)                         NOT_FOUND
    CollectionExists, DuplicateFace, UserExists                       ALREADY_EXISTS
    ModelMismatch, other Conflict                                     FAILED_PRECONDITION
    ProbeTokenInvalid                                                 FAILED_PRECONDITION
    Overloaded                                                        RESOURCE_EXHAUSTED
    CallCancelled (the caller abandoned the call)                     CANCELLED
    ModelPackError                                                    FAILED_PRECONDITION
    Unauthenticated (ApiKeyMissing, ApiKeyInvalid)                    UNAUTHENTICATED
    PermissionDenied (RoleDenied, CollectionDenied)                   PERMISSION_DENIED
    DataKeyError                                                      FAILED_PRECONDITION
    TemplateUnreadable (an altered or swapped stored row)             DATA_LOSS
    ServiceNotReady (models still loading)                            UNAVAILABLE
    DeadlineExceeded, builtin TimeoutError                            DEADLINE_EXCEEDED
    any other FacegateError                                           INTERNAL (its message)
    anything else                                                     INTERNAL, generic text

FaceRejected is FAILED_PRECONDITION rather than INVALID_ARGUMENT because the request is
well-formed: it is the photo that does not meet the conditions (one clear, live, large
enough face), and a terminal reacts differently (ask the customer to retake, not fix code).
Unexpected exceptions never leak their text or traceback to the caller; the server logs them.

Client side, ``error_from_rpc(err)`` rebuilds the exact ``service.errors`` subclass from the
ErrorInfo reason (with its metadata), or a ``RemoteError`` carrying the status code and a
reason (the status code's name when the server sent no ErrorInfo, e.g. UNAVAILABLE when
nothing listens, RESOURCE_EXHAUSTED from gRPC's own message-size or concurrency limits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from service import errors

DOMAIN = "facegate"
INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error (details are in the server log)"


class RemoteError(errors.FacegateError):
    """A failed call the client could not map to a known facegate error class."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.code = code
        self.reason = reason


# Most specific first is not needed: lookup walks the exception's MRO.
_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FaceRejected: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.CollectionExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.DuplicateFace: grpc.StatusCode.ALREADY_EXISTS,
    errors.UserExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ProbeTokenInvalid: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CallCancelled: grpc.StatusCode.CANCELLED,
    errors.ModelPackError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DataKeyError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.TemplateUnreadable: grpc.StatusCode.DATA_LOSS,
    errors.ServiceNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.FacegateError: grpc.StatusCode.INTERNAL,
}


def code_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, RemoteError):
        return exc.code
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def is_expected(exc: BaseException) -> bool:
    """True for errors raised on purpose (no traceback needed in the log)."""
    return isinstance(exc, errors.FacegateError | TimeoutError)


def status_for(exc: BaseException) -> grpc.Status:
    """The status to abort an RPC with; never includes an unexpected exception's text."""
    code = code_for(exc)
    if isinstance(exc, errors.FacegateError):
        message, reason, metadata = exc.message, exc.reason, exc.metadata
    elif isinstance(exc, TimeoutError):
        message, reason, metadata = "deadline exceeded", errors.DeadlineExceeded.reason, {}
    else:
        message, reason, metadata = INTERNAL_MESSAGE, INTERNAL_REASON, {}
    return make_status(code, message, reason, metadata)


def make_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]
) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata))
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(proto)


# ---------------------------------------------------------------- client side


def error_info(err: grpc.RpcError) -> Any | None:
    """The facegate ErrorInfo attached to a failed call, or None."""
    if not isinstance(err, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # the trailers disagree with the call's own status: ignore them
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info
    return None


def reason_of(err: grpc.RpcError) -> str | None:
    """The machine reason of a failed call (ErrorInfo.reason), or None without one."""
    info = error_info(err)
    return None if info is None else str(info.reason)


# The base class says nothing the code does not; RemoteError's reason is per instance.
_NOT_REBUILT = (errors.FacegateError, RemoteError)


def _known_classes() -> dict[str, type[errors.FacegateError]]:
    """reason -> the most derived class with that reason (InvalidArgument over InvalidInput)."""
    found: dict[str, type[errors.FacegateError]] = {}
    pending: list[type[errors.FacegateError]] = [errors.FacegateError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ not in (errors.__name__, __name__) or cls in _NOT_REBUILT:
            continue
        current = found.get(cls.reason)
        if current is None or issubclass(cls, current):
            found[cls.reason] = cls
    return found


_BY_REASON = _known_classes()


def error_from_rpc(err: grpc.RpcError) -> errors.FacegateError:
    """Rebuild the server's exception from a failed call (raise it ``from err``)."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = (err.details() if isinstance(err, grpc.Call) else None) or str(code.name)
    info = error_info(err)
    if info is None:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # the client's own timeout fired
            return errors.DeadlineExceeded(message)
        return RemoteError(message, code=code, reason=code.name)
    metadata = {str(k): str(v) for k, v in info.metadata.items()}
    cls = _BY_REASON.get(str(info.reason))
    if cls is None or code_for(cls(message)) != code:
        return RemoteError(message, code=code, reason=str(info.reason), metadata=metadata)
    return cls(message, metadata=metadata)
