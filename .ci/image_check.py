#!/usr/bin/env python3
"""The vod-signer image and the Helm chart's pods, run for real (`.ci/image.sh` runs this).

run   The image as production runs it: `podman run --read-only --cap-drop ALL --security-opt
      no-new-privileges --user 65532:65532`, the keys directory mounted read-only with the
      layout and modes of a Kubernetes Secret volume (root-owned files, 0440, readable through
      a supplementary group), against a redis-server on the host's 127.0.0.1 (reached from
      the container through slirp4netns as 10.0.2.2). Through 127.0.0.1: grpcurl list, health
      SERVING, IssueSignature (its HMAC checked with the key), ConsumeSignature, the replay
      refused, /metrics; a key added by the kubelet's atomic `..data` swap is picked up; then
      SIGTERM (`podman stop`) while a consume is held in flight by Redis (CLIENT PAUSE): the
      call must finish and the process exit 0 within the drain timeout.
kube  The chart rendered with .ci/kube-values.yaml, keys from keys.inline and then from an
      existingSecret, and its Deployments, ConfigMaps and Secrets run with `podman kube play`:
      every container running under the chart's own securityContext; the kubelet's gRPC
      probes asked as the manifest says; issue on one pod, consume on the other, replay
      refused (the chart's Redis shared), callers checked against the policy Secret; a key
      added to the Secret's files picked up without a restart. All traffic stays inside the
      pods' own network namespaces (nsenter, as `kubectl port-forward` does).

Usage: image_check.py run|kube --image IMAGE --redis-image IMAGE --revision SHA --version V
       --scratch DIR       (GRPCURL names the grpcurl binary; kube needs helm-python-sdk)
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
RUN_ID = os.environ.get("VOD_SIGNER_CI_RUN_ID", f"vsci-{os.getpid()}")
GRPCURL = os.environ.get("GRPCURL", "grpcurl")
SERVICE = "vodsigner.v1.SignatureService"
KEYS_DIR = "/etc/vod-signer/keys"
# Start-up of a container until its first store ping answered. Only a bound for polling: every
# check returns as soon as the state is reached.
STARTUP_BUDGET_S = 60.0


class Failure(Exception):
    pass


def ok(what: str) -> None:
    print(f"  ok    {what}", flush=True)


def require(condition: Any, what: str, detail: str = "") -> None:
    if not condition:
        raise Failure(f"{what}{': ' + detail if detail else ''}")
    ok(what)


def run(cmd: list[str], timeout: float = 120, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired as e:
        raise Failure(f"{' '.join(cmd[:4])} ... did not finish within {timeout} s") from e
    if check and out.returncode != 0:
        raise Failure(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], timeout=timeout, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, seconds: float, probe: Callable[[], Any]) -> Any:
    """Polls `probe` until it returns something truthy; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise Failure(f"{what}: not reached within {seconds:.0f} s (last: {last!r})")


def new_key() -> tuple[str, str]:
    """A fresh SecretId (SPEC: 1-128 of A-Z a-z 0-9 _ -) and SecretKey for this run."""
    return f"AKIDci{secrets.token_hex(8)}", secrets.token_urlsafe(24)


def tencent_original(signature: str, secret_key: str) -> str:
    """The signature's original string, after checking its HMAC-SHA1 tag with the key (SPEC
    section 2): proves the server signed with the key the Secret holds, byte for byte."""
    raw = base64.b64decode(signature, validate=True)
    tag, original = raw[:20], raw[20:]
    want = hmac.new(secret_key.encode(), original, hashlib.sha1).digest()
    if not hmac.compare_digest(tag, want):
        raise Failure("the issued signature's HMAC does not match the key in the Secret")
    return original.decode()


# --------------------------------------------------------------------------- gRPC and HTTP


