"""The Python client against a live `vod-signer serve` and `redis-server` (see harness.py)."""

from __future__ import annotations

import time

import grpc
import pytest

from harness import TOKENS, Proxy, Signer
from vodsigner_client import CallFailed, Client, Reason, Refused, VodSignerError, pb

MiB = 1 << 20


# A deadline far above a call's few milliseconds: a loaded CI machine must not turn a slow
# answer into a failed test (the deadline test sets its own).
TIMEOUT = 10.0


def admin(target: str, **kwargs: object) -> Client:
    kwargs.setdefault("timeout", TIMEOUT)
    return Client(target, token=TOKENS["admin"], **kwargs)  # type: ignore[arg-type]


def retries_of(client: Client) -> list[tuple[str, int, VodSignerError]]:
    seen: list[tuple[str, int, VodSignerError]] = []
    client.on_retry = lambda rpc, attempt, error: seen.append((rpc, attempt, error))
    return seen


def test_reason_enum_is_the_spec_list_plus_two() -> None:
    spec = ["INVALID_REQUEST", "SIGNATURE_MALFORMED", "UNKNOWN_SECRET_ID", "SIGNATURE_MISMATCH",
            "SIGNATURE_EXPIRED", "SIGNATURE_NOT_YET_VALID", "SIGNATURE_ALREADY_USED",
            "SIGNATURE_REVOKED", "SIGNATURE_NOT_ISSUED", "FILE_TOO_LARGE", "RATE_LIMITED",
            "PERMISSION_DENIED", "NO_ACTIVE_KEY", "STORE_UNAVAILABLE", "STORE_FULL"]
    assert {r.value for r in Reason} == set(spec) | {"CALLER_UNAUTHENTICATED", "UNRECOGNIZED"}


def test_unknown_outcomes_are_retryable_and_refusals_are_final() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.CANCELLED):
        assert CallFailed(code, "no answer").retryable, code
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
        assert not CallFailed(code, "final").retryable, code
    used = Refused(grpc.StatusCode.FAILED_PRECONDITION, "used", "SIGNATURE_ALREADY_USED", {}, None)
    assert not used.retryable
    away = Refused(grpc.StatusCode.UNAVAILABLE, "away", "STORE_UNAVAILABLE", {}, None)
    assert away.retryable


def test_issue_verify_consume_then_replay_is_refused(signer: Signer) -> None:
    with admin(signer.target) as client:
        issued = client.issue("user-42", procedure="QCVB_SimpleProcessFile",
                              source_context="user-42/upload-1", max_file_size=100 * MiB)
        assert issued.signature
        assert issued.claims.one_time_valid
        assert issued.claims.policy.max_file_size == 100 * MiB
        assert issued.claims.policy.source_context == "user-42/upload-1"
        assert "subject" not in issued.claims.original  # the subject is never signed

        verified = client.verify(issued.signature)
        assert verified.state == pb.ISSUED
        assert verified.claims.random == issued.claims.random

        consumed = client.consume(issued.signature, file_size=5 * MiB, idempotency_key="upload-1")
        assert abs(consumed.consumed_at - time.time()) < 60
        assert consumed.claims.random == issued.claims.random
        assert client.verify(issued.signature).state == pb.CONSUMED

        with pytest.raises(Refused) as replay:
            client.consume(issued.signature, file_size=5 * MiB)
        assert replay.value.reason is Reason.SIGNATURE_ALREADY_USED
        assert replay.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert replay.value.message.startswith("SIGNATURE_ALREADY_USED: ")
        assert not replay.value.retryable


def test_oversize_upload_is_refused_and_the_signature_stays_usable(signer: Signer) -> None:
    with admin(signer.target) as client:
        sig = client.issue("user-43", max_file_size=1 * MiB).signature
        with pytest.raises(Refused) as too_large:
            client.consume(sig, file_size=1 * MiB + 1)
        assert too_large.value.reason is Reason.FILE_TOO_LARGE
        assert too_large.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.verify(sig).state == pb.ISSUED
        client.consume(sig, file_size=1 * MiB)


def test_other_refusals_are_typed(signer: Signer) -> None:
    with admin(signer.target) as client:
        with pytest.raises(Refused) as bad_ttl:
            client.issue("user-44", ttl_seconds=7_776_001)
        assert bad_ttl.value.reason is Reason.INVALID_REQUEST
        with pytest.raises(Refused) as malformed:
            client.verify("not a signature")
        assert malformed.value.reason is Reason.SIGNATURE_MALFORMED
        sig = client.issue("user-44").signature
        assert client.revoke(sig).previous_state == pb.ISSUED
        with pytest.raises(Refused) as revoked:
            client.consume(sig)
        assert revoked.value.reason is Reason.SIGNATURE_REVOKED


def test_bearer_token_and_roles(signer: Signer) -> None:
    with Client(signer.target, timeout=TIMEOUT) as anonymous:
        with pytest.raises(Refused) as no_token:
            anonymous.issue("user-45")
        assert no_token.value.reason is Reason.CALLER_UNAUTHENTICATED
        assert no_token.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(signer.target, token=TOKENS["app"], timeout=TIMEOUT) as app, \
            Client(signer.target, token=TOKENS["gateway"], timeout=TIMEOUT) as gateway:
        sig = app.issue("user-45").signature
        with pytest.raises(Refused) as denied:
            gateway.issue("user-45")
        assert denied.value.reason is Reason.PERMISSION_DENIED
        assert gateway.consume(sig).consumed_at > 0
        assert TOKENS["gateway"] not in repr(gateway)


