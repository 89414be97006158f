"""Python client of vod-signer (SignatureService, package vodsigner.v1).

    from vodsigner_client import Client, Reason, Refused
"""

from ._proto import signer_pb2 as pb
from .client import Client, RetryHook
from .errors import DOMAIN, CallFailed, Reason, Refused, VodSignerError, error_from_rpc

#: SignatureState values (pb.ISSUED, pb.CONSUMED, ...), as in the proto.
SignatureState = pb.SignatureState

__all__ = [
    "DOMAIN", "CallFailed", "Client", "Reason", "Refused", "RetryHook", "SignatureState",
    "VodSignerError", "error_from_rpc", "pb",
]
