"""facegate's exception tree, free of any transport.

Every error a caller can cause or observe is one of these; the gRPC layer maps them to
status codes in exactly one place (``service.transport.status``) and attaches ``reason`` and
``metadata`` as a ``google.rpc.ErrorInfo``. "No match" is a result, never an error.

    FacegateError
    ├── InvalidInput                     INVALID_ARGUMENT
    │   ├── InvalidArgument              reason INVALID_ARGUMENT
    │   ├── ImageUndecodable             reason IMAGE_UNDECODABLE
    │   └── ImageTooLarge                reason IMAGE_TOO_LARGE
    ├── FaceRejected                     FAILED_PRECONDITION (the photo is the problem)
    │   ├── NoFace                       reason NO_FACE
    │   ├── MultipleFaces                reason MULTIPLE_FACES
    │   ├── LowQuality                   reason LOW_QUALITY
    │   └── LivenessFailed               reason LIVENESS_FAILED
    ├── NotFound                         NOT_FOUND
    │   ├── UnknownCollection            reason UNKNOWN_COLLECTION
    │   └── UnknownUser                  reason UNKNOWN_USER
    ├── Conflict                         ALREADY_EXISTS / FAILED_PRECONDITION
    │   ├── CollectionExists             reason COLLECTION_EXISTS
    │   ├── DuplicateFace                reason DUPLICATE_FACE
    │   ├── UserExists                   reason USER_EXISTS
    │   └── ModelMismatch                reason MODEL_MISMATCH
    ├── ProbeTokenInvalid                reason PROBE_TOKEN_INVALID (expired/unknown)
    ├── Overloaded                       RESOURCE_EXHAUSTED, reason OVERLOADED
    ├── CallCancelled                    CANCELLED (the caller abandoned the call)
    ├── ModelPackError                   FAILED_PRECONDITION, reason MODEL_PACK_INVALID
    ├── DataKeyError                     FAILED_PRECONDITION, reason DATA_KEY_INVALID
    ├── TemplateUnreadable               DATA_LOSS, reason TEMPLATE_UNREADABLE
    ├── Unauthenticated                  UNAUTHENTICATED (who is calling is unknown)
    │   ├── ApiKeyMissing                reason API_KEY_MISSING
    │   └── ApiKeyInvalid                reason API_KEY_INVALID
    └── PermissionDenied                 PERMISSION_DENIED (known caller, not allowed)
        ├── RoleDenied                   reason ROLE_DENIED (the key's role cannot call it)
        └── CollectionDenied             reason COLLECTION_DENIED (outside the key's scope)
"""

from __future__ import annotations

from collections.abc import Mapping


class FacegateError(Exception):
    """Base of every error facegate raises on purpose."""

    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Machine-readable details (which check failed, by how much); strings only, because
        # they travel as google.rpc.ErrorInfo metadata.
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}


class InvalidInput(FacegateError):
    reason = "INVALID_ARGUMENT"


class InvalidArgument(InvalidInput):
    reason = "INVALID_ARGUMENT"


class ImageUndecodable(InvalidInput):
    reason = "IMAGE_UNDECODABLE"


class ImageTooLarge(InvalidInput):
    reason = "IMAGE_TOO_LARGE"


class FaceRejected(FacegateError):
    reason = "FACE_REJECTED"


class NoFace(FaceRejected):
    reason = "NO_FACE"


class MultipleFaces(FaceRejected):
    reason = "MULTIPLE_FACES"


class LowQuality(FaceRejected):
    reason = "LOW_QUALITY"


class LivenessFailed(FaceRejected):
    reason = "LIVENESS_FAILED"


class NotFound(FacegateError):
    reason = "NOT_FOUND"


class UnknownCollection(NotFound):
    reason = "UNKNOWN_COLLECTION"


class UnknownUser(NotFound):
    reason = "UNKNOWN_USER"


class Conflict(FacegateError):
    reason = "CONFLICT"


class CollectionExists(Conflict):
    reason = "COLLECTION_EXISTS"


class DuplicateFace(Conflict):
    reason = "DUPLICATE_FACE"


class UserExists(Conflict):
    """A template import named a uid that is already enrolled (imports never overwrite)."""

    reason = "USER_EXISTS"


class ModelMismatch(Conflict):
    reason = "MODEL_MISMATCH"


class ProbeTokenInvalid(FacegateError):
    reason = "PROBE_TOKEN_INVALID"


class Overloaded(FacegateError):
    reason = "OVERLOADED"


class CallCancelled(FacegateError):
    """The caller cancelled the call or went away; the work stopped before it completed."""

    reason = "CANCELLED"


class ModelPackError(FacegateError):
    reason = "MODEL_PACK_INVALID"


class Unauthenticated(FacegateError):
    reason = "UNAUTHENTICATED"


class ApiKeyMissing(Unauthenticated):
    reason = "API_KEY_MISSING"


class ApiKeyInvalid(Unauthenticated):
    """Unknown, revoked or malformed key (the message never says which, nor echoes it)."""

    reason = "API_KEY_INVALID"


class PermissionDenied(FacegateError):
    reason = "PERMISSION_DENIED"


class RoleDenied(PermissionDenied):
    reason = "ROLE_DENIED"


class CollectionDenied(PermissionDenied):
    reason = "COLLECTION_DENIED"


class DataKeyError(FacegateError):
    """A template/snapshot encryption key is missing, unreadable or not the one the data
    was sealed with (raised at start-up and by the key commands)."""

    reason = "DATA_KEY_INVALID"


class TemplateUnreadable(FacegateError):
    """A stored template failed authenticated decryption: the row was altered, or swapped
    with another row (its face id, collection, uid and model are bound to the ciphertext)."""

    reason = "TEMPLATE_UNREADABLE"


class ServiceNotReady(FacegateError):
    """The server is up but its engine (the model pack) is not loaded yet, or failed to."""

    reason = "NOT_READY"


class DeadlineExceeded(FacegateError):
    """The call's deadline passed (the engine itself signals this with ``TimeoutError``)."""

    reason = "DEADLINE_EXCEEDED"
