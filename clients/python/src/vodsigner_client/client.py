"""A thin typed client of vod-signer's SignatureService.

What it adds to the generated stub: refusals as `Refused` with a `Reason`, a deadline on every
attempt, a bearer token, TLS, and retries only where a retry cannot do harm:

- VerifySignature changes nothing: retried on transient failures.
- RevokeSignature has the same effect however often it runs: retried (a retry after a lost
  reply reports `previous_state` REVOKED instead of ISSUED).
- ConsumeSignature is retried only with one idempotency key for all attempts (the caller's, or
  one made up per call), so a retry after a lost reply gets the same success and
  `consumed_at`, never a second use.
- IssueSignature is never retried: each attempt mints a new signature and counts against the
  subject's quotas; a failed issue leaves at most an unused record, and the caller decides.
- CompleteUpload is retried with the same arguments: the server answers a repeat with the same
  `file_id` with the first call's success.
- ConfirmEvents is idempotent: retried. PullEvents is retried too, which is harmless but not
  free: what a lost reply carried stays pending and is handed out again after 30 s.

A retry follows an unknown or transient outcome (STORE_UNAVAILABLE, UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED) or a RATE_LIMITED that carries `google.rpc.RetryInfo` (a quota,
or the server shedding load). It waits for an exponential backoff with jitter and never less
than the RetryInfo delay (`retry_wait`); a wait that would end past the call's budget ends the
call with the refusal at once instead, so the caller sees `retry_after`.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from ._proto import signer_pb2, signer_pb2_grpc
from .errors import VodSignerError, error_from_rpc

T = TypeVar("T")

#: Called before each retry with the RPC name, the attempt that failed (1-based) and its error.
RetryHook = Callable[[str, int, VodSignerError], None]

#: The first retry's backoff in seconds before jitter; doubled per retry up to MAX_BACKOFF.
FIRST_BACKOFF = 0.05
#: The longest backoff before jitter, seconds (jitter adds up to as much again).
MAX_BACKOFF = 1.0


def retry_wait(failed_attempts: int, retry_after: float | None, remaining: float,
               jitter: float) -> float | None:
    """Seconds to wait before the next attempt, after `failed_attempts` failed ones: the
    exponential backoff `d` (FIRST_BACKOFF doubled per retry, at most MAX_BACKOFF) stretched by
    `jitter` in [0, 1) to `d * (1 + jitter)`, and never less than the server's `retry_after`.
    None when that wait would not end within the call's `remaining` budget (seconds)."""
    backoff = min(FIRST_BACKOFF * 2 ** max(0, failed_attempts - 1), MAX_BACKOFF)
    wait = max(backoff * (1 + jitter), retry_after or 0.0)
    return wait if wait < remaining else None


