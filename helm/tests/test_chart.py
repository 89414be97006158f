#!/usr/bin/env python3
"""Offline checks of the vod-signer Helm chart (run by `cargo test --test helm`).

Lints the chart with Helm v4 (helm-python-sdk, no helm binary, no cluster), renders it with many
value sets, validates every rendered manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate), asserts the properties the deployment relies on, checks that bad values
are refused, and, when VOD_SIGNER_BIN names the built binary, starts it with the configuration
the chart renders.

Usage: python helm/tests/test_chart.py   (needs the packages of helm/tests/requirements.txt)
Exit status 0 when every check passed.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "vod-signer"
RELEASE = "rel"
NAMESPACE = "vod"
# The chart's floor (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]

# Every flag of `vod-signer serve` the chart may render (SPEC sections 5 and 6).
KNOWN_FLAGS = {
    "listen", "metrics-listen", "keys-dir", "active-key", "redis-url", "redis-username",
    "redis-password-file", "default-ttl", "max-ttl", "leeway", "key-prefix", "store-timeout-ms",
    "health-interval-ms", "drain-timeout", "max-concurrent-calls", "max-queued-calls",
    "queue-timeout-ms", "tls-cert", "tls-key",
    "tls-client-ca", "caller-policy", "no-reflection", "min-replicas-ack", "events-maxlen",
    "quota-per-subject", "quota-per-secret-id", "max-outstanding-per-subject", "log-format",
    "log-level", "runtime", "worker-threads", "otlp-endpoint",
    # Added by the service beyond SPEC section 6 (docs/operating.md "Running it for real").
    "health-listen", "keys-reload-interval", "tls-reload-interval", "redis-tls-ca",
    "redis-tls-cert", "redis-tls-key", "redis-memory-reserve", "allow-evicting-redis",
    # Upload completion and its notifications (SPEC section 6, docs/lifecycle.md).
    "completion-window", "notify-url", "notify-mode", "notify-secret-file", "notify-max-age",
    "notify-timeout", "notify-concurrency",
}
STANDARD_LABELS = {
    "app.kubernetes.io/name": "vod-signer",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "vod-signer-0.1.0",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/part-of": "vod-signer",
}
# Metric families whose names SPEC section 6 fixes, plus those docs/observability.md adds
# (vodsigner_store_up, vodsigner_store_records, vodsigner_trace_spans_dropped_total). The alerts and the dashboard may use only
# these; the dashboard has a panel for each.
METRIC_FAMILIES = {
    "vodsigner_requests_total", "vodsigner_request_duration_seconds",
    "vodsigner_store_duration_seconds", "vodsigner_store_errors_total",
    "vodsigner_inflight_requests", "vodsigner_build_info", "vodsigner_active_key_missing",
    "vodsigner_store_up", "vodsigner_store_records", "vodsigner_trace_spans_dropped_total",
    "vodsigner_redis_evicted_keys", "vodsigner_redis_memory_ratio", "vodsigner_store_resets_total",
    "vodsigner_redis_evicting", "vodsigner_admission_wait_seconds",
    "vodsigner_notifications_total", "vodsigner_notification_oldest_seconds",
    "vodsigner_uploads_awaiting_completion", "vodsigner_uploads_abandoned_total",
}
# The alerts of docs/observability.md ("Metrics, logs and what to alert on"), plus the active key one.
ALERTS = {
    "VodSignerStoreDown", "VodSignerStoreErrors", "VodSignerReplaysOrForgeries",
    "VodSignerCallersRefused", "VodSignerSheddingLoad", "VodSignerSlow",
    "VodSignerIssuedButNotConsumed", "VodSignerActiveKeyMissing",
    # Redis memory (docs/redis.md "Redis memory").
    "VodSignerRedisEvicting", "VodSignerRedisEvictedKeys", "VodSignerRedisMemoryHigh",
    "VodSignerStoreFull", "VodSignerStoreReset",
    # Upload notifications (docs/lifecycle.md).
    "VodSignerNotificationsDeadLettered", "VodSignerNotificationsDelayed",
    "VodSignerUploadsAbandoned",
}
SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
INLINE = {"keys": {"inline": {SECRET_ID: SECRET_KEY}}, "callerPolicy": {"allowAnyCaller": True}}

PASSED = 0
FAILED: list[str] = []


def check(condition: Any, what: str) -> bool:
    """Records one check and prints it."""
    global PASSED
    if condition:
        PASSED += 1
        print(f"  ok    {what}")
    else:
        FAILED.append(what)
        print(f"  FAIL  {what}")
    return bool(condition)


def section(title: str) -> None:
    print(f"\n== {title}")


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges value dicts, later ones winning."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


class Rendered:
    """One rendering: the manifests (parsed) and NOTES.txt."""

    def __init__(self, files: dict[str, str]):
        self.notes = ""
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["__source__"] = path
                    self.docs.append(doc)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.kind(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    @property
    def server(self) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-vod-signer")

    @property
    def container(self) -> dict[str, Any]:
        return self.server["spec"]["template"]["spec"]["containers"][0]

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap", f"{RELEASE}-vod-signer").get("data") or {}


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str | None:
    """The error message of a rendering that fails, or None when it renders."""
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except helm.HelmError as e:
        return f"{type(e).__name__}: {e}"
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def flags_of(r: Rendered) -> dict[str, str]:
    """Flags the chart passes to `serve`: from the ConfigMap env vars and the arguments."""
    flags: dict[str, str] = {}
    for key, value in r.config.items():
        flags[key.removeprefix("VOD_SIGNER_").lower().replace("_", "-")] = value
    args = r.container["args"]
    for arg in args[1:]:
        name, _, value = arg.removeprefix("--").partition("=")
        flags[name] = value
    return flags


class quiet_stderr:
    """Drops the Go library's log lines for `fail` calls, which lint reports as INFO (lint
    renders with the defaults, which the chart refuses); passes any other line through."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = tempfile.TemporaryFile()
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        for line in self.file.read().decode(errors="replace").splitlines():
            if "funcMap fail" not in line:
                print(line, file=sys.stderr)
        self.file.close()


# --------------------------------------------------------------------------- generic checks


