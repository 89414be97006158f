"""Python client of vod-signer (SignatureService, package vodsigner.v1).

    from vodsigner_client import Client, Reason, Refused, verify_webhook
"""

from ._proto import signer_pb2 as pb
from .client import Client, RetryHook, retry_wait
from .errors import DOMAIN, CallFailed, Reason, Refused, VodSignerError, error_from_rpc
from .webhooks import (DEFAULT_TOLERANCE, InvalidTimestamp, MissingHeader, NoMatchingSignature,
                       TimestampOutOfTolerance, WebhookVerificationError, verify_webhook)

#: SignatureState values (pb.ISSUED, pb.CONSUMED, pb.COMPLETED, pb.ABANDONED, ...), as in the
#: proto.
SignatureState = pb.SignatureState

__all__ = [
    "DEFAULT_TOLERANCE", "DOMAIN", "CallFailed", "Client", "InvalidTimestamp", "MissingHeader",
    "NoMatchingSignature", "Reason", "Refused", "RetryHook", "SignatureState",
    "TimestampOutOfTolerance", "VodSignerError", "WebhookVerificationError", "error_from_rpc",
    "pb", "retry_wait", "verify_webhook",
]
