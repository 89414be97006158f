"""Refusal reasons (SPEC section 3) and the exceptions the client raises."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The ErrorInfo domain of vod-signer's refusals.
DOMAIN = "vodsigner"


class Reason(str, enum.Enum):
    """Why vod-signer refused a call: the token that starts the status message and that the
    `google.rpc.ErrorInfo` detail carries."""

    INVALID_REQUEST = "INVALID_REQUEST"
    SIGNATURE_MALFORMED = "SIGNATURE_MALFORMED"
    UNKNOWN_SECRET_ID = "UNKNOWN_SECRET_ID"
    SIGNATURE_MISMATCH = "SIGNATURE_MISMATCH"
    SIGNATURE_EXPIRED = "SIGNATURE_EXPIRED"
    SIGNATURE_NOT_YET_VALID = "SIGNATURE_NOT_YET_VALID"
    SIGNATURE_ALREADY_USED = "SIGNATURE_ALREADY_USED"
    SIGNATURE_REVOKED = "SIGNATURE_REVOKED"
    SIGNATURE_NOT_ISSUED = "SIGNATURE_NOT_ISSUED"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NO_ACTIVE_KEY = "NO_ACTIVE_KEY"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    #: IssueSignature while Redis is within its memory reserve; consume and revoke go on.
    STORE_FULL = "STORE_FULL"
    #: No credential, or one naming no known caller (the server's addition to the SPEC).
    CALLER_UNAUTHENTICATED = "CALLER_UNAUTHENTICATED"
    #: A token this client does not know yet (a newer server); `Refused.token` has it.
    UNRECOGNIZED = "UNRECOGNIZED"


class VodSignerError(Exception):
    """A call that did not succeed."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        #: The gRPC status code.
        self.code = code
        #: The server's message (or the transport's).
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the outcome is unknown or transient, so the same call may succeed later
        (a consume only with the same idempotency key)."""
        return False


class Refused(VodSignerError):
    """vod-signer refused the call with a reason (its ErrorInfo, domain `vodsigner`)."""

    def __init__(self, code: grpc.StatusCode, message: str, token: str,
                 metadata: Mapping[str, str], retry_after: float | None) -> None:
        super().__init__(code, message)
        #: The raw reason token, e.g. "SIGNATURE_ALREADY_USED".
        self.token = token
        #: The reason as an enum (UNRECOGNIZED for a token newer than this client).
        self.reason = Reason.__members__.get(token, Reason.UNRECOGNIZED)
        #: ErrorInfo metadata, e.g. {"quota": "outstanding"} on RATE_LIMITED.
        self.metadata = dict(metadata)
        #: Seconds after which a retry may succeed (RetryInfo, sent with quota refusals).
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.reason is Reason.STORE_UNAVAILABLE


class CallFailed(VodSignerError):
    """No answer with a reason: transport failure, deadline, or a status without ErrorInfo."""

    @property
    def retryable(self) -> bool:
        # The server ends a call past its deadline with CANCELLED ("Timeout expired"), not
        # DEADLINE_EXCEEDED: its outcome is just as unknown (as in the Rust client).
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.CANCELLED)


def error_from_rpc(error: grpc.RpcError) -> VodSignerError:
    """Types a failed call: `Refused` when its `grpc-status-details-bin` trailer holds a
    `google.rpc.ErrorInfo` of domain `vodsigner`, else `CallFailed`."""
    call: Any = error  # the RpcError raised by a unary call is also a grpc.Call
    code: grpc.StatusCode = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message: str = (call.details() if hasattr(call, "details") else None) or str(error)
    trailers: Sequence[tuple[str, str | bytes]] = (
        (call.trailing_metadata() if hasattr(call, "trailing_metadata") else None) or ())
    for key, value in trailers:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # a malformed trailer is not a refusal
            break
        info: error_details_pb2.ErrorInfo | None = None
        retry_after = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                candidate = error_details_pb2.ErrorInfo()
                detail.Unpack(candidate)
                if candidate.domain == DOMAIN and info is None:
                    info = candidate
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        if info is not None:
            return Refused(code, message, info.reason, info.metadata, retry_after)
    return CallFailed(code, message)