def validate_manifests(r: Rendered, label: str) -> None:
    """Every manifest against the Kubernetes schemas; the ServiceMonitor CRD by hand."""
    problems = []
    for doc in r.docs:
        body = {k: v for k, v in doc.items() if k != "__source__"}
        if body["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # CRDs: kubernetes-validate has no schema for them; checked field by field
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{body['kind']}/{body['metadata']['name']} ({version}): "
                                f"{'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(e.message)
    kinds = sorted({d["kind"] for d in r.docs})
    check(not problems, f"[{label}] {len(r.docs)} manifests ({', '.join(kinds)}) valid against "
                        f"Kubernetes {' and '.join(KUBE_VERSIONS)} (strict)"
          + ("".join(f"\n          {p}" for p in problems)))


def check_common(r: Rendered, label: str) -> None:
    """Properties every rendering must have."""
    validate_manifests(r, label)
    bad_labels = [f"{d['kind']}/{d['metadata']['name']}" for d in r.docs
                  if not selects(STANDARD_LABELS, d["metadata"].get("labels", {}))
                  or d["metadata"]["labels"].get("app.kubernetes.io/component") not in
                  ("server", "redis")]
    check(not bad_labels, f"[{label}] every resource has the app.kubernetes.io/* labels, "
                          f"helm.sh/chart and a component {bad_labels or ''}")
    check(all(d["metadata"].get("namespace") == NAMESPACE for d in r.docs),
          f"[{label}] every resource is in the release namespace")
    names = [(d["kind"], d["metadata"]["name"]) for d in r.docs]
    check(len(names) == len(set(names)), f"[{label}] no two resources share kind and name")

    deployments = r.kind("Deployment")
    for dep in deployments:
        name = dep["metadata"]["name"]
        selector = dep["spec"]["selector"]["matchLabels"]
        check(selects(selector, pod_labels(dep)), f"[{label}] {name}: selector matches its pods")
        others = [o for o in deployments if o is not dep and selects(selector, pod_labels(o))]
        check(not others, f"[{label}] {name}: selector matches no other Deployment's pods")
        spec = dep["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type")
              == "RuntimeDefault", f"[{label}] {name}: pod runs as non-root with seccomp RuntimeDefault")
        check(spec.get("automountServiceAccountToken") is False,
              f"[{label}] {name}: no Kubernetes API token mounted")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False
                  and sc.get("readOnlyRootFilesystem") is True
                  and sc.get("runAsNonRoot") is True
                  and sc.get("capabilities", {}).get("drop") == ["ALL"]
                  and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
                  and not sc.get("privileged"),
                  f"[{label}] {name}/{c['name']}: non-root, read-only root filesystem, no "
                  "privilege escalation, all capabilities dropped, seccomp RuntimeDefault")
            res = c.get("resources", {})
            check(all(k in res.get(kind, {}) for kind in ("requests", "limits")
                      for k in ("cpu", "memory")),
                  f"[{label}] {name}/{c['name']}: CPU and memory requests and limits")
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in spec.get("volumes", [])}
            check(mounts <= volumes, f"[{label}] {name}/{c['name']}: every mount has a volume")

    for svc in r.kind("Service"):
        targets = [d for d in deployments if selects(svc["spec"]["selector"], pod_labels(d))]
        check(len(targets) == 1, f"[{label}] Service {svc['metadata']['name']} selects the pods "
                                 "of exactly one Deployment")
        if targets:
            port_names = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"]
                          for p in c.get("ports", [])}
            check(all(p["targetPort"] in port_names for p in svc["spec"]["ports"]),
                  f"[{label}] Service {svc['metadata']['name']}: each targetPort is a named "
                  "container port")


