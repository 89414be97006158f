#!/usr/bin/env bash
# Alerts and dashboard as code: `promtool check rules` and `promtool test rules` on the rule
# file the Helm chart ships (helm/vod-signer/files/alerts.rules.yaml), and a PromQL syntax
# check of every query of the Grafana dashboard (helm/vod-signer/files/dashboard.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

if ! command -v promtool >/dev/null 2>&1; then
    echo "ci: installing promtool (Debian package prometheus)"
    # --no-install-recommends: only promtool is wanted (the server is not started: CI has no
    # init system running, and nothing here needs it).
    apt_install --no-install-recommends prometheus
fi
promtool --version | head -1

chart=helm/vod-signer
promtool check rules "$chart/files/alerts.rules.yaml"
promtool test rules "$chart/tests/alerts.test.yaml"

# The dashboard's queries as recording rules (Grafana's variables replaced by plain values),
# so promtool parses each one: a typo in a panel fails here, not on someone's screen.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$chart/files/dashboard.json" "$tmp/dashboard.rules.yaml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
variables = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
rules = []
for i, expr in enumerate(exprs):
    for name, value in variables.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        sys.exit(f"dashboard query {i} uses an unknown variable: {expr}")
    rules.append({"record": f"dashboard:query_{i}", "expr": expr})
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"dashboard: {len(rules)} queries")
PY
promtool check rules "$tmp/dashboard.rules.yaml"
echo "alerts: rules checked and unit-tested, dashboard queries parse"