class Client:
    """A connection to vod-signer (one HTTP/2 channel, safe to share between threads).

    `target` is `host:port`. With `tls=True` (or any certificate given) the channel uses TLS:
    `root_certificates` is the PEM CA bundle (None: the system roots), `certificate_chain` and
    `private_key` a client certificate for mTLS, `server_name` overrides the name checked in
    the server certificate. `token` is sent as `authorization: Bearer <token>` on every call.
    `timeout` bounds each attempt in seconds (the server sees it as `grpc-timeout`);
    `attempts` is the most tries a retryable call makes, the first included; `budget` the most
    seconds one call may take, attempts and waits together (None: `timeout * attempts`).
    """

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None,
                 certificate_chain: bytes | None = None, private_key: bytes | None = None,
                 server_name: str | None = None, timeout: float = 2.0, attempts: int = 3,
                 budget: float | None = None, on_retry: RetryHook | None = None,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        options: list[tuple[str, Any]] = list(channel_options)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or root_certificates or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # The generated stub is untyped (its methods are built at run time); the typed surface
        # is this class.
        self._stub: Any = signer_pb2_grpc.SignatureServiceStub(  # type: ignore[no-untyped-call]
            self._channel)
        # Per-call metadata rather than call credentials: those need TLS, and inside a mesh
        # the hop to vod-signer may be plaintext.
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._target = target
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.budget = budget
        self.on_retry = on_retry

    def __repr__(self) -> str:  # never shows the token
        return (f"Client({self._target!r}, token={'<redacted>' if self._metadata else None}, "
                f"timeout={self.timeout}, attempts={self.attempts})")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ RPCs

    def issue(self, subject: str, *, ttl_seconds: int = 0, secret_id: str = "",
              class_id: int | None = None, procedure: str = "",
              task_priority: int | None = None, task_notify_mode: str = "",
              source_context: str = "", session_context: str = "",
              vod_sub_app_id: int | None = None, storage_region: str = "",
              max_file_size: int | None = None,
              timeout: float | None = None) -> signer_pb2.IssueSignatureResponse:
        """IssueSignature for the end user `subject`; one attempt, never retried."""
        policy = signer_pb2.UploadPolicy(
            procedure=procedure, task_notify_mode=task_notify_mode,
            source_context=source_context, session_context=session_context,
            storage_region=storage_region)
        # proto3 `optional` fields: set only when given, so "absent" stays absent.
        if class_id is not None:
            policy.class_id = class_id
        if task_priority is not None:
            policy.task_priority = task_priority
        if vod_sub_app_id is not None:
            policy.vod_sub_app_id = vod_sub_app_id
        if max_file_size is not None:
            policy.max_file_size = max_file_size
        request = signer_pb2.IssueSignatureRequest(
            secret_id=secret_id, ttl_seconds=ttl_seconds, policy=policy, subject=subject)
        result: signer_pb2.IssueSignatureResponse = self._call(
            "IssueSignature", self._stub.IssueSignature, request, timeout, attempts=1)
        return result

    def verify(self, signature: str, *,
               timeout: float | None = None) -> signer_pb2.VerifySignatureResponse:
        """VerifySignature: the signature's state and claims; read-only, so retried."""
        request = signer_pb2.VerifySignatureRequest(signature=signature)
        result: signer_pb2.VerifySignatureResponse = self._call(
            "VerifySignature", self._stub.VerifySignature, request, timeout)
        return result

    def consume(self, signature: str, *, file_size: int | None = None,
                idempotency_key: str | None = None,
                timeout: float | None = None) -> signer_pb2.ConsumeSignatureResponse:
        """ConsumeSignature with the upload's `file_size`. Every attempt carries the same
        `idempotency_key` (made up here when None), so a retry after a lost reply gets the
        same success and `consumed_at`. Pass your own key (e.g. the upload's request id) to
        keep that guarantee across your own retries too."""
        key = idempotency_key if idempotency_key else f"py-{secrets.token_hex(16)}"
        request = signer_pb2.ConsumeSignatureRequest(signature=signature, idempotency_key=key)
        if file_size is not None:
            request.file_size = file_size
        result: signer_pb2.ConsumeSignatureResponse = self._call(
            "ConsumeSignature", self._stub.ConsumeSignature, request, timeout)
        return result

    def revoke(self, signature: str, *,
               timeout: float | None = None) -> signer_pb2.RevokeSignatureResponse:
        """RevokeSignature; idempotent in effect, so retried."""
        request = signer_pb2.RevokeSignatureRequest(signature=signature)
        result: signer_pb2.RevokeSignatureResponse = self._call(
            "RevokeSignature", self._stub.RevokeSignature, request, timeout)
        return result

    def list_signatures(self, subject: str, *,
                        states: Sequence[signer_pb2.SignatureState] = (),
                        page_size: int = 0, page_token: str = "",
                        timeout: float | None = None) -> signer_pb2.ListSignaturesResponse:
        """ListSignatures: one page of the subject's signatures, newest first (`states`
        empty: ISSUED only); read-only, so retried."""
        request = signer_pb2.ListSignaturesRequest(
            subject=subject, states=list(states), page_size=page_size, page_token=page_token)
        result: signer_pb2.ListSignaturesResponse = self._call(
            "ListSignatures", self._stub.ListSignatures, request, timeout)
        return result

    def revoke_subject(self, subject: str, *,
                       timeout: float | None = None) -> signer_pb2.RevokeSubjectResponse:
        """RevokeSubject: revokes every ISSUED signature of `subject`; idempotent in effect,
        so retried (a retry's `revoked` counts only what it revoked itself)."""
        request = signer_pb2.RevokeSubjectRequest(subject=subject)
        result: signer_pb2.RevokeSubjectResponse = self._call(
            "RevokeSubject", self._stub.RevokeSubject, request, timeout)
        return result

    def complete_upload(self, signature: str, file_id: str, *, file_size: int,
                        media_url: str = "", media_type: str = "",
                        timeout: float | None = None) -> signer_pb2.CompleteUploadResponse:
        """CompleteUpload, the gateway's call once the upload's file is stored (role
        consumer): CONSUMED becomes COMPLETED and the app server's notification is queued.
        Retried with the same arguments: a repeat with the same `file_id` gets the first
        call's success (`completed_at`); another `file_id` is refused
        UPLOAD_ALREADY_COMPLETED. `late` says it came after the upload was marked ABANDONED."""
        request = signer_pb2.CompleteUploadRequest(
            signature=signature, file_id=file_id, file_size=file_size, media_url=media_url,
            media_type=media_type)
        result: signer_pb2.CompleteUploadResponse = self._call(
            "CompleteUpload", self._stub.CompleteUpload, request, timeout)
        return result

    def pull_events(self, *, max_events: int = 0, wait_seconds: int = 0,
                    timeout: float | None = None) -> list[signer_pb2.Notification]:
        """PullEvents (`--notify-mode pull`; roles issuer, admin): up to `max_events` (0: 16)
        notifications, the server waiting up to `wait_seconds` (at most 5) for a first one;
        each attempt's deadline is `timeout` plus that wait. Each notification's `body` is
        what the push would POST (JSON), `webhook_id` its stable id (deduplicate by it);
        confirm it with `confirm_events` once processed, or it is handed out again after
        30 s. Retried on transient failures: harmless, since what a lost reply carried comes
        back after those 30 s."""
        request = signer_pb2.PullEventsRequest(max=max_events, wait_seconds=wait_seconds)
        deadline = (self.timeout if timeout is None else timeout) + wait_seconds
        result: signer_pb2.PullEventsResponse = self._call(
            "PullEvents", self._stub.PullEvents, request, deadline)
        return list(result.notifications)

    def confirm_events(self, handles: Iterable[str], *,
                       timeout: float | None = None) -> int:
        """ConfirmEvents: the pulled notifications with these handles are processed; answers
        how many were still unconfirmed. Idempotent, so retried (a retry after a lost reply
        answers 0 for what the first attempt confirmed)."""
        request = signer_pb2.ConfirmEventsRequest(handles=list(handles))
        result: signer_pb2.ConfirmEventsResponse = self._call(
            "ConfirmEvents", self._stub.ConfirmEvents, request, timeout)
        return result.confirmed

    # ------------------------------------------------------------------ plumbing

    def _call(self, name: str, method: Callable[..., T], request: object,
              timeout: float | None, attempts: int | None = None) -> T:
        attempts = self.attempts if attempts is None else attempts
        deadline = self.timeout if timeout is None else timeout
        budget = deadline * attempts if self.budget is None else self.budget
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return method(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = error_from_rpc(rpc_error)
                if not error.retryable or attempt >= attempts:
                    raise error from None
                wait = retry_wait(attempt, getattr(error, "retry_after", None),
                                  budget - (time.monotonic() - started), random.random())
                if wait is None:
                    raise error from None
                if self.on_retry is not None:
                    self.on_retry(name, attempt, error)
            time.sleep(wait)
            attempt += 1