class Endpoint:
    """grpcurl against HOST:PORT, optionally from inside the network namespace of process PID
    (nsenter -n: the pod's own loopback, as kubectl port-forward reaches it)."""

    def __init__(self, host: str, port: int, netns_pid: int | None = None, token: str = ""):
        self.host, self.port, self.netns_pid, self.token = host, port, netns_pid, token

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.netns_pid), "-n", "--"] if self.netns_pid else []

    def command(self, method: str, data: Any = None, token: str | None = None,
                max_time: float = 10) -> list[str]:
        cmd = self.prefix() + [GRPCURL, "-plaintext", "-max-time", f"{max_time:g}"]
        token = self.token if token is None else token
        if token:
            cmd += ["-H", f"authorization: Bearer {token}"]
        if data is not None:
            cmd += ["-d", json.dumps(data)]
        return cmd + [f"{self.host}:{self.port}", method]

    def call(self, method: str, data: Any = None, token: str | None = None,
             max_time: float = 10) -> subprocess.CompletedProcess[str]:
        return run(self.command(method, data, token, max_time), timeout=max_time + 20, check=False)

    def ok(self, method: str, data: Any = None, token: str | None = None) -> dict[str, Any]:
        out = self.call(method, data, token)
        if out.returncode != 0:
            raise Failure(f"{method} failed: {out.stdout}{out.stderr}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def health(self, service: str, max_time: float = 5) -> str:
        out = self.call("grpc.health.v1.Health/Check", {"service": service}, token="",
                        max_time=max_time)
        if out.returncode != 0:
            return f"error: {(out.stdout + out.stderr).strip()}"
        return json.loads(out.stdout).get("status", "")

    def http_get(self, port: int, path: str) -> str:
        script = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                  f"'http://{self.host}:{port}{path}', timeout=10).read().decode())")
        return run(self.prefix() + [sys.executable, "-c", script], timeout=30).stdout


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the first sample `name` whose labels include `labels`."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            return float(m.group(3))
    return None


def flow(issuer: Endpoint, consumer: Endpoint, secret_key: str, where: str) -> None:
    """Issue on `issuer`, check its HMAC, consume on `consumer`, replay refused on `issuer`."""
    issued = issuer.ok(f"{SERVICE}/IssueSignature",
                       {"subject": "ci-user", "ttl_seconds": 600,
                        "policy": {"procedure": "QCVB_SimpleProcessFile", "max_file_size": 1000}})
    signature = issued["signature"]
    original = tencent_original(signature, secret_key)
    require("oneTimeValid=1" in original, f"{where}: IssueSignature signed with the Secret's key "
            f"(HMAC checked here)")
    consumed = consumer.ok(f"{SERVICE}/ConsumeSignature",
                           {"signature": signature, "file_size": 10, "idempotency_key": "ci-1"})
    require(consumed.get("consumedAt"), f"{where}: ConsumeSignature accepted it once")
    replay = issuer.call(f"{SERVICE}/ConsumeSignature", {"signature": signature, "file_size": 10},
                         token=consumer.token)
    require(replay.returncode != 0 and "SIGNATURE_ALREADY_USED" in replay.stdout + replay.stderr,
            f"{where}: the replay is refused SIGNATURE_ALREADY_USED",
            replay.stdout + replay.stderr)


# --------------------------------------------------------------------------- files


