"""The upload's end (CompleteUpload, ABANDONED), its notifications (pushed and checked with
verify_webhook, or pulled and confirmed), and how retries wait (RetryInfo, backoff, budget).

The push and pull tests run their own `vod-signer serve` with the notification flags, against
the session's Redis under a key prefix of their own, and a real HTTP receiver for pushes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from harness import TOKENS, Push, Receiver, Redis, Signer, webhook_secret
from vodsigner_client import (Client, InvalidTimestamp, MissingHeader, NoMatchingSignature,
                              Reason, Refused, TimestampOutOfTolerance, VodSignerError, pb,
                              retry_wait, verify_webhook)

TIMEOUT = 10.0
#: Short, so the abandoned upload's push comes within the test.
COMPLETION_WINDOW_SECONDS = 3

# The test vector Standard Webhooks publishes (and Svix's libraries test against).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE}
    headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return headers


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    tag = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(tag).decode()


# ---------------------------------------------------------------- verify_webhook, offline

def test_the_published_test_vector_verifies() -> None:
    near = VECTOR_TIMESTAMP + 10
    payload = verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=near)
    assert payload == {"test": 2432232314}
    # Header names in any case, the body as text, the secret without its prefix, or as the
    # raw key bytes.
    mixed = {"Webhook-Id": VECTOR_ID, "WEBHOOK-TIMESTAMP": str(VECTOR_TIMESTAMP),
             "Webhook-Signature": VECTOR_SIGNATURE}
    assert verify_webhook(mixed, VECTOR_BODY.decode(), VECTOR_SECRET, now=near)
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert verify_webhook(vector_headers(), VECTOR_BODY, bare, now=near)
    assert verify_webhook(vector_headers(), VECTOR_BODY, base64.b64decode(bare), now=near)


@pytest.mark.parametrize("body,headers,secret", [
    (b'{"test": 2432232315}', vector_headers(), VECTOR_SECRET),  # the body
    (VECTOR_BODY + b" ", vector_headers(), VECTOR_SECRET),  # one byte more
    (VECTOR_BODY, vector_headers(webhook_timestamp=str(VECTOR_TIMESTAMP + 1)), VECTOR_SECRET),
    (VECTOR_BODY, vector_headers(webhook_id="msg_other"), VECTOR_SECRET),
    (VECTOR_BODY, vector_headers(), webhook_secret()),  # another secret
    (VECTOR_BODY, vector_headers(webhook_signature="v2," + VECTOR_SIGNATURE[3:]), VECTOR_SECRET),
    (VECTOR_BODY, vector_headers(webhook_signature="v1,not-base64!"), VECTOR_SECRET),
], ids=["body", "trailing-byte", "timestamp", "id", "secret", "version", "garbage"])
def test_anything_tampered_is_refused(body: bytes, headers: dict[str, str], secret: str) -> None:
    with pytest.raises(NoMatchingSignature):
        verify_webhook(headers, body, secret, now=VECTOR_TIMESTAMP)


def test_stale_or_future_timestamps_are_refused() -> None:
    with pytest.raises(TimestampOutOfTolerance) as old:
        verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP + 301)
    assert "more than the 300 s allowed" in str(old.value)
    with pytest.raises(TimestampOutOfTolerance):
        verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP - 301)
    # Within the tolerance, either way; a wider one is the caller's choice.
    verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP + 300)
    verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP - 300)
    verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP + 3000,
                   tolerance=3600)
    # The real clock: the 2021 vector is long stale.
    with pytest.raises(TimestampOutOfTolerance):
        verify_webhook(vector_headers(), VECTOR_BODY, VECTOR_SECRET)
    with pytest.raises(InvalidTimestamp):
        verify_webhook(vector_headers(webhook_timestamp="soon"), VECTOR_BODY, VECTOR_SECRET)


def test_missing_headers_are_named() -> None:
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = vector_headers()
        del headers[name]
        with pytest.raises(MissingHeader) as missing:
            verify_webhook(headers, VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP)
        assert missing.value.header == name


def test_rotation_two_signatures_and_two_secrets() -> None:
    new = webhook_secret()
    both = (sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) + " "
            + sign(new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY))
    assert both.split()[0] == VECTOR_SIGNATURE
    headers = vector_headers(webhook_signature=both)
    # A receiver that knows only the new secret, or only the old one, accepts it.
    verify_webhook(headers, VECTOR_BODY, new, now=VECTOR_TIMESTAMP)
    verify_webhook(headers, VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP)
    # A receiver rotating its own secrets accepts a push signed with either.
    verify_webhook(vector_headers(), VECTOR_BODY, [new, VECTOR_SECRET], now=VECTOR_TIMESTAMP)
    with pytest.raises(NoMatchingSignature):
        verify_webhook(vector_headers(), VECTOR_BODY, [new], now=VECTOR_TIMESTAMP)


def test_malformed_secrets_are_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_webhook(vector_headers(), VECTOR_BODY, "whsec_not base64!", now=VECTOR_TIMESTAMP)
    with pytest.raises(ValueError):
        verify_webhook(vector_headers(), VECTOR_BODY, [], now=VECTOR_TIMESTAMP)


# ---------------------------------------------------------------- retries, offline

def test_retry_wait_is_a_jittered_exponential_backoff() -> None:
    for failed, base in ((1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (6, 1.0), (12, 1.0)):
        assert retry_wait(failed, None, 60, jitter=0.0) == pytest.approx(base)
        assert retry_wait(failed, None, 60, jitter=0.999) == pytest.approx(base * 1.999)


def test_retry_wait_honours_retry_info_within_the_budget() -> None:
    assert retry_wait(1, 0.4, 60, jitter=0.5) == pytest.approx(0.4)
    # A RetryInfo shorter than the backoff does not hurry the retry.
    assert retry_wait(3, 0.01, 60, jitter=0.0) == pytest.approx(0.2)
    # A quota's hour: the refusal now, not a useless wait.
    assert retry_wait(1, 3600, 6, jitter=0.0) is None
    assert retry_wait(1, None, 0.05, jitter=0.0) is None
    assert retry_wait(1, None, 0.051, jitter=0.0) == pytest.approx(0.05)


class RateLimitedError(grpc.RpcError):
    """A RESOURCE_EXHAUSTED status as vod-signer sends it: ErrorInfo RATE_LIMITED, and a
    RetryInfo when `retry_after` is given, in `grpc-status-details-bin`."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__()
        info = error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="vodsigner")
        details = [any_pb2.Any()]
        details[0].Pack(info)
        if retry_after is not None:
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=int(retry_after),
                                                  nanos=int(retry_after % 1 * 1e9)))
            details.append(any_pb2.Any())
            details[1].Pack(retry)
        self._status = status_pb2.Status(code=8, message="RATE_LIMITED: shed",
                                         details=details).SerializeToString()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "RATE_LIMITED: shed"

    def trailing_metadata(self) -> Any:  # pairs, as grpcio gives them (the stubs say otherwise)
        return (("grpc-status-details-bin", self._status),)