def check_server(r: Rendered, label: str, values: dict[str, Any]) -> None:
    """Properties of the vod-signer Deployment whatever the values."""
    dep, c = r.server, r.container
    spec = dep["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    grpc_port = ports.get("grpc")
    check(isinstance(grpc_port, int), f"[{label}] container port named grpc ({grpc_port})")
    tls = bool(values.get("tls", {}).get("secretName"))
    # With TLS on the gRPC port the probes use the plaintext health-only port.
    probe_port_name = "health" if tls else "grpc"
    probe_port = ports.get(probe_port_name)
    if tls:
        check(isinstance(probe_port, int) and probe_port != grpc_port
              and r.config.get("VOD_SIGNER_HEALTH_LISTEN") == f"0.0.0.0:{probe_port}",
              f"[{label}] TLS on the gRPC port: a plaintext health port {probe_port} "
              "(--health-listen) for the kubelet's gRPC probes")
    else:
        check("VOD_SIGNER_HEALTH_LISTEN" not in r.config and "health" not in ports,
              f"[{label}] no TLS: no separate health port, the probes use the gRPC port")
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = c.get(probe_name)
        if not check(probe is not None, f"[{label}] {probe_name} present"):
            continue
        port = probe.get("grpc", {}).get("port")
        check(isinstance(port, int) and not isinstance(port, bool) and port == probe_port,
              f"[{label}] {probe_name}: native gRPC probe, port is the integer {port} = the "
              f"{probe_port_name} container port")
    service = c["readinessProbe"].get("grpc", {}).get("service", "")
    check(service in ("vodsigner.v1.SignatureService", ""),
          f"[{label}] readiness checks health service {service!r}")
    live = c["livenessProbe"]
    check(live["failureThreshold"] * live["periodSeconds"] >= 120,
          f"[{label}] liveness tolerates {live['failureThreshold'] * live['periodSeconds']} s "
          "of NOT_SERVING (a Redis outage does not restart every pod)")
    strategy = dep["spec"]["strategy"]
    check(strategy["type"] == "RollingUpdate"
          and strategy["rollingUpdate"]["maxUnavailable"] == 0
          and strategy["rollingUpdate"]["maxSurge"] not in (0, "0", "0%"),
          f"[{label}] rolling update: surge {strategy['rollingUpdate']['maxSurge']}, "
          "maxUnavailable 0")
    drain = int(r.config.get("VOD_SIGNER_DRAIN_TIMEOUT", "-1"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec["terminationGracePeriodSeconds"]
    check(drain >= 0 and grace > drain + pre_stop,
          f"[{label}] terminationGracePeriodSeconds {grace} > --drain-timeout {drain} + preStop "
          f"sleep {pre_stop}")
    spread = spec.get("topologySpreadConstraints", [])
    check(any(t["topologyKey"] == "kubernetes.io/hostname"
              and selects(t["labelSelector"]["matchLabels"], pod_labels(dep))
              and t["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
              for t in spread),
          f"[{label}] topology spread across nodes over this release's server pods")
    check(c["args"][0] == "serve", f"[{label}] the container runs `serve`")
    # Kubernetes' Service links would put VOD_SIGNER_PORT, VOD_SIGNER_SERVICE_HOST, ... (the
    # release's Services are named vod-signer*) next to the VOD_SIGNER_* flags the binary reads.
    check(spec.get("enableServiceLinks") is False,
          f"[{label}] no Service link variables in the server pods (enableServiceLinks false)")
    env_from = [e["configMapRef"]["name"] for e in c.get("envFrom", [])]
    check(env_from == [f"{RELEASE}-vod-signer"], f"[{label}] settings come from the ConfigMap")
    bad_env = [k for k in r.config if not k.startswith("VOD_SIGNER_")
               or k.removeprefix("VOD_SIGNER_").lower().replace("_", "-") not in KNOWN_FLAGS]
    check(not bad_env, f"[{label}] every ConfigMap key is VOD_SIGNER_<FLAG> of a known flag "
                       f"{bad_env or ''}")
    bad_args = [a for a in c["args"][1:]
                if not a.startswith("--") or a[2:].partition("=")[0] not in KNOWN_FLAGS]
    check(not bad_args, f"[{label}] every argument is a known flag {bad_args or ''}")
    check(r.config.get("VOD_SIGNER_LISTEN") == f"0.0.0.0:{grpc_port}",
          f"[{label}] --listen is the grpc container port")
    keys_mount = [m for m in c["volumeMounts"] if m["name"] == "keys"]
    keys_volume = [v for v in spec["volumes"] if v["name"] == "keys"]
    check(keys_mount and keys_mount[0]["mountPath"] == "/etc/vod-signer/keys"
          and keys_mount[0].get("readOnly") is True
          and r.config.get("VOD_SIGNER_KEYS_DIR") == "/etc/vod-signer/keys",
          f"[{label}] keys Secret mounted read-only at --keys-dir /etc/vod-signer/keys")
    keys_values = values.get("keys", {})
    expected_secret = keys_values.get("existingSecret") or f"{RELEASE}-vod-signer-keys"
    check(keys_volume and keys_volume[0]["secret"]["secretName"] == expected_secret,
          f"[{label}] keys volume is Secret {expected_secret}")
    if keys_values.get("activeKey"):
        check(r.config.get("VOD_SIGNER_ACTIVE_KEY") == keys_values["activeKey"],
              f"[{label}] --active-key from keys.activeKey")
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    check(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")),
          f"[{label}] pod template carries checksum/config")
    # Every file flag points into a mounted volume.
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for flag in ("tls-cert", "tls-key", "tls-client-ca", "caller-policy", "redis-password-file",
                 "redis-tls-ca", "redis-tls-cert", "redis-tls-key"):
        value = flags_of(r).get(flag)
        if value:
            check(any(value.startswith(m + "/") for m in mounts),
                  f"[{label}] --{flag} {value} lies in a mounted Secret")


# --------------------------------------------------------------------------- alerts, dashboard

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# A metric name in PromQL: not part of a recording rule's level:name:ops name.
METRIC_NAME = re.compile(r"(?<![:\w])vodsigner_[a-z_]+(?![:\w])")


def metric_families(exprs: list[str]) -> set[str]:
    """The vodsigner_* families the expressions read (a histogram's _bucket, _sum and _count
    count as the histogram)."""
    def family(name: str) -> str:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base if base in METRIC_FAMILIES else name
    return {family(name) for e in exprs for name in METRIC_NAME.findall(e)}


def check_prometheus_rule(r: Rendered, label: str, extra_labels: dict[str, str]) -> None:
    """The PrometheusRule: exactly files/alerts.rules.yaml, the CRD's fields checked by hand."""
    rule = r.one("PrometheusRule", f"{RELEASE}-vod-signer")
    shipped = yaml.safe_load((CHART / "files" / "alerts.rules.yaml").read_text())
    check(rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == NAMESPACE
          and selects(extra_labels, rule["metadata"]["labels"]),
          f"[{label}] PrometheusRule monitoring.coreos.com/v1 in the release namespace, with the "
          "extra labels (for the Prometheus' ruleSelector)")
    check(rule["spec"] == shipped,
          f"[{label}] the PrometheusRule's spec is files/alerts.rules.yaml exactly (what promtool tests)")
    problems = []
    alerts = {}
    for group in rule["spec"].get("groups", []):
        if not isinstance(group.get("name"), str) or not group.get("rules"):
            problems.append(f"group {group.get('name')!r}: needs a name and rules")
        for rr in group.get("rules", []):
            name = rr.get("alert") or rr.get("record")
            if bool(rr.get("alert")) == bool(rr.get("record")) or not isinstance(rr.get("expr"), str):
                problems.append(f"{name}: needs exactly one of alert/record, and an expr")
            if "for" in rr and not DURATION.match(str(rr["for"])):
                problems.append(f"{name}: for {rr['for']!r} is not a duration")
            for field in ("labels", "annotations"):
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in rr.get(field, {}).items()):
                    problems.append(f"{name}: {field} must map strings to strings")
            if rr.get("alert"):
                alerts[rr["alert"]] = rr
    check(not problems, f"[{label}] PrometheusRule (CRD, checked by hand): groups, rules, durations, "
                        f"string labels and annotations {problems or ''}")
    check(set(alerts) == ALERTS, f"[{label}] the alerts are the README's list plus the active key "
                                 f"one {sorted(set(alerts) ^ ALERTS) or ''}")
    bare = [a for a, rr in alerts.items()
            if rr.get("labels", {}).get("severity") not in ("critical", "warning")
            or not all(rr.get("annotations", {}).get(k) for k in ("summary", "description", "runbook"))]
    check(not bare, f"[{label}] every alert has a severity (critical or warning) and summary, "
                    f"description and runbook annotations {bare or ''}")
    exprs = [rr["expr"] for g in shipped["groups"] for rr in g["rules"]]
    unknown = metric_families(exprs) - METRIC_FAMILIES
    check(not unknown, f"[{label}] the rules read only the metric names of SPEC section 6 and the "
                       f"README {sorted(unknown) or ''}")


def check_dashboard(r: Rendered, label: str, folder: str) -> None:
    """The Grafana dashboard ConfigMap: sidecar label, the JSON of files/dashboard.json, a panel
    per metric family."""
    cm = r.one("ConfigMap", f"{RELEASE}-vod-signer-dashboard")
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1"
          and cm["metadata"].get("annotations", {}).get("grafana_folder") == folder,
          f"[{label}] dashboard ConfigMap labelled grafana_dashboard: \"1\" for the Grafana "
          f"sidecar, folder annotation {folder!r}")
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    try:
        rendered = json.loads(cm["data"]["vod-signer.json"])
    except (KeyError, ValueError) as e:
        rendered = {"error": str(e)}
    check(rendered == shipped, f"[{label}] the ConfigMap's vod-signer.json is files/dashboard.json")
    panels = [p for p in shipped.get("panels", []) if p.get("type") != "row"]
    ids = [p.get("id") for p in shipped.get("panels", [])]
    variables = {v["name"] for v in shipped.get("templating", {}).get("list", [])}
    check(shipped.get("uid") and len(ids) == len(set(ids)) and {"datasource", "namespace", "job"} <= variables
          and all(p.get("datasource", {}).get("uid") == "${datasource}" for p in panels),
          f"[{label}] dashboard: a uid, unique panel ids, datasource/namespace/job variables, every "
          "panel on the chosen data source")
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    unscoped = [e for e in exprs for name in METRIC_NAME.findall(e)
                if not re.search(re.escape(name) + r'\{[^}]*namespace=~"\$namespace", job=~"\$job"', e)]
    check(not unscoped, f"[{label}] every query is scoped to $namespace and $job {unscoped[:2] or ''}")
    used = metric_families(exprs)
    check(used == METRIC_FAMILIES, f"[{label}] the dashboard has a panel for every metric family "
                                   f"and reads no other {sorted(used ^ METRIC_FAMILIES) or ''}")


# --------------------------------------------------------------------------- the binary


def binary_flags(binary: str) -> set[str]:
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"--([a-z][a-z0-9-]+)", out.stdout)) - {"help", "version"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVING, NOT_SERVING = 1, 2


def grpc_health(port: int, service: str, timeout: float = 3.0) -> int | None:
    """What the kubelet's gRPC probe does: grpc.health.v1.Health/Check over plaintext HTTP/2.

    A minimal h2c client (one unary call, HPACK literals only). Returns the status enum
    (1 SERVING, 2 NOT_SERVING), or None when the call gave no answer (error or unknown service)."""

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def literal(index: int, value: bytes) -> bytes:  # literal without indexing, indexed name
        prefix = bytes([index]) if index < 15 else bytes([15, index - 15])
        return prefix + bytes([len(value)]) + value

    path = b"/grpc.health.v1.Health/Check"
    headers = (b"\x83\x86" + literal(4, path) + literal(1, b"localhost")
               + literal(31, b"application/grpc") + b"\x00\x02te\x08trailers")
    body = service.encode()
    message = (b"\x0a" + bytes([len(body)]) + body) if body else b""
    grpc = b"\x00" + len(message).to_bytes(4, "big") + message
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
                         + frame(1, 4, 1, headers) + frame(0, 1, 1, grpc))
            buffer, data = b"", b""
            while True:
                while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    buffer += chunk
                length = int.from_bytes(buffer[:3], "big")
                kind, flags = buffer[3], buffer[4]
                stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                if kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                    sock.sendall(frame(4, 1, 0, b""))
                elif kind == 6 and not flags & 1:  # PING: answer
                    sock.sendall(frame(6, 1, 0, payload))
                elif kind == 7 or (kind == 3 and stream == 1):  # GOAWAY, RST_STREAM
                    return None
                elif kind == 0 and stream == 1:
                    data += payload
                if stream == 1 and flags & 1 and kind in (0, 1):  # END_STREAM
                    break
    except OSError:
        return None
    # DATA: 5-byte gRPC prefix, then HealthCheckResponse { ServingStatus status = 1; }.
    response = data[5:]
    if len(response) >= 2 and response[0] == 0x08:
        return response[1]
    return 0 if len(data) >= 5 else None