def kubelet_secret_volume(directory: Path, files: dict[str, bytes], mode: int, gid: int) -> None:
    """Writes DIRECTORY as the kubelet's atomic writer lays out a Secret volume: the payload in
    a hidden timestamped directory, `..data` pointing at it, one `NAME -> ..data/NAME` link per
    key; files root-owned with the volume's mode and the pod's fsGroup. Called again with
    another payload, it swaps `..data` atomically (rename of a new link over it), adds the
    links of new keys and removes those of keys gone, as a Secret update does."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(4)
    payload = directory / stamp
    payload.mkdir()
    for name, content in files.items():
        path = payload / name
        path.write_bytes(content)
        os.chown(path, 0, gid)
        os.chmod(path, mode)
    os.chown(payload, 0, gid)
    os.chmod(payload, 0o755)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp)
    os.rename(tmp, data)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for entry in directory.iterdir():
        if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in files:
            entry.unlink()
    if old:
        shutil.rmtree(directory / old)


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def check_process(pid: int, uid: int, gid: int, extra_group: int | None, where: str) -> None:
    """What the kernel says about the server process: ids, no capability, no privilege gain,
    seccomp filtering."""
    s = proc_status(pid)
    uids, gids = s["Uid"].split(), s["Gid"].split()
    groups = set(s.get("Groups", "").split())
    require(set(uids) == {str(uid)} and set(gids) == {str(gid)},
            f"{where}: runs as uid {uid} gid {gid}", f"Uid {s['Uid']} Gid {s['Gid']}")
    if extra_group is not None:
        require(str(extra_group) in groups, f"{where}: supplementary group {extra_group}",
                s.get("Groups", ""))
    require(all(int(s[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")),
            f"{where}: no capabilities (effective, permitted, bounding all 0)")
    require(s.get("NoNewPrivs") == "1", f"{where}: no_new_privs set")
    require(s.get("Seccomp") == "2", f"{where}: seccomp filter on", s.get("Seccomp", ""))


# --------------------------------------------------------------------------- host Redis


class HostRedis:
    """A redis-server of this run on the host's 127.0.0.1 (its pid file lets .ci/image.sh's
    trap stop it if this script is killed)."""

    def __init__(self, scratch: Path):
        self.port = free_port()
        self.pidfile = scratch / f"redis-{self.port}.pid"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pidfile.write_text(str(self.proc.pid))

        def ours() -> bool:
            out = self.cli("INFO", "server", check=False).stdout
            return f"process_id:{self.proc.pid}" in out

        wait_for(f"redis-server on 127.0.0.1:{self.port}", 10, ours)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], timeout=10,
                   check=check)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------- run


def check_image_metadata(args: argparse.Namespace) -> None:
    info = json.loads(podman("image", "inspect", args.image).stdout)[0]
    config = info.get("Config") or {}
    labels = config.get("Labels") or info.get("Labels") or {}
    require(labels.get("org.opencontainers.image.version") == args.version
            and labels.get("org.opencontainers.image.revision") == args.revision
            and labels.get("org.opencontainers.image.source"),
            f"image labels: version {args.version}, revision {args.revision[:12]}, source "
            f"{labels.get('org.opencontainers.image.source')}", json.dumps(labels))
    require(config.get("User") == "65532:65532" and config.get("Entrypoint") == ["/vod-signer"],
            "image config: user 65532:65532, entrypoint /vod-signer",
            f"{config.get('User')} {config.get('Entrypoint')}")
    shell = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", args.image,
                   "-c", "true", check=False, timeout=60)
    require(shell.returncode != 0, "the image has no shell (/bin/sh cannot be run)")


def check_quickstart(args: argparse.Namespace) -> None:
    """The Dockerfile's and README's first try, `docker run -p 50051:50051 IMAGE serve --dev`,
    here with a read-only root filesystem and no capabilities."""
    name, port = f"{RUN_ID}-dev", free_port()
    try:
        podman("run", "-d", "--name", name, "--read-only", "--cap-drop", "ALL",
               "--network", "slirp4netns", "--publish", f"127.0.0.1:{port}:50051", args.image,
               "serve", "--dev", timeout=STARTUP_BUDGET_S)
        grpc = Endpoint("127.0.0.1", port)
        wait_for("serve --dev: health SERVING", STARTUP_BUDGET_S,
                 lambda: grpc.health(SERVICE) == "SERVING")
        issued = grpc.ok(f"{SERVICE}/IssueSignature", {"subject": "ci-dev"})
        printed = podman("logs", name).stdout
        key = re.search(r"secretKey:\s+(\S+)", printed)
        require(key and tencent_original(issued["signature"], key.group(1)),
                "serve --dev (the quickstart): serves, and signs with the key it printed once")
    finally:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=60)


def check_run(args: argparse.Namespace) -> None:
    scratch = Path(args.scratch).resolve() / "run"
    scratch.mkdir(parents=True)
    check_image_metadata(args)
    check_quickstart(args)
    redis = HostRedis(scratch)
    name = f"{RUN_ID}-run"
    try:
        run_locked_down(args, scratch, redis, name)
    except BaseException:
        logs = podman("logs", name, check=False, timeout=30)
        print(f"--- podman logs {name}\n{logs.stdout}{logs.stderr}---", flush=True)
        raise
    finally:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
        redis.stop()


def run_locked_down(args: argparse.Namespace, scratch: Path, redis: HostRedis, name: str) -> None:
    secret_id, secret_key = new_key()
    keys = scratch / "keys"
    # A Secret volume as the kubelet writes one for fsGroup 2000: root-owned, mode 0440, so
    # uid 65532 reads the keys only through the supplementary group 2000.
    secret_gid = 2000
    kubelet_secret_volume(keys, {secret_id: secret_key.encode() + b"\n"}, 0o440, secret_gid)
    os.chown(keys, 0, secret_gid)
    os.chmod(keys, 0o750)
    drain_timeout, store_timeout_ms, reload_s = 20, 8000, 1
    locked_down = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   "--user", "65532:65532",
                   "--network", "slirp4netns:allow_host_loopback=true",
                   "--volume", f"{keys}:{KEYS_DIR}:ro"]
    serve = ["serve", "--keys-dir", KEYS_DIR, "--redis-url", f"redis://10.0.2.2:{redis.port}/0",
             "--log-format", "json"]

    # Without the Secret's group the keys are unreadable: the start must fail, saying so.
    denied = podman("run", "--rm", "--name", f"{name}-nogroup", *locked_down, args.image, *serve,
                    check=False, timeout=STARTUP_BUDGET_S)
    require(denied.returncode == 2 and "ermission denied" in denied.stderr,
            "without the Secret's group (0440 files): start refused, exit 2, permission denied "
            "named", f"exit {denied.returncode}: {denied.stderr[-400:]}")

    grpc_port, metrics_port = free_port(), free_port()
    podman("run", "-d", "--name", name, *locked_down, "--group-add", str(secret_gid),
           "--publish", f"127.0.0.1:{grpc_port}:50051",
           "--publish", f"127.0.0.1:{metrics_port}:9090",
           args.image, *serve,
           "--store-timeout-ms", str(store_timeout_ms), "--drain-timeout", str(drain_timeout),
           "--keys-reload-interval", str(reload_s), timeout=STARTUP_BUDGET_S)
    inspect = json.loads(podman("inspect", name).stdout)[0]
    require(inspect["HostConfig"]["ReadonlyRootfs"], "container: read-only root filesystem")
    check_process(inspect["State"]["Pid"], 65532, 65532, secret_gid, "container")

    grpc = Endpoint("127.0.0.1", grpc_port)
    wait_for("health SERVING through 127.0.0.1", STARTUP_BUDGET_S,
             lambda: grpc.health(SERVICE) == "SERVING")
    ok(f"grpc.health.v1.Health/Check {SERVICE}: SERVING (127.0.0.1:{grpc_port})")
    listed = grpc.call("list")
    require(listed.returncode == 0 and SERVICE in listed.stdout
            and "grpc.health.v1.Health" in listed.stdout, "grpcurl list: the service, health, "
            "reflection", listed.stdout + listed.stderr)
    require(grpc.health("") == "SERVING", "health of the overall service \"\": SERVING")
    flow(grpc, grpc, secret_key, "podman run")

    metrics = Endpoint("127.0.0.1", metrics_port).http_get(metrics_port, "/metrics")
    require(metric(metrics, "vodsigner_build_info",
                   {"version": args.version, "revision": args.revision}) == 1,
            f"/metrics: vodsigner_build_info{{version=\"{args.version}\", "
            f"revision=\"{args.revision[:12]}...\"}} 1")
    require(metric(metrics, "vodsigner_requests_total",
                   {"rpc": "ConsumeSignature", "result": "SIGNATURE_ALREADY_USED"}) == 1,
            "/metrics: the replay counted (requests_total SIGNATURE_ALREADY_USED 1)")

    # Key rotation the way a Secret update arrives: the kubelet's atomic ..data swap.
    new_id, new_secret = new_key()
    kubelet_secret_volume(keys, {secret_id: secret_key.encode() + b"\n",
                                 new_id: new_secret.encode() + b"\n"}, 0o440, secret_gid)

    def new_key_issues() -> bool:
        return grpc.call(f"{SERVICE}/IssueSignature", {"secret_id": new_id}).returncode == 0

    wait_for("the added key issues", 3 * reload_s + 5, new_key_issues)
    ok(f"a key added by an atomic ..data swap issues without a restart "
       f"(--keys-reload-interval {reload_s})")

    drain_with_call_in_flight(grpc, redis, name, metrics_port, drain_timeout, store_timeout_ms)


def drain_with_call_in_flight(grpc: Endpoint, redis: HostRedis, name: str, metrics_port: int,
                              drain_timeout: int, store_timeout_ms: int) -> None:
    """SIGTERM while a ConsumeSignature is held in flight by Redis itself: CLIENT PAUSE WRITE
    holds the consume's script for `pause_ms` (shorter than --store-timeout-ms, so the call
    waits instead of failing). The call must be answered after SIGTERM, successfully, and the
    process exit 0 within --drain-timeout, saying it drained."""
    issued = grpc.ok(f"{SERVICE}/IssueSignature", {"subject": "ci-drain", "ttl_seconds": 600})
    pause_ms = 3000
    assert pause_ms < store_timeout_ms and pause_ms < drain_timeout * 1000
    redis.cli("CLIENT", "PAUSE", str(pause_ms), "WRITE")
    paused_at = time.monotonic()
    consume = subprocess.Popen(
        grpc.command(f"{SERVICE}/ConsumeSignature",
                     {"signature": issued["signature"], "idempotency_key": "ci-drain"},
                     max_time=drain_timeout),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answered: dict[str, Any] = {}

    def collect() -> None:
        out, err = consume.communicate()
        answered.update(at=time.monotonic(), out=out, err=err, code=consume.returncode)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    metrics = Endpoint("127.0.0.1", metrics_port)

    def in_flight() -> bool:
        return (metric(metrics.http_get(metrics_port, "/metrics"),
                       "vodsigner_inflight_requests") or 0) >= 1

    # The call must be seen in flight while Redis still holds it.
    wait_for("the consume in flight (vodsigner_inflight_requests 1)", pause_ms / 1000, in_flight)
    require(not answered, "a ConsumeSignature is in flight, held by Redis (CLIENT PAUSE WRITE)")
    sigterm_at = time.monotonic()
    stop = podman("stop", "-t", str(drain_timeout + 10), name, timeout=drain_timeout + 30)
    stopped_in = time.monotonic() - sigterm_at
    collector.join(timeout=drain_timeout)
    require(answered.get("code") == 0 and '"consumedAt"' in answered.get("out", ""),
            "the in-flight ConsumeSignature finished successfully after SIGTERM",
            f"{answered}")
    require(answered["at"] > sigterm_at, "its answer came after SIGTERM (the drain waited for it:"
            f" {answered['at'] - paused_at:.1f} s after the pause began)")
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    require(stop.returncode == 0 and state["ExitCode"] == 0 and not state.get("OOMKilled"),
            f"podman stop: exit code 0 after {stopped_in:.1f} s (drain timeout {drain_timeout} s)",
            f"exit {state['ExitCode']}")
    require(stopped_in < drain_timeout, f"stopped within the drain timeout ({stopped_in:.1f} s "
            f"< {drain_timeout} s)")
    logs = podman("logs", name).stderr + podman("logs", name).stdout
    require("SIGTERM" in logs and "drained: exiting" in logs
            and "calls still in flight" not in logs,
            "log: SIGTERM, then drained: exiting (no call cut at the drain timeout)")
    written = [line for line in logs.splitlines() if "Read-only file system" in line]
    require(not written, "log: no write to the read-only root filesystem", "\n".join(written))


# --------------------------------------------------------------------------- kube


class Play:
    """One `podman kube play` of rendered manifests, and its clean-up."""

    def __init__(self, scratch: Path, label: str):
        self.file = scratch / f"{label}.yaml"
        self.pods: list[str] = []
        self.volumes: set[str] = set()
        self.secrets: set[str] = set()

    def down(self) -> None:
        if self.file.exists():
            podman("kube", "down", str(self.file), check=False, timeout=120)
        for pod in self.pods:
            podman("pod", "rm", "-f", "-t", "0", pod, check=False, timeout=60)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False, timeout=60)
        for secret in self.secrets:
            podman("secret", "rm", secret, check=False, timeout=60)


def check_kube(args: argparse.Namespace) -> None:
    import helm_python as helm  # target/helm-venv (helm/tests/requirements.txt)
    import yaml

    scratch = Path(args.scratch).resolve() / "kube"
    scratch.mkdir(parents=True)
    chart = helm.Chart.load(REPO / "helm" / "vod-signer")
    base = yaml.safe_load((REPO / ".ci" / "kube-values.yaml").read_text())
    repository, _, tag = args.image.rpartition(":")
    redis_repository, _, redis_tag = args.redis_image.rpartition(":")
    tokens = {"issuer": secrets.token_urlsafe(24), "consumer": secrets.token_urlsafe(24)}
    policy = "".join(
        f'[[caller]]\nname = "ci-{role}"\nroles = ["{role}"]\n'
        f'token_sha256 = ["{hashlib.sha256(token.encode()).hexdigest()}"]\n\n'
        for role, token in tokens.items())
    callers_secret = f"{RUN_ID}-callers"
    common = {
        "image": {"repository": repository, "tag": tag},
        "redis": {"internal": {"image": {"repository": redis_repository, "tag": redis_tag}}},
        "callerPolicy": {"existingSecret": callers_secret},
    }
    extra_secret = secret_manifest(callers_secret, {"policy.toml": policy.encode()})

    secret_id, secret_key = new_key()
    print("\n-- keys.inline", flush=True)
    kube_variant(args, chart, scratch, "inline", merge(base, common, {
        "keys": {"inline": {secret_id: secret_key}}}), [extra_secret], tokens, secret_key,
        rotate=False)

    secret_id, secret_key = new_key()
    keys_secret = f"{RUN_ID}-keys"
    print(f"\n-- keys.existingSecret ({keys_secret}, made here as a Secret manifest)", flush=True)
    kube_variant(args, chart, scratch, "existing", merge(base, common, {
        "keys": {"existingSecret": keys_secret}}),
        [extra_secret, secret_manifest(keys_secret, {secret_id: secret_key.encode(),
                                                     ".active": secret_id.encode()})],
        tokens, secret_key, rotate=True)


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def secret_manifest(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def kube_variant(args: argparse.Namespace, chart: Any, scratch: Path, label: str,
                 values: dict[str, Any], extra: list[dict[str, Any]], tokens: dict[str, str],
                 secret_key: str, rotate: bool) -> None:
    import yaml

    release = f"{RUN_ID}-{label}"
    namespace = "vod-signer-ci"
    files = chart.render(values, name=release, namespace=namespace)
    docs = [d for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    played = [d for d in docs if d["kind"] in ("Deployment", "ConfigMap", "Secret")] + extra
    skipped = sorted({d["kind"] for d in docs} - {"Deployment", "ConfigMap", "Secret"})
    print(f"  rendered {len(docs)} manifests; podman runs the Deployments, ConfigMaps and "
          f"Secrets; not run here: {', '.join(skipped)}", flush=True)
    deployments = {d["metadata"]["name"]: d for d in played if d["kind"] == "Deployment"}
    server = deployments[f"{release}-vod-signer"]
    redis = deployments[f"{release}-vod-signer-redis"]
    config = next(d for d in played if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == f"{release}-vod-signer")

    # No Service and no cluster DNS under podman. The chart's Redis pod publishes its port on
    # the host's 127.0.0.1 (hostPort), the server pods resolve the Service's name to the
    # host (hostAliases: 10.0.2.2 is the host's loopback seen from a slirp4netns pod), and
    # only the port of the chart's Redis URL changes to the published one.
    # podman 4.3 also publishes every declared containerPort on the host's 0.0.0.0 under the
    # same number, which Kubernetes never does (and a second replica then cannot start): the
    # server's port list (names for Services, which podman does not run) is left out, and the
    # checks reach the pods inside their network namespaces; the Redis port is published on
    # 127.0.0.1 only.
    server_ports = server["spec"]["template"]["spec"]["containers"][0].pop("ports")
    redis_port = free_port()
    redis["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        hostPort=redis_port, hostIP="127.0.0.1")
    print("  server container ports not declared to podman: "
          + ", ".join(f"{p['name']} {p['containerPort']}" for p in server_ports), flush=True)
    url = urllib.parse.urlsplit(config["data"]["VOD_SIGNER_REDIS_URL"])
    server["spec"]["template"]["spec"]["hostAliases"] = [
        {"ip": "10.0.2.2", "hostnames": [url.hostname]}]
    config["data"]["VOD_SIGNER_REDIS_URL"] = url._replace(
        netloc=f"{url.hostname}:{redis_port}").geturl()
    # podman 4.3 dereferences a Secret volume's `optional` without checking that it is set
    # (a nil-pointer panic): say the Kubernetes default explicitly.
    for d in deployments.values():
        for volume in d["spec"]["template"]["spec"].get("volumes") or []:
            if "secret" in volume:
                volume["secret"].setdefault("optional", False)
    print(f"  podman stand-ins for a Service: {url.hostname} -> 10.0.2.2 (hostAliases), Redis "
          f"published on 127.0.0.1:{redis_port}, --redis-url {url.geturl()} -> port "
          f"{redis_port}", flush=True)

    play = Play(scratch, label)
    play.file.write_text(yaml.safe_dump_all(played, sort_keys=False))
    play.secrets.update(d["metadata"]["name"] for d in played if d["kind"] == "Secret")
    replicas = server["spec"].get("replicas", 1)
    play.pods = [f"{name}-pod-{i}" for name, d in deployments.items()
                 for i in range(d["spec"].get("replicas", 1))]
    try:
        podman("kube", "play", "--start=false", "--network", "slirp4netns:allow_host_loopback=true",
               str(play.file), timeout=300)
        for pod in play.pods:
            bindings = json.loads(podman("pod", "inspect", pod).stdout)["InfraConfig"]["PortBindings"]
            exposed = [f"{b['HostIp'] or '0.0.0.0'}:{b['HostPort']}" for bs in bindings.values()
                       for b in bs if b["HostIp"] != "127.0.0.1"]
            require(not exposed, f"{pod}: publishes on 127.0.0.1 only", ", ".join(exposed))
        secret_volumes = write_secret_volumes(play, played)
        for pod in play.pods:
            podman("pod", "start", pod, timeout=120)
        server_pods = [f"{server['metadata']['name']}-pod-{i}" for i in range(replicas)]
        check_pods(args, server, server_pods, redis, tokens, secret_key, values)
        if rotate:
            rotate_key(server, server_pods, secret_volumes, tokens, values)
        for pod in server_pods:
            state = json.loads(podman("inspect", f"{pod}-vod-signer").stdout)[0]
            require(state["State"]["Running"] and state.get("RestartCount", 0) == 0,
                    f"{pod}: still running, never restarted")
        stop_pods(server, server_pods)
    except BaseException:
        for pod in play.pods:
            for container in podman("ps", "-a", "--filter", f"pod={pod}", "--format",
                                    "{{.Names}}", check=False).stdout.split():
                logs = podman("logs", container, check=False, timeout=30)
                print(f"--- podman logs {container}\n{logs.stdout}{logs.stderr}---", flush=True)
        raise
    finally:
        play.down()


def write_secret_volumes(play: Play, played: list[dict[str, Any]]) -> dict[str, tuple[Path, int, int]]:
    """podman 4.3 writes a Secret volume's files with the base64 text of the data and ignores
    defaultMode and fsGroup (podman#16625, fixed in 4.4). Before the pods start, each Secret
    volume (a podman volume named after the Secret) is rewritten the way the kubelet writes
    it: the decoded data, the volume's defaultMode, the pod's fsGroup, the ..data layout.
    Returns, per Secret name, (directory, mode, gid) for later updates."""
    secret_data = {d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in
                                           (d.get("data") or {}).items()}
                   for d in played if d["kind"] == "Secret"}
    out: dict[str, tuple[Path, int, int]] = {}
    for d in played:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        gid = (pod.get("securityContext") or {}).get("fsGroup", 0)
        for volume in pod.get("volumes") or []:
            source = volume.get("secret")
            if not source:
                continue
            name = source["secretName"]
            data = secret_data[name]
            if source.get("items"):
                data = {i["path"]: data[i["key"]] for i in source["items"]}
            mode = source.get("defaultMode", 0o644)
            mountpoint = Path(podman("volume", "inspect", name, "--format",
                                     "{{.Mountpoint}}").stdout.strip())
            play.volumes.add(name)
            for entry in mountpoint.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            kubelet_secret_volume(mountpoint, data, mode, gid)
            out[name] = (mountpoint, mode, gid)
            ok(f"Secret {name} -> volume {volume['name']}: {len(data)} files, mode "
               f"{mode:04o}, group {gid}, ..data layout")
    return out


def pid_of(container: str) -> int:
    state = json.loads(podman("inspect", container).stdout)[0]["State"]
    if not state.get("Running"):
        raise Failure(f"{container} is not running: {state.get('Status')} (exit "
                      f"{state.get('ExitCode')})")
    return int(state["Pid"])


def pod_ip(pid: int) -> str:
    addrs = json.loads(run(["nsenter", "-t", str(pid), "-n", "--", "ip", "-j", "-4", "addr"]).stdout)
    for link in addrs:
        for addr in link.get("addr_info", []):
            if not addr["local"].startswith("127."):
                return addr["local"]
    raise Failure(f"no pod address in the network namespace of {pid}")


def check_pods(args: argparse.Namespace, server: dict[str, Any], server_pods: list[str],
               redis: dict[str, Any], tokens: dict[str, str], secret_key: str,
               values: dict[str, Any]) -> None:
    redis_pod = f"{redis['metadata']['name']}-pod-0"
    pid_of(f"{redis_pod}-redis")
    spec = server["spec"]["template"]["spec"]
    container = spec["containers"][0]
    context = container["securityContext"]
    endpoints = []
    for pod in server_pods:
        name = f"{pod}-vod-signer"
        pid = wait_for(f"{name} running", STARTUP_BUDGET_S, lambda n=name: _running_pid(n))
        inspect = json.loads(podman("inspect", name).stdout)[0]
        require(inspect["HostConfig"]["ReadonlyRootfs"] == context["readOnlyRootFilesystem"],
                f"{name}: running, read-only root filesystem as the chart says")
        check_process(pid, context["runAsUser"], context["runAsGroup"], None, name)
        endpoints.append((pod, pid))

    # The probes as the kubelet asks them: gRPC health on the manifest's port and service, at
    # the pod's address, each answer within the probe's timeoutSeconds.
    for pod, pid in endpoints:
        ip = pod_ip(pid)
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container[kind]
            port, service = probe["grpc"]["port"], probe["grpc"].get("service", "")
            at = Endpoint(ip, port, pid)
            wait_for(f"{pod}: {kind} SERVING", STARTUP_BUDGET_S,
                     lambda a=at, s=service, t=probe["timeoutSeconds"]: a.health(s, t) == "SERVING")
            ok(f"{pod}: {kind} grpc port {port} service {service!r} at {ip}: SERVING within "
               f"timeoutSeconds {probe['timeoutSeconds']}")

    first, second = endpoints[0], endpoints[-1]
    issuer = Endpoint("127.0.0.1", 50051, first[1], tokens["issuer"])
    consumer = Endpoint("127.0.0.1", 50051, second[1], tokens["consumer"])
    listed = issuer.call("list")
    require(listed.returncode == 0 and SERVICE in listed.stdout, f"{first[0]}: grpcurl list "
            "inside the pod's network namespace (127.0.0.1)", listed.stdout + listed.stderr)
    where = f"{first[0]} -> {second[0]}" if first != second else first[0]
    flow(issuer, consumer, secret_key, where)
    anonymous = issuer.call(f"{SERVICE}/IssueSignature", {"subject": "x"}, token="")
    wrong_role = consumer.call(f"{SERVICE}/IssueSignature", {"subject": "x"})
    require(anonymous.returncode != 0 and wrong_role.returncode != 0
            and "PERMISSION_DENIED" in wrong_role.stdout + wrong_role.stderr,
            "caller policy (from its 0440 Secret) in force: no token refused, the consumer "
            "may not issue", anonymous.stdout + anonymous.stderr + wrong_role.stdout)
    metrics_port = values.get("containerPorts", {}).get("metrics", 9090)
    text = issuer.http_get(metrics_port, "/metrics")
    require(metric(text, "vodsigner_build_info", {"revision": args.revision}) == 1,
            f"{first[0]}: /metrics on port {metrics_port} (vodsigner_build_info revision)")


def _running_pid(container: str) -> int | None:
    state = json.loads(podman("inspect", container, check=False).stdout or "[{}]")[0].get("State", {})
    if state.get("Status") in ("exited", "stopped"):
        raise Failure(f"{container} exited ({state.get('ExitCode')})")
    return int(state["Pid"]) if state.get("Running") else None


def stop_pods(server: dict[str, Any], server_pods: list[str]) -> None:
    """What the kubelet does to a terminating pod, minus the preStop sleep (podman runs no
    lifecycle hooks, and its stop timeout ignores terminationGracePeriodSeconds, so it is
    passed): SIGTERM, then SIGKILL after the grace period. The server must drain and exit 0
    before it."""
    grace = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    for pod in server_pods:
        name = f"{pod}-vod-signer"
        started = time.monotonic()
        podman("pod", "stop", "-t", str(grace), pod, timeout=grace + 30)
        took = time.monotonic() - started
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        logs = podman("logs", name).stderr
        require(state["ExitCode"] == 0 and "drained: exiting" in logs and took < grace,
                f"{pod}: SIGTERM drained, exit 0 after {took:.1f} s (grace {grace} s)",
                f"exit {state['ExitCode']}")


def rotate_key(server: dict[str, Any], server_pods: list[str],
               secret_volumes: dict[str, tuple[Path, int, int]], tokens: dict[str, str],
               values: dict[str, Any]) -> None:
    """A key added to the keys Secret reaches the running pods as a kubelet Secret update does
    (the atomic ..data swap in the volume), and issues without a restart."""
    keys_volume = next(v for v in server["spec"]["template"]["spec"]["volumes"]
                       if v["name"] == "keys")
    directory, mode, gid = secret_volumes[keys_volume["secret"]["secretName"]]
    current = {p.name: p.read_bytes() for p in (directory / "..data").iterdir()}
    new_id, new_secret = new_key()
    kubelet_secret_volume(directory, {**current, new_id: new_secret.encode()}, mode, gid)
    interval = int(values["config"]["keysReloadInterval"])
    for pod in server_pods:
        pid = pid_of(f"{pod}-vod-signer")
        grpc = Endpoint("127.0.0.1", 50051, pid, tokens["issuer"])

        def issues(g: Endpoint = grpc) -> str | None:
            out = g.call(f"{SERVICE}/IssueSignature", {"secret_id": new_id, "subject": "ci"})
            return out.stdout if out.returncode == 0 else None

        answer = wait_for(f"{pod}: the added key issues", 3 * interval + 5, issues)
        tencent_original(json.loads(answer)["signature"], new_secret)
        ok(f"{pod}: a key added to the Secret's files issues without a restart "
           f"(config.keysReloadInterval {interval} s; HMAC checked)")


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["run", "kube"])
    ap.add_argument("--image", required=True)
    ap.add_argument("--redis-image", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--scratch", required=True)
    args = ap.parse_args()
    # A CI runner that gives up sends SIGTERM: unwind, so every finally block cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        {"run": check_run, "kube": check_kube}[args.check](args)
    except Failure as e:
        print(f"  FAIL  {e}", flush=True)
        return 1
    print(f"image_check {args.check}: passed in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
