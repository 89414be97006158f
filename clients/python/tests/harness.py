"""Test harness: a real `redis-server` and `vod-signer serve` on free loopback ports, a TCP
proxy that can lose a reply, and test certificates. Nothing here talks to a server that was
already running: every process is started here and killed at the end."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[3]
SECRET_ID = "AKIDpyclienttest"
SECRET_KEY = "py-client-secret-key-6b1f0c9d2e"
# Bearer tokens of the caller policy (admin: every RPC; app: issuer; gateway: consumer).
TOKENS = {"admin": "ops-token-py-3c8e1a", "app": "app-token-py-71d2b4",
          "gateway": "gw-token-py-a90f5e"}
ROLES = {"admin": "admin", "app": "issuer", "gateway": "consumer"}


def binary() -> Path:
    path = Path(os.environ.get("VOD_SIGNER_BIN") or REPO / "target" / "debug" / "vod-signer")
    if not path.is_file():
        raise RuntimeError(f"{path} not found: build it first with `cargo build` at the "
                           "repository root (or set VOD_SIGNER_BIN)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A fresh `redis-server` that keeps nothing on disk."""

    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server not on PATH (apt-get install redis-server)")
        self.dir = tempfile.TemporaryDirectory()
        for _ in range(5):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir.name],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ping():
                return
            self.proc.kill()
            self.proc.wait()
        raise RuntimeError("redis-server did not start")

    def _wait_ping(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A test CA and a server certificate for localhost / 127.0.0.1 it signs (openssl)."""
    if not shutil.which("openssl"):
        raise RuntimeError("openssl not on PATH (apt-get install openssl)")
    ca_key, ca, key, csr, cert = (directory / n for n in
                                  ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *curve, "-days", "2", "-subj", "/CN=vod-signer test CA",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", *curve, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return {"ca": ca, "cert": cert, "key": key}


class Signer:
    """`vod-signer serve` with a temp keys directory, a caller policy and the given Redis, plus
    `extra_args` (e.g. the notification flags)."""

    def __init__(self, redis: Redis, tls: dict[str, Path] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        keys = Path(self.tmp.name, "keys")
        keys.mkdir()
        (keys / SECRET_ID).write_text(SECRET_KEY + "\n")
        policy = Path(self.tmp.name, "callers.toml")
        policy.write_text("".join(
            f'[[caller]]\nname = "{name}"\nroles = ["{ROLES[name]}"]\n'
            f'token_sha256 = ["{hashlib.sha256(token.encode()).hexdigest()}"]\n\n'
            for name, token in TOKENS.items()))
        # Trace level, so the leak check (assert_no_secrets) sees every line the server can write.
        args = [str(binary()), "serve", "--listen", "127.0.0.1:0", "--keys-dir", str(keys),
                "--active-key", SECRET_ID, "--redis-url", redis.url, "--caller-policy",
                str(policy), "--log-format", "json", "--log-level", "trace",
                "--health-interval-ms", "100"]
        if tls:
            args += ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
        args += list(extra_args)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VOD_SIGNER_") and k != "RUST_LOG"}
        env["VOD_SIGNER_METRICS_LISTEN"] = "off"
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        started = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                message = entry.get("message") or entry.get("fields", {}).get("message")
                if message == "serving gRPC" and not started.is_set():
                    addr = entry.get("addr") or entry.get("fields", {}).get("addr", "")
                    self.port = int(str(addr).rpartition(":")[2])
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(30):
            self.stop()
            raise RuntimeError("vod-signer did not start:\n" + "\n".join(self.log[-20:]))
        self.tls = tls
        self._wait_serving()

    @property
    def target(self) -> str:
        return f"{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    def _wait_serving(self) -> None:
        """Waits until the health service says SERVING (the store answers), asked with a raw
        unary call so the tests need no health-checking package."""
        if self.tls:
            creds = grpc.ssl_channel_credentials(self.tls["ca"].read_bytes())
            channel = grpc.secure_channel(self.target, creds)
        else:
            channel = grpc.insecure_channel(self.target)
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                try:
                    if check(b"", timeout=1) == b"\x08\x01":  # status: SERVING
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("vod-signer never reported SERVING")
        finally:
            channel.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.tmp.cleanup()

    def assert_no_secrets(self, *others: str) -> None:
        """The server log holds no key, no token, none of `others` and no whole signature."""
        for line in self.log:
            for secret in (SECRET_KEY, *TOKENS.values(), *others):
                assert secret not in line, f"a secret leaked into the server log: {line}"
            for run in re.findall(r"[A-Za-z0-9+/=]{40,}", line):
                try:
                    raw = base64.b64decode(run, validate=True)
                except (binascii.Error, ValueError):
                    continue
                assert not raw[20:].startswith(b"secretId="), \
                    f"a whole signature leaked into the server log: {line}"


class FrameScanner:
    """Follows HTTP/2 frame boundaries in one direction of a connection (the server's side
    sends no preface, so frames start at byte 0)."""

    def __init__(self) -> None:
        self.header = b""  # bytes of a frame header seen so far
        self.skip = 0  # payload bytes of the current frame still to come

    def feed(self, chunk: bytes) -> list[tuple[int, int]]:
        """The (type, stream id) of every frame whose header completes in `chunk`."""
        found = []
        i = 0
        while i < len(chunk):
            if self.skip:
                take = min(self.skip, len(chunk) - i)
                self.skip -= take
                i += take
                continue
            piece = chunk[i:i + 9 - len(self.header)]
            self.header += piece
            i += len(piece)
            if len(self.header) == 9:
                self.skip = int.from_bytes(self.header[:3], "big")
                found.append((self.header[3],
                              int.from_bytes(self.header[5:9], "big") & 0x7FFFFFFF))
                self.header = b""
        return found


class Proxy:
    """A TCP proxy in front of a plaintext gRPC server that can make a reply get lost.

    `lose_next_reply()` arms it: the next HTTP/2 HEADERS frame the server sends on a request
    stream (the start of an RPC's answer, sent only once the handler finished, so the server
    has done the work) is not forwarded; the proxy closes both connections instead. The
    client sees UNAVAILABLE, not knowing whether the call took effect. It is one-shot.
    `blackhole` makes it accept connections and forward nothing (a deadline test)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.armed = False
        self.blackhole = False
        self.connections = 0
        self.cuts = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_next_reply(self) -> None:
        with self.lock:
            self.armed = True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.sockets.append(client)
            if self.blackhole:
                continue  # held open, never read: the caller's deadline must end the call
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets.append(server)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        frames = FrameScanner()
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if from_server:
                    starts_answer = any(kind == 0x1 and stream != 0
                                        for kind, stream in frames.feed(chunk))
                    with self.lock:
                        cut = self.armed and starts_answer
                        if cut:
                            self.armed = False
                            self.cuts += 1
                    if cut:
                        break
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass


def webhook_secret() -> str:
    """A fresh Standard Webhooks secret, as `--notify-secret-file` takes it."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class Push:
    """One POST the receiver got: its path, headers (names lower-cased) and raw body."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on a free loopback port that takes vod-signer's pushes: it records
    every POST and answers 204."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                push = Push(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._arrived:
                    receiver.pushes.append(push)
                    receiver._arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: pytest shows the assertions

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, matches: Callable[[Push], bool], timeout: float) -> Push:
        """The first push that `matches`, waiting at most `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((p for p in self.pushes if matches(p)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching push within {timeout} s; got "
                                         f"{[p.body[:120] for p in self.pushes]}")
                self._arrived.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
