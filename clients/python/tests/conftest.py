"""Fixtures: one Redis and one vod-signer (plaintext, caller policy) for the session; a TLS
vod-signer only for the TLS test; a fresh proxy per test that needs one."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Proxy, Redis, Signer, make_certificates


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def signer(redis: Redis) -> Iterator[Signer]:
    server = Signer(redis)
    yield server
    server.stop()
    server.assert_no_secrets()


@pytest.fixture(scope="session")
def tls_signer(redis: Redis) -> Iterator[Signer]:
    with tempfile.TemporaryDirectory() as certs:
        server = Signer(redis, tls=make_certificates(Path(certs)))
        yield server
        server.stop()
        server.assert_no_secrets()


@pytest.fixture
def proxy(signer: Signer) -> Iterator[Proxy]:
    p = Proxy(signer.port)
    yield p
    p.close()