class Flaky:
    """An RPC method that raises `errors` one by one, then answers."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    def __call__(self, request: object, **_: Any) -> str:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def test_a_shed_call_waits_its_retry_info_then_retries() -> None:
    with Client("127.0.0.1:1", timeout=1.0, attempts=3) as client:
        seen: list[VodSignerError] = []
        client.on_retry = lambda rpc, attempt, error: seen.append(error)
        method = Flaky(RateLimitedError(0.3))
        assert client._call("VerifySignature", method, None, None) == "answer"
        assert len(method.calls) == 2
        assert method.calls[1] - method.calls[0] >= 0.3
        assert isinstance(seen[0], Refused) and seen[0].retry_after == pytest.approx(0.3)


def test_a_retry_info_past_the_budget_ends_the_call_at_once() -> None:
    with Client("127.0.0.1:1", timeout=1.0, attempts=3) as client:
        method = Flaky(RateLimitedError(3600))
        started = time.monotonic()
        with pytest.raises(Refused) as refused:
            client._call("VerifySignature", method, None, None)
        assert time.monotonic() - started < 0.5
        assert refused.value.reason is Reason.RATE_LIMITED
        assert refused.value.retry_after == 3600 and refused.value.retryable
        assert len(method.calls) == 1


def test_rate_limited_without_retry_info_is_final() -> None:
    with Client("127.0.0.1:1", timeout=1.0, attempts=3) as client:
        method = Flaky(RateLimitedError(None))
        with pytest.raises(Refused) as refused:
            client._call("VerifySignature", method, None, None)
        assert not refused.value.retryable and len(method.calls) == 1


# ---------------------------------------------------------------- against vod-signer

@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def pushing(redis: Redis, receiver: Receiver) -> Iterator[tuple[Signer, str]]:
    """vod-signer pushing to the receiver, signing with a fresh secret."""
    secret = webhook_secret()
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = Path(tmp, "notify-secret")
        secret_file.write_text(f"# rotated by hand\n{secret}\n")
        server = Signer(redis, extra_args=[
            "--key-prefix", "pypush:", "--notify-url", receiver.url,
            "--notify-secret-file", str(secret_file),
            "--completion-window", f"{COMPLETION_WINDOW_SECONDS}s"])
        yield server, secret
        server.stop()
        server.assert_no_secrets(secret)


@pytest.fixture(scope="module")
def pulling(redis: Redis) -> Iterator[Signer]:
    """vod-signer keeping notifications for PullEvents."""
    server = Signer(redis, extra_args=["--key-prefix", "pypull:", "--notify-mode", "pull"])
    yield server
    server.stop()
    server.assert_no_secrets()


def body_of(push: Push) -> Any:
    return json.loads(push.body)


def test_a_completed_upload_is_pushed_signed(pushing: tuple[Signer, str],
                                             receiver: Receiver) -> None:
    signer, secret = pushing
    with Client(signer.target, token=TOKENS["app"], timeout=TIMEOUT) as app, \
            Client(signer.target, token=TOKENS["gateway"], timeout=TIMEOUT) as gateway:
        sig = app.issue("user-60", source_context="user-60/upload-1",
                        max_file_size=1 << 20).signature
        with pytest.raises(Refused) as early:
            gateway.complete_upload(sig, "file-60", file_size=1000)
        assert early.value.reason is Reason.SIGNATURE_NOT_CONSUMED
        assert early.value.code == grpc.StatusCode.FAILED_PRECONDITION
        gateway.consume(sig, file_size=1000, idempotency_key="upload-60")
        done = gateway.complete_upload(sig, "file-60", file_size=1000,
                                       media_url="https://media.example/file-60.mp4",
                                       media_type="mp4")
        assert done.claims.random and done.completed_at > 0
        # Safe to retry: the same arguments, the same success.
        again = gateway.complete_upload(sig, "file-60", file_size=1000,
                                        media_url="https://media.example/file-60.mp4",
                                        media_type="mp4")
        assert again.completed_at == done.completed_at
        with pytest.raises(Refused) as other:
            gateway.complete_upload(sig, "file-61", file_size=1000)
        assert other.value.reason is Reason.UPLOAD_ALREADY_COMPLETED
        assert not other.value.retryable
        assert app.verify(sig).state == pb.COMPLETED

    push = receiver.wait_for(
        lambda p: body_of(p)["FileUploadEvent"]["FileId"] == "file-60", timeout=20)
    assert push.path == "/hook"
    assert push.headers["content-type"] == "application/json"
    payload = verify_webhook(push.headers, push.body, secret)
    assert payload["EventType"] == "NewFileUpload"
    event = payload["FileUploadEvent"]
    assert event["FileId"] == "file-60"
    assert event["MediaBasicInfo"]["SourceInfo"] == {"SourceType": "Upload",
                                                     "SourceContext": "user-60/upload-1"}
    assert event["MediaBasicInfo"]["MediaUrl"] == "https://media.example/file-60.mp4"
    assert event["MediaBasicInfo"]["Type"] == "mp4"
    assert event["MetaData"]["Size"] == 1000
    assert payload["VodSigner"]["Subject"] == "user-60"
    assert push.headers["webhook-id"].startswith("msg_")
    with pytest.raises(NoMatchingSignature):
        verify_webhook(push.headers, push.body, webhook_secret())
    with pytest.raises(NoMatchingSignature):
        verify_webhook(push.headers, push.body.replace(b"file-60", b"file-66"), secret)


def test_an_upload_never_completed_is_abandoned_and_pushed(pushing: tuple[Signer, str],
                                                           receiver: Receiver) -> None:
    signer, secret = pushing
    with Client(signer.target, token=TOKENS["admin"], timeout=TIMEOUT) as client:
        issued = client.issue("user-61", source_context="user-61/upload-1")
        client.consume(issued.signature)
        push = receiver.wait_for(
            lambda p: body_of(p)["VodSigner"]["Random"] == issued.claims.random
            and body_of(p)["EventType"] == "UploadAbandoned",
            timeout=COMPLETION_WINDOW_SECONDS + 20)
        payload = verify_webhook(push.headers, push.body, secret)
        source = payload["FileUploadEvent"]["MediaBasicInfo"]["SourceInfo"]
        assert source["SourceContext"] == "user-61/upload-1"
        assert client.verify(issued.signature).state == pb.ABANDONED
        # The upload outlived the window: a completion still succeeds, and says it is late.
        late = client.complete_upload(issued.signature, "file-61-late", file_size=5)
        assert late.late
        assert client.verify(issued.signature).state == pb.COMPLETED


def test_pulled_notifications_are_confirmed_once(pulling: Signer) -> None:
    with Client(pulling.target, token=TOKENS["app"], timeout=TIMEOUT) as app, \
            Client(pulling.target, token=TOKENS["gateway"], timeout=TIMEOUT) as gateway:
        sig = app.issue("user-62", source_context="user-62/upload-1").signature
        gateway.consume(sig)
        gateway.complete_upload(sig, "file-62", file_size=62, media_type="mp4")
        with pytest.raises(Refused) as denied:
            gateway.pull_events()
        assert denied.value.reason is Reason.PERMISSION_DENIED

        found: list[pb.Notification] = []
        deadline = time.monotonic() + 20
        while not found and time.monotonic() < deadline:
            found = [n for n in app.pull_events(wait_seconds=2)
                     if json.loads(n.body)["FileUploadEvent"]["FileId"] == "file-62"]
        assert len(found) == 1, "no notification pulled"
        note = found[0]
        assert note.webhook_id.startswith("msg_") and note.created_at > 0
        assert json.loads(note.body)["EventType"] == "NewFileUpload"
        assert app.confirm_events([note.handle]) == 1
        # Idempotent: a retry of the confirm answers 0, and the notification is gone.
        assert app.confirm_events([note.handle]) == 0
        later = app.pull_events(wait_seconds=1)
        assert all(n.handle != note.handle for n in later)