def test_lost_consume_reply_is_retried_with_the_same_key(signer: Signer, proxy: Proxy) -> None:
    with admin(signer.target) as direct, admin(proxy.target) as client:
        retries = retries_of(client)
        sig = direct.issue("user-46", max_file_size=10 * MiB).signature
        proxy.lose_next_reply()
        consumed = client.consume(sig, file_size=MiB, idempotency_key="upload-46")
        assert proxy.cuts == 1, "the proxy did not cut the first answer"
        assert [(rpc, attempt) for rpc, attempt, _ in retries] == [("ConsumeSignature", 1)]
        assert retries[0][2].code == grpc.StatusCode.UNAVAILABLE
        # The server did consume on the first attempt: the same key gets the same success...
        again = direct.consume(sig, file_size=MiB, idempotency_key="upload-46")
        assert again.consumed_at == consumed.consumed_at
        # ... and any other key a refusal.
        with pytest.raises(Refused) as replay:
            direct.consume(sig, file_size=MiB, idempotency_key="someone-else")
        assert replay.value.reason is Reason.SIGNATURE_ALREADY_USED


def test_the_lost_reply_is_a_real_unknown_outcome(signer: Signer, proxy: Proxy) -> None:
    """With one attempt the caller sees UNAVAILABLE, yet the server had consumed: exactly
    the case the idempotency key is for."""
    with admin(signer.target) as direct, admin(proxy.target, attempts=1) as client:
        sig = direct.issue("user-51").signature
        proxy.lose_next_reply()
        with pytest.raises(CallFailed) as lost:
            client.consume(sig, idempotency_key="upload-51")
        assert lost.value.code == grpc.StatusCode.UNAVAILABLE and lost.value.retryable
        assert proxy.cuts == 1
        assert direct.verify(sig).state == pb.CONSUMED
        assert direct.consume(sig, idempotency_key="upload-51").consumed_at > 0


def test_lost_consume_reply_without_a_key_uses_one_made_up_key(signer: Signer,
                                                                proxy: Proxy) -> None:
    with admin(signer.target) as direct, admin(proxy.target) as client:
        retries = retries_of(client)
        sig = direct.issue("user-47").signature
        proxy.lose_next_reply()
        # Succeeds only if the retry carried the key the lost attempt stored.
        consumed = client.consume(sig)
        assert proxy.cuts == 1 and len(retries) == 1
        assert consumed.consumed_at > 0
        assert direct.verify(sig).state == pb.CONSUMED


def test_issue_is_not_retried(signer: Signer, proxy: Proxy) -> None:
    with admin(proxy.target) as client:
        retries = retries_of(client)
        proxy.lose_next_reply()
        with pytest.raises(CallFailed) as lost:
            client.issue("user-48")
        assert lost.value.code == grpc.StatusCode.UNAVAILABLE
        assert lost.value.retryable  # the caller may decide to ask again
        assert proxy.cuts == 1 and retries == []


def test_verify_is_retried(signer: Signer, proxy: Proxy) -> None:
    with admin(signer.target) as direct, admin(proxy.target) as client:
        retries = retries_of(client)
        sig = direct.issue("user-49").signature
        proxy.lose_next_reply()
        assert client.verify(sig).state == pb.ISSUED
        assert proxy.cuts == 1 and len(retries) == 1


def test_deadline_bounds_every_attempt(signer: Signer, proxy: Proxy) -> None:
    proxy.blackhole = True
    with admin(proxy.target, timeout=0.3, attempts=2) as client:
        started = time.monotonic()
        with pytest.raises(CallFailed) as late:
            client.verify("anything")
        elapsed = time.monotonic() - started
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 5, f"two 0.3 s attempts took {elapsed:.1f} s"  # a hang would take forever


def test_tls(tls_signer: Signer) -> None:
    assert tls_signer.tls is not None
    ca = tls_signer.tls["ca"].read_bytes()
    with Client(tls_signer.target, tls=True, root_certificates=ca, token=TOKENS["admin"],
                timeout=TIMEOUT) as client:
        sig = client.issue("user-50").signature
        assert client.verify(sig).state == pb.ISSUED
        assert client.consume(sig).consumed_at > 0
    # A client that does not trust the server's CA never gets an answer with a reason.
    with Client(tls_signer.target, tls=True, root_certificates=None, token=TOKENS["admin"],
                timeout=5, attempts=1) as untrusting:
        with pytest.raises(CallFailed) as untrusted:
            untrusting.verify(sig)
        assert untrusted.value.code == grpc.StatusCode.UNAVAILABLE


def test_list_and_revoke_a_subject(signer: Signer) -> None:
    with admin(signer.target) as client:
        first = client.issue("user-list", source_context="user-list/1")
        second = client.issue("user-list", source_context="user-list/2")
        client.consume(first.signature)
        page = client.list_signatures("user-list")
        assert [s.random for s in page.signatures] == [second.claims.random]
        assert page.signatures[0].state == pb.ISSUED
        assert page.signatures[0].source_context == "user-list/2"
        assert not page.next_page_token
        every = client.list_signatures("user-list", states=[pb.ISSUED, pb.CONSUMED], page_size=1)
        assert len(every.signatures) == 1 and every.next_page_token
        assert client.revoke_subject("user-list").revoked == 1
        with pytest.raises(Refused) as refused:
            client.consume(second.signature)
        assert refused.value.reason is Reason.SIGNATURE_REVOKED
        assert client.revoke_subject("user-list").revoked == 0