def poll_health(port: int, service: str, want: int, seconds: float = 5.0) -> int | None:
    """Asks until the status is `want` or the time is up; returns the last answer."""
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        status = grpc_health(port, service)
        if status == want:
            break
        time.sleep(0.2)
    return status


def self_signed_tls(directory: str) -> bool:
    """Writes tls.crt and tls.key (a self-signed P-256 certificate for localhost) with openssl."""
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", f"{directory}/tls.key", "-out", f"{directory}/tls.crt"],
                       check=True, capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def run_binary(binary: str, r: Rendered, label: str, expect_metrics: bool,
               mounts: dict[str, dict[str, bytes]] | None = None,
               expect_health: int = SERVING) -> str:
    """Starts `vod-signer` with the chart's ConfigMap and arguments, then SIGTERMs it; returns
    what its metrics endpoint served (empty without expect_metrics).

    The keys Secret, and each mount path of `mounts` (path -> files), become temporary
    directories; the arguments and variables naming them are rewritten to match."""
    body = ""
    with tempfile.TemporaryDirectory() as tmp:
        secret = r.one("Secret", f"{RELEASE}-vod-signer-keys")
        files = {"/etc/vod-signer/keys": {k: base64.b64decode(v) for k, v in secret["data"].items()}}
        files.update(mounts or {})
        moved = {}
        for i, (mount, content) in enumerate(files.items()):
            moved[mount] = Path(tmp, str(i))
            moved[mount].mkdir()
            for name, data in content.items():
                (moved[mount] / name).write_bytes(data)

        def relocate(value: str) -> str:
            for mount, path in moved.items():
                value = value.replace(mount, str(path))
            return value

        env = {k: v for k, v in os.environ.items() if not k.startswith("VOD_SIGNER_")}
        env.pop("RUST_LOG", None)
        env.update({k: relocate(v) for k, v in r.config.items()})
        args = [relocate(a) for a in r.container["args"]]
        ports = [int(r.config[k].rpartition(":")[2])
                 for k in ("VOD_SIGNER_LISTEN", "VOD_SIGNER_HEALTH_LISTEN") if k in r.config]
        proc = subprocess.Popen([binary, *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 15
            waiting = list(ports)
            while waiting and time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
                    waiting.pop(0)
                except OSError:
                    time.sleep(0.1)
            listening = not waiting and proc.poll() is None
            check(listening, f"[{label}] the binary starts with the rendered configuration and "
                             f"listens on {' and '.join(map(str, ports))}")
            names = {SERVING: "SERVING", NOT_SERVING: "NOT_SERVING", None: "no answer"}
            if listening and "VOD_SIGNER_HEALTH_LISTEN" in r.config:
                check(grpc_health(ports[0], "") is None,
                      f"[{label}] the gRPC port speaks TLS only: a plaintext probe there gets no "
                      "answer (hence the health port)")
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = r.container[probe_name]["grpc"]
                service = probe.get("service", "")
                status = poll_health(probe["port"], service, expect_health) if listening else None
                check(status == expect_health,
                      f"[{label}] {probe_name} as the kubelet runs it (plaintext gRPC health, port "
                      f"{probe['port']}, service {service!r}): {names.get(status, status)}")
            if expect_metrics and listening:
                metrics_port = int(r.config["VOD_SIGNER_METRICS_LISTEN"].rpartition(":")[2])
                for _ in range(50):
                    try:
                        with urllib.request.urlopen(
                                f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
                            body = resp.read().decode()
                        break
                    except OSError:
                        time.sleep(0.1)
                check("vodsigner_" in body,
                      f"[{label}] the metrics port the chart scrapes serves vodsigner_* metrics")
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=int(r.config["VOD_SIGNER_DRAIN_TIMEOUT"]) + 10)
            except subprocess.TimeoutExpired:
                code = None
            stderr = proc.stderr.read() if proc.stderr else ""
            check(code == 0, f"[{label}] SIGTERM: the binary exits 0 (exit {code})"
                  + ("" if code == 0 else "\n" + stderr[-2000:]))
            lines = [line for line in stderr.splitlines() if line.strip()]
            json_lines = 0
            for line in lines:
                try:
                    json.loads(line)
                    json_lines += 1
                except ValueError:
                    pass
            check(lines and json_lines == len(lines),
                  f"[{label}] logs are JSON (VOD_SIGNER_LOG_FORMAT honoured): {json_lines} lines")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return body


# --------------------------------------------------------------------------- documentation


def schema_leaves(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Value paths the schema names, down to objects passed through as given."""
    out = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key == "global":
            continue
        if "properties" in sub:
            out += schema_leaves(sub, path + ".")
        else:
            out.append(path)
    return out


def documented_in_values_yaml(text: str) -> dict[str, bool]:
    """For each key line of values.yaml: whether a comment line stands right above it."""
    stack: list[tuple[int, str]] = []
    result: dict[str, bool] = {}
    previous = ""
    for line in text.splitlines():
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([s[1] for s in stack] + [m.group(2)])
            stack.append((indent, m.group(2)))
            result[path] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return result


# --------------------------------------------------------------------------- the checks


def main() -> int:
    started = time.monotonic()
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), "
          f"kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''}")
    print(f"chart: {CHART}")
    binary = os.environ.get("VOD_SIGNER_BIN", "")

    chart = helm.Chart.load(CHART)
    schema = chart.schema or {}
    defaults = chart.values

    section("Chart metadata and documentation")
    meta = chart.metadata
    check(meta.get("apiVersion") == "v2" and meta.get("name") == "vod-signer"
          and meta.get("type") == "application",
          "Chart.yaml: apiVersion v2, name vod-signer, type application")
    check(re.fullmatch(r"\d+\.\d+\.\d+", meta.get("version", "")) and meta.get("appVersion"),
          f"Chart.yaml: SemVer version {meta.get('version')}, appVersion {meta.get('appVersion')}")
    leaves = schema_leaves(schema)
    values_text = (CHART / "values.yaml").read_text()
    doc_map = documented_in_values_yaml(values_text)
    undocumented = [p for p in leaves if not doc_map.get(p)]
    check(not undocumented, f"values.yaml: each of the {len(leaves)} values has a comment line "
                            f"above it {undocumented or ''}")
    readme = (CHART / "README.md").read_text()
    missing = [p for p in leaves if f"`{p}`" not in readme]
    check(not missing, f"README.md: the values table names all {len(leaves)} values {missing or ''}")

    def flatten(d: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= flatten(v, prefix + k + ".")
        return out

    default_paths = flatten(defaults)
    check(all(p in default_paths for p in leaves),
          f"values.schema.json names no value that values.yaml lacks "
          f"{[p for p in leaves if p not in default_paths] or ''}")
    spec_values = ["replicaCount", "image.repository", "image.tag", "image.pullPolicy",
                   "keys.existingSecret", "keys.inline", "keys.activeKey", "redis.url",
                   "redis.existingSecret", "redis.internal.enabled", "tls.secretName",
                   "tls.clientCaSecretName", "callerPolicy.existingSecret", "service.port",
                   "metrics.serviceMonitor.enabled", "autoscaling.enabled",
                   "podDisruptionBudget.enabled", "networkPolicy.enabled", "resources",
                   "livenessProbe", "readinessProbe"]
    check(all(p in default_paths for p in spec_values),
          f"the {len(spec_values)} value names fixed by SPEC section 6 exist")
    check(defaults["replicaCount"] == 2 and defaults["config"]["logFormat"] == "json"
          and defaults["config"]["drainTimeout"] == 20,
          "defaults: 2 replicas, JSON logs, 20 s drain")
    check("NOT FOR PRODUCTION" in values_text, "values.yaml marks redis.internal NOT FOR PRODUCTION")

    section("helm lint (Helm v4, strict)")
    redis_values = {"keys": {"existingSecret": "vod-signer-keys"}, "redis": {"url": "redis://redis:6379/0"},
                    "callerPolicy": {"existingSecret": "vod-signer-callers"}}
    lint_sets = {"defaults": {}, "inline, 1 replica": merge(INLINE, {"replicaCount": 1}),
                 "redis.url": redis_values}
    for label, values in lint_sets.items():
        with quiet_stderr():
            report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        check(not report.get("errors") and not findings,
              f"lint [{label}]: no warnings or errors "
              f"{[m['error'] for m in findings] + report.get('errors', []) or ''}")

    section("Defaults: the chart needs keys, and 2 replicas need a Redis")
    err = render_error(chart, {})
    check(err and "no keys" in err and "keys.existingSecret" in err,
          f"defaults alone are refused, naming keys.existingSecret: {err}")
    err = render_error(chart, INLINE)
    check(err and "replicaCount=2 needs a Redis" in err and "redis.url" in err,
          f"defaults + keys.inline are refused (2 replicas, no Redis): {err}")

    section("keys.inline, replicaCount 1: the embedded in-memory store")
    values = merge(INLINE, {"replicaCount": 1})
    r = render(chart, values)
    check_common(r, "in-memory")
    check_server(r, "in-memory", values)
    check(r.server["spec"]["replicas"] == 1, "[in-memory] 1 replica")
    check("VOD_SIGNER_REDIS_URL" not in r.config, "[in-memory] no --redis-url rendered")
    secret = r.one("Secret", f"{RELEASE}-vod-signer-keys")
    check({k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
          == {SECRET_ID: SECRET_KEY}, "[in-memory] inline keys land in the chart's Secret")
    check(re.fullmatch(r"[0-9a-f]{64}",
                       r.server["spec"]["template"]["metadata"]["annotations"].get("checksum/keys", "")),
          "[in-memory] pod template carries checksum/keys for the inline keys")
    rotating = render(chart, merge(INLINE, {"replicaCount": 1, "keys": {"inline": {
        "AKIDnext": "next-key", ".active": "AKIDnext"}}}))
    data = rotating.one("Secret", f"{RELEASE}-vod-signer-keys")["data"]
    check(set(data) == {SECRET_ID, "AKIDnext", ".active"}
          and base64.b64decode(data[".active"]) == b"AKIDnext"
          and "VOD_SIGNER_ACTIVE_KEY" not in rotating.config,
          "[in-memory] two inline keys with an .active entry: no --active-key, the Secret names it")
    check("IN-MEMORY" in r.notes and "keys.inline" in r.notes,
          "[in-memory] NOTES warn about the in-memory store and inline keys")
    unset = ["VOD_SIGNER_DEFAULT_TTL", "VOD_SIGNER_MAX_TTL", "VOD_SIGNER_EVENTS_MAXLEN",
             "VOD_SIGNER_RUNTIME", "VOD_SIGNER_ACTIVE_KEY", "VOD_SIGNER_REDIS_USERNAME",
             "VOD_SIGNER_OTLP_ENDPOINT"]
    check(not any(k in r.config for k in unset),
          "[in-memory] settings left null are not rendered (the binary's defaults apply)")
    check(r.container["args"] == ["serve"], "[in-memory] no optional arguments by default")
    check(r.config.get("VOD_SIGNER_LOG_FORMAT") == "json", "[in-memory] --log-format json")
    in_memory = r

    section("redis.url + keys.existingSecret + redis.existingSecret: production shape")
    values = merge(redis_values, {"redis": {"existingSecret": "redis-auth", "username": "signer",
                                            "url": "redis+sentinel://s1:26379,s2:26379/mymaster"},
                                  "keys": {"activeKey": SECRET_ID}})
    r = render(chart, values)
    check_common(r, "production")
    check_server(r, "production", values)
    check(r.server["spec"]["replicas"] == 2, "[production] 2 replicas by default")
    check(r.config.get("VOD_SIGNER_REDIS_URL") == "redis+sentinel://s1:26379,s2:26379/mymaster",
          "[production] a Sentinel URL is passed through unchanged")
    check(r.config.get("VOD_SIGNER_REDIS_USERNAME") == "signer", "[production] --redis-username")
    check("--redis-password-file=/etc/vod-signer/redis/password" in r.container["args"],
          "[production] --redis-password-file from the mounted redis.existingSecret")
    vol = [v for v in r.server["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-password"]
    check(vol and vol[0]["secret"]["secretName"] == "redis-auth",
          "[production] the password Secret is a volume, never an env var")
    check(not any("password" in json.dumps(e).lower() for e in r.container.get("env", []))
          and not any("PASSWORD" in k for k in r.config),
          "[production] no password in the environment or the ConfigMap")
    check(not r.kind("Secret"), "[production] keys.existingSecret: the chart makes no Secret")
    check("checksum/keys" not in r.server["spec"]["template"]["metadata"]["annotations"],
          "[production] no checksum/keys without inline keys")
    pdb = r.one("PodDisruptionBudget")
    check(pdb["spec"]["selector"]["matchLabels"] == r.server["spec"]["selector"]["matchLabels"]
          and pdb["spec"].get("maxUnavailable") == 1,
          "[production] PodDisruptionBudget (maxUnavailable 1) over the server pods")
    svc = r.one("Service", f"{RELEASE}-vod-signer")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    check(set(ports) == {"grpc", "metrics"} and ports["grpc"]["port"] == 50051
          and ports["grpc"]["targetPort"] == "grpc",
          "[production] Service ports named grpc (50051) and metrics")
    check(not r.kind("HorizontalPodAutoscaler") and not r.kind("NetworkPolicy")
          and not r.kind("ServiceMonitor") and not r.kind("PrometheusRule")
          and [c["metadata"]["name"] for c in r.kind("ConfigMap")] == [f"{RELEASE}-vod-signer"],
          "[production] optional resources off by default (HPA, NetworkPolicy, ServiceMonitor, "
          "PrometheusRule, dashboard ConfigMap)")
    check("Redis at redis+sentinel://" in r.notes and "port-forward svc/rel-vod-signer 50051:50051"
          in r.notes and "grpcurl -plaintext localhost:50051 list" in r.notes
          and "grpc.health.v1.Health/Check" in r.notes,
          "[production] NOTES: port-forward and grpcurl commands")
    rr = render(chart, merge(redis_values, {"redis": {"url": "rediss://signer:s3cret@redis:6380/0"}}))
    check("s3cret" not in rr.notes and "rediss://***@redis:6380/0" in rr.notes,
          "[production] NOTES mask a password put in redis.url")
    for url in ("redis+cluster://h1:6379,h2:6379", "rediss://redis.example:6380/0"):
        rr = render(chart, merge(redis_values, {"redis": {"url": url}}))
        check(rr.config.get("VOD_SIGNER_REDIS_URL") == url, f"[production] {url} passed through")
    production = r

    section("redis.internal.enabled: the throwaway Redis")
    values = merge(INLINE, {"redis": {"internal": {"enabled": True}},
                            "networkPolicy": {"enabled": True,
                                              "clientPodLabels": {"vod-signer-client": "true"}}})
    r = render(chart, values)
    check_common(r, "internal redis")
    check_server(r, "internal redis", values)
    redis_dep = r.one("Deployment", f"{RELEASE}-vod-signer-redis")
    redis_svc = r.one("Service", f"{RELEASE}-vod-signer-redis")
    check(r.config.get("VOD_SIGNER_REDIS_URL") == f"redis://{RELEASE}-vod-signer-redis.{NAMESPACE}.svc:6379/0",
          "[internal redis] --redis-url points at the throwaway Redis Service")
    rc = redis_dep["spec"]["template"]["spec"]["containers"][0]
    check(redis_dep["spec"]["replicas"] == 1 and "--save" in rc["args"]
          and rc["args"][rc["args"].index("--save") + 1] == ""
          and rc["args"][rc["args"].index("--appendonly") + 1] == "no"
          and not any("persistentVolumeClaim" in v for v in
                      redis_dep["spec"]["template"]["spec"]["volumes"]),
          "[internal redis] one node, no RDB, no AOF, no persistent volume")
    check(selects(redis_svc["spec"]["selector"], pod_labels(redis_dep))
          and not selects(redis_svc["spec"]["selector"], pod_labels(r.server)),
          "[internal redis] its Service selects the Redis pod, not the signers")
    check("NOT FOR PRODUCTION" in r.notes, "[internal redis] NOTES say NOT FOR PRODUCTION")
    check("NOT FOR PRODUCTION" in (CHART / "templates" / "redis.yaml").read_text(),
          "[internal redis] the template says NOT FOR PRODUCTION")
    redis_np = r.one("NetworkPolicy", f"{RELEASE}-vod-signer-redis")
    peers = redis_np["spec"]["ingress"][0]["from"]
    check(selects(redis_np["spec"]["podSelector"]["matchLabels"], pod_labels(redis_dep))
          and len(peers) == 1 and peers[0]["podSelector"]["matchLabels"]
          == r.server["spec"]["selector"]["matchLabels"]
          and redis_np["spec"]["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}],
          "[internal redis] NetworkPolicy: only the release's signer pods reach Redis on 6379")
    np = r.one("NetworkPolicy", f"{RELEASE}-vod-signer")
    check(np["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"vod-signer-client": "true"}}}]
          and np["spec"]["ingress"][1]["from"] == [{"podSelector": {}}]
          and np["spec"]["ingress"][1]["ports"] == [{"port": 9090, "protocol": "TCP"}],
          "[internal redis] NetworkPolicy: gRPC from vod-signer-client=true pods of the namespace; "
          "metrics, with no selector given, from the release's namespace only")

    section("notifications: push needs a URL and a signing secret; pull needs neither")
    for bad, needle in [
        ({"mode": "push"}, "needs notifications.url"),
        ({"mode": "push", "url": "http://app/hook"}, "notifications.existingSecret"),
        ({"url": "http://app/hook"}, "mode is not push"),
        ({"mode": "push", "url": "http://app/hook", "existingSecret": "s",
          "inlineSecret": "whsec_x"}, "exclusive"),
    ]:
        err = render_error(chart, merge(redis_values, {"notifications": bad}))
        check(err and needle in err, f"notifications {bad} refused, saying {needle!r}: {err}")
    pulled = render(chart, merge(redis_values, {"notifications": {"mode": "pull"}}))
    check("--notify-mode=pull" in pulled.container["args"]
          and not any(a.startswith("--notify-url") for a in pulled.container["args"]),
          "[pull] --notify-mode=pull, no URL and no secret")
    inline_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    pushed = render(chart, merge(redis_values, {"notifications": {
        "mode": "push", "url": "http://app.video.svc/hook", "inlineSecret": inline_secret}}))
    made = pushed.one("Secret", f"{RELEASE}-vod-signer-notify")
    check(base64.b64decode(made["data"]["secrets"]).decode() == inline_secret
          and "--notify-secret-file=/etc/vod-signer/notify/secrets" in pushed.container["args"],
          "[push, inline secret] the chart's Secret holds it, mounted as --notify-secret-file")

    section("Every optional feature on")
    values = merge(redis_values, {
        "keys": {"activeKey": SECRET_ID},
        "redis": {"url": "rediss://redis:6380/0", "existingSecret": "redis-auth", "username": "signer",
                  "tls": {"caSecretName": "redis-ca", "clientCertSecretName": "redis-client"}},
        "tls": {"secretName": "vod-signer-tls", "clientCaSecretName": "vod-signer-client-ca"},
        "callerPolicy": {"existingSecret": "vod-signer-callers"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
                    "grafanaDashboard": {"enabled": True, "folder": "Video"}},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                        "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "networkPolicy": {"enabled": True, "clientPodLabels": {"role": "app-server"},
                          "clientNamespaceLabels": {"team": "video"},
                          "metrics": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}},
        "config": {"defaultTtl": 600, "maxTtl": 7776000, "leeway": 30, "keyPrefix": "vs:",
                   "storeTimeoutMs": 300, "healthIntervalMs": 500, "maxConcurrentCalls": 2048,
                   "maxQueuedCalls": 0, "queueTimeoutMs": 250,
                   "drainTimeout": 15, "eventsMaxlen": 0, "logLevel": "debug",
                   "keysReloadInterval": 0, "tlsReloadInterval": 60,
                   "runtime": "multi-thread", "workerThreads": 2, "redisMemoryReserve": 0.25},
        "security": {"noReflection": True, "minReplicasAck": 1, "quotaPerSubject": "100/1h",
                     "quotaPerSecretId": "10000/1m", "maxOutstandingPerSubject": 5,
                     "allowEvictingRedis": True},
        "terminationGracePeriodSeconds": 25,
        "tracing": {"otlpEndpoint": "http://otel-collector.observability:4317"},
        "notifications": {"mode": "push", "url": "https://app.example/vod-events",
                          "existingSecret": "vod-signer-notify", "existingSecretKey": "whsec",
                          "completionWindow": "30m", "maxAge": "12h", "timeout": "10s",
                          "concurrency": 32},
    })
    r = render(chart, values)
    check_common(r, "all features")
    check_server(r, "all features", values)
    flags = flags_of(r)
    expected = {
        "tls-cert": "/etc/vod-signer/tls/tls.crt", "tls-key": "/etc/vod-signer/tls/tls.key",
        "tls-client-ca": "/etc/vod-signer/client-ca/ca.crt",
        "caller-policy": "/etc/vod-signer/caller-policy/policy.toml",
        "redis-password-file": "/etc/vod-signer/redis/password", "no-reflection": "",
        "min-replicas-ack": "1", "quota-per-subject": "100/1h", "quota-per-secret-id": "10000/1m",
        "max-outstanding-per-subject": "5", "allow-evicting-redis": "",
        "redis-memory-reserve": "0.25", "default-ttl": "600", "max-ttl": "7776000", "leeway": "30", "key-prefix": "vs:",
        "store-timeout-ms": "300", "health-interval-ms": "500", "max-concurrent-calls": "2048",
        "max-queued-calls": "0", "queue-timeout-ms": "250",
        "drain-timeout": "15", "events-maxlen": "0", "log-format": "json", "log-level": "debug",
        "runtime": "multi-thread", "worker-threads": "2", "active-key": SECRET_ID,
        "metrics-listen": "0.0.0.0:9090", "keys-dir": "/etc/vod-signer/keys",
        "listen": "0.0.0.0:50051", "redis-url": "rediss://redis:6380/0", "redis-username": "signer",
        "health-listen": "0.0.0.0:8081", "keys-reload-interval": "0", "tls-reload-interval": "60",
        "redis-tls-ca": "/etc/vod-signer/redis-tls-ca/ca.crt",
        "redis-tls-cert": "/etc/vod-signer/redis-tls-client/tls.crt",
        "redis-tls-key": "/etc/vod-signer/redis-tls-client/tls.key",
        "otlp-endpoint": "http://otel-collector.observability:4317",
        "notify-mode": "push", "notify-url": "https://app.example/vod-events",
        "notify-secret-file": "/etc/vod-signer/notify/whsec", "completion-window": "30m",
        "notify-max-age": "12h", "notify-timeout": "10s", "notify-concurrency": "32",
    }
    wrong = {k: (flags.get(k), v) for k, v in expected.items() if flags.get(k) != v}
    check(not wrong, f"[all features] each value renders its flag, integers as plain digits "
                     f"(7776000, not 7.776e+06), 0 kept {wrong or ''}")
    check(set(flags) == KNOWN_FLAGS,
          f"[all features] all {len(KNOWN_FLAGS)} flags of SPEC sections 5-6 can be rendered "
          f"{sorted(KNOWN_FLAGS ^ set(flags)) or ''}")
    spec = r.server["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    check(secrets == {"keys": "vod-signer-keys", "tls": "vod-signer-tls",
                      "client-ca": "vod-signer-client-ca", "caller-policy": "vod-signer-callers",
                      "redis-password": "redis-auth", "redis-tls-ca": "redis-ca",
                      "redis-tls-client": "redis-client", "notify-secret": "vod-signer-notify"},
          "[all features] keys, TLS, client CA, caller policy, Redis password, Redis CA, "
          "client certificate and notification signing Secrets mounted")
    check("replicas" not in r.server["spec"], "[all features] the HPA owns the replica count")
    hpa = r.one("HorizontalPodAutoscaler")
    check(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": f"{RELEASE}-vod-signer"}
          and hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
          and {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"},
          "[all features] HPA autoscaling/v2 on the Deployment, 3-12, CPU and memory targets")
    check(r.one("PodDisruptionBudget")["spec"] .get("minAvailable") == 2
          and "maxUnavailable" not in r.one("PodDisruptionBudget")["spec"],
          "[all features] PDB minAvailable 2")
    sm = r.one("ServiceMonitor")
    svc = r.one("Service", f"{RELEASE}-vod-signer")
    ep = sm["spec"]["endpoints"]
    check(sm["apiVersion"] == "monitoring.coreos.com/v1"
          and selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
          and not selects(sm["spec"]["selector"]["matchLabels"],
                          {"app.kubernetes.io/component": "redis", **STANDARD_LABELS})
          and sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
          and len(ep) == 1 and ep[0]["port"] == "metrics" and ep[0]["path"] == "/metrics"
          and ep[0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
          and sm["metadata"]["labels"].get("release") == "prom"
          and sm["metadata"]["name"] == f"{RELEASE}-vod-signer",
          "[all features] ServiceMonitor (CRD, checked by hand): selects the server Service, "
          "scrapes its metrics port at /metrics, carries the extra labels")
    check_prometheus_rule(r, "all features", {"release": "prom"})
    check_dashboard(r, "all features", "Video")
    np = r.one("NetworkPolicy", f"{RELEASE}-vod-signer")
    server_pods = pod_labels(r.server)
    check(np["spec"]["podSelector"]["matchLabels"] == r.server["spec"]["selector"]["matchLabels"]
          and selects(np["spec"]["podSelector"]["matchLabels"], server_pods)
          and np["spec"]["policyTypes"] == ["Ingress"],
          "[all features] NetworkPolicy applies to exactly the server pods")
    grpc_rules = [rule for rule in np["spec"]["ingress"]
                  if any(p.get("port") == 50051 for p in rule.get("ports", []))]
    check(len(grpc_rules) == 1 and grpc_rules[0]["from"] == [
        {"podSelector": {"matchLabels": {"role": "app-server"}},
         "namespaceSelector": {"matchLabels": {"team": "video"}}}],
          "[all features] gRPC 50051 reachable only from pods role=app-server in namespaces team=video")
    check(all(rule.get("ports") and rule.get("from") for rule in np["spec"]["ingress"]),
          "[all features] no ingress rule is open to every source or every port")
    check(not any(p.get("port") == 8081 for rule in np["spec"]["ingress"] for p in rule["ports"])
          and all(p["name"] != "health" for p in svc["spec"]["ports"]),
          "[all features] the plaintext health port is neither in the Service nor open to pods "
          "(only the kubelet, from the node, probes it)")
    metrics_rules = [rule for rule in np["spec"]["ingress"]
                     if any(p.get("port") == 9090 for p in rule.get("ports", []))]
    check(len(metrics_rules) == 1 and metrics_rules[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
          "[all features] metrics 9090 reachable only from the configured namespace/pod selector")
    check("-insecure -cert client.crt -key client.key" in r.notes and "-proto vodsigner/v1/signer.proto"
          in r.notes and "client certificate required" in r.notes,
          "[all features] NOTES: grpcurl with TLS + client certificate, proto files (no reflection)")
    all_features = r

    section("Changes roll the pods (checksum annotations)")

    def annotations(r: Rendered) -> dict[str, str]:
        return r.server["spec"]["template"]["metadata"]["annotations"]

    base = annotations(in_memory)
    changed = annotations(render(chart, merge(INLINE, {"replicaCount": 1, "config": {"logLevel": "debug"}})))
    check(changed["checksum/config"] != base["checksum/config"]
          and changed["checksum/keys"] == base["checksum/keys"],
          "config.logLevel changed: checksum/config changes, checksum/keys does not")
    changed = annotations(render(chart, merge(INLINE, {"replicaCount": 1, "keys": {"inline": {SECRET_ID: "another-key"}}})))
    check(changed["checksum/keys"] != base["checksum/keys"]
          and changed["checksum/config"] == base["checksum/config"],
          "an inline key changed: checksum/keys changes, checksum/config does not")
    same = annotations(render(chart, merge(redis_values, {"redis": {"existingSecret": "redis-auth", "username": "signer", "url": "redis+sentinel://s1:26379,s2:26379/mymaster"}, "keys": {"activeKey": SECRET_ID}, "replicaCount": 5})))
    check(same["checksum/config"] == annotations(production)["checksum/config"],
          "replicaCount changed: checksum/config unchanged (no needless roll)")
    changed = annotations(render(chart, merge(redis_values, {"config": {"drainTimeout": 10}})))
    check(changed["checksum/config"] != annotations(render(chart, redis_values))["checksum/config"],
          "config.drainTimeout changed: checksum/config changes")

    section("Refused values: chart rules (fail) ")
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("replicaCount 3 without Redis", merge(INLINE, {"replicaCount": 3}), "replicaCount=3 needs a Redis"),
        ("autoscaling without Redis", merge(INLINE, {"replicaCount": 1, "autoscaling": {"enabled": True}}),
         "autoscaling.enabled needs a Redis"),
        ("keys.inline and keys.existingSecret", merge(redis_values, INLINE), "are exclusive"),
        ("no caller policy by default", {"replicaCount": 1, "keys": {"inline": {SECRET_ID: SECRET_KEY}}},
         "no caller policy"),
        ("redis.url and redis.internal", merge(redis_values, {"redis": {"internal": {"enabled": True}}}), "are exclusive"),
        ("activeKey not among inline keys", merge(INLINE, {"replicaCount": 1, "keys": {"activeKey": "AKIDother"}}),
         "is not one of the keys"),
        ("two inline keys, no activeKey", merge(INLINE, {"replicaCount": 1, "keys": {"inline": {"AKIDsecond": "k2"}}}),
         "set keys.activeKey"),
        ("grace period not above the drain", merge(redis_values, {"terminationGracePeriodSeconds": 25}),
         "must exceed config.drainTimeout"),
        ("mTLS without a server certificate", merge(redis_values, {"tls": {"clientCaSecretName": "ca"}}),
         "needs tls.secretName"),
        ("NetworkPolicy with no client labels", merge(redis_values, {"networkPolicy": {"enabled": True}}),
         "needs networkPolicy.clientPodLabels"),
        ("ServiceMonitor without metrics", merge(redis_values, {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}),
         "needs metrics.enabled"),
        ("PrometheusRule without metrics", merge(redis_values, {"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}),
         "metrics.prometheusRule.enabled needs metrics.enabled"),
        ("Grafana dashboard without metrics", merge(redis_values, {"metrics": {"enabled": False, "grafanaDashboard": {"enabled": True}}}),
         "metrics.grafanaDashboard.enabled needs metrics.enabled"),
        ("Redis TLS files with a plaintext redis:// URL",
         merge(redis_values, {"redis": {"tls": {"caSecretName": "redis-ca"}}}), "needs a TLS Redis URL"),
        (".active naming a key that is not there",
         merge(INLINE, {"replicaCount": 1, "keys": {"inline": {".active": "AKIDmissing"}}}),
         "the .active entry of keys.inline names"),
        ("keys.inline with only .active", {"replicaCount": 1, "keys": {"inline": {".active": "AKIDx"}}},
         "keys.inline holds no key"),
        ("Redis password without a Redis", merge(INLINE, {"replicaCount": 1, "redis": {"existingSecret": "x"}}),
         "there is no Redis"),
    ]
    for label, values, expect in refusals:
        err = render_error(chart, values)
        check(err and expect in err, f"refused: {label}: {err}")

    section("Refused values: values.schema.json")
    schema_refusals: list[tuple[str, dict[str, Any]]] = [
        ("replicaCount is a string", {"replicaCount": "two"}),
        ("replicaCount negative", {"replicaCount": -1}),
        ("unknown top-level value (typo)", {"replicas": 2}),
        ("unknown nested value (typo)", {"redis": {"existingsecret": "x"}}),
        ("pullPolicy not an enum value", {"image": {"pullPolicy": "Sometimes"}}),
        ("service.port out of range", {"service": {"port": 70000}}),
        ("containerPorts.grpc named, not a number", {"containerPorts": {"grpc": "grpc"}}),
        ("inline SecretId with bad characters", {"keys": {"inline": {"bad id!": "x"}}}),
        ("config.logFormat not text/json", {"config": {"logFormat": "xml"}}),
        ("config.maxTtl above 90 days", {"config": {"maxTtl": 7776001}}),
        ("config.runtime unknown", {"config": {"runtime": "fast"}}),
        ("quota not N/PERIOD", {"security": {"quotaPerSubject": "lots"}}),
        ("outstanding cap negative", {"security": {"maxOutstandingPerSubject": -1}}),
        ("redis.url not a redis URL", {"redis": {"url": "http://redis:6379"}}),
        ("secret name not a DNS name", {"tls": {"secretName": "My_Secret"}}),
        ("dashboard label value a number, not a string", {"metrics": {"grafanaDashboard": {"labelValue": 1}}}),
        ("prometheusRule.enabled not a boolean", {"metrics": {"prometheusRule": {"enabled": "yes"}}}),
    ]
    for label, values in schema_refusals:
        err = render_error(chart, merge(redis_values, values))
        check(err and "schema" in err, f"refused by the schema: {label}: {(err or '').splitlines()[-1:]}")

    section("Values files the repository ships: the docs' first try, CI's pod check")
    operating = (HERE.parent.parent / "docs" / "operating.md").read_text()
    first_try = re.search(r"```yaml\n# my-values\.yaml\n(.*?)```", operating, re.S)
    if check(first_try, "docs/operating.md has the my-values.yaml of `helm install ... -f my-values.yaml`"):
        values = yaml.safe_load(first_try.group(1))
        r = render(chart, values)
        check_common(r, "README first try")
        check_server(r, "README first try", values)
        check(r.server["spec"]["replicas"] == 2 and r.kind("Deployment")[1:]
              and r.config.get("VOD_SIGNER_REDIS_URL", "").startswith("redis://"),
              "[README first try] 2 pods and the throwaway Redis they share")
    ci_values = yaml.safe_load((HERE.parent.parent / ".ci" / "kube-values.yaml").read_text())
    values = merge(ci_values, {"keys": {"inline": {SECRET_ID: SECRET_KEY}},
                               "callerPolicy": {"existingSecret": "ci-callers"},
                               "image": {"tag": "0.1.0"}})
    r = render(chart, values)
    check_common(r, ".ci/kube-values.yaml")
    check_server(r, ".ci/kube-values.yaml", values)
    check(r.container["imagePullPolicy"] == "Never"
          and all(c["imagePullPolicy"] == "Never" for d in r.kind("Deployment")
                  for c in d["spec"]["template"]["spec"]["containers"]),
          "[.ci/kube-values.yaml] the CI images are never pulled")

    section("The built binary with the rendered configuration")
    if not binary:
        print("  skip  VOD_SIGNER_BIN not set (cargo test --test helm sets it)")
    else:
        known = binary_flags(binary)
        not_yet = sorted(set(flags_of(all_features)) - known)
        print(f"  info  flags the chart can render that this binary does not accept yet: "
              f"{', '.join(not_yet) or 'none'}")
        # An unknown argument stops the binary (an unknown VOD_SIGNER_* variable is ignored):
        # the default renderings must pass only arguments it knows. Optional features may render
        # flags that are still being built (listed above).
        for label, r in (("in-memory", in_memory), ("redis.url", render(chart, redis_values))):
            args = {a[2:].partition("=")[0] for a in r.container["args"][1:]}
            check(args <= known, f"[{label}] the binary accepts every argument the chart passes "
                                 f"by default {sorted(args - known) or ''}")
        ports = {"containerPorts": {"grpc": free_port(), "metrics": free_port()}}
        r = render(chart, merge(INLINE, {"replicaCount": 1}, ports))
        body = run_binary(binary, r, "in-memory", expect_metrics="metrics-listen" in known)
        # Families the binary declares (OpenMetrics TYPE lines name counters without _total;
        # a family with no sample yet, such as requests before any call, is not listed).
        exported = {name + ("_total" if kind == "counter" else "") for name, kind in
                    re.findall(r"^# TYPE (vodsigner_[a-z_]+) (\w+)$", body, re.M)}
        check(exported <= METRIC_FAMILIES,
              f"[in-memory] every metric family the binary exports ({len(exported)}) is one the "
              f"alerts and dashboard know (else add a panel to files/dashboard.json and the name to "
              f"METRIC_FAMILIES) {sorted(exported - METRIC_FAMILIES) or ''}")
        redis_down = {"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}}
        r = render(chart, merge(INLINE, {"replicaCount": 1}, redis_down, ports))
        run_binary(binary, r, "redis.url, Redis not up yet", expect_metrics=False,
                   expect_health=NOT_SERVING)
        tls_values = merge(INLINE, {"replicaCount": 1, "tls": {"secretName": "vod-signer-tls"}},
                           {"containerPorts": {"health": free_port()}}, ports)
        r = render(chart, tls_values)
        args = {a[2:].partition("=")[0] for a in r.container["args"][1:]}
        with tempfile.TemporaryDirectory() as certs:
            if not args <= known:
                print(f"  skip  TLS start: the binary lacks {sorted(args - known)}")
            elif not self_signed_tls(certs):
                print("  skip  TLS start: openssl could not make a test certificate")
            else:
                tls_files = {name: Path(certs, name).read_bytes() for name in ("tls.crt", "tls.key")}
                run_binary(binary, r, "TLS + plaintext health port", expect_metrics=False,
                           mounts={"/etc/vod-signer/tls": tls_files})

    elapsed = time.monotonic() - started
    print(f"\nhelm chart checks: {PASSED} ok, {len(FAILED)} failing, {elapsed:.1f} s")
    for what in FAILED:
        print(f"  FAILED: {what.splitlines()[0]}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
