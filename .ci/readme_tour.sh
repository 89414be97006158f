#!/usr/bin/env bash
# The README's grpcurl tour, run as a reader runs it: `vod-signer serve --dev`, then the tour's
# code block (the one after the `<!-- tour:` marker) with bash, and its answers checked. Keeps
# the README honest: a renamed field, a changed answer or a broken example fails CI.
#
# Usage: .ci/readme_tour.sh   (VOD_SIGNER_BIN: the binary; default: `cargo build`'s debug one)
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

if [[ -z ${VOD_SIGNER_BIN:-} ]]; then
    cargo build --locked --quiet --bin vod-signer
    VOD_SIGNER_BIN=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/vod-signer
fi
ensure_venv target/grpcurl-venv .ci/requirements-grpcurl.txt
export PATH=$PWD/target/grpcurl-venv/bin:$PATH

work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VOD_SIGNER_BIN" serve --dev --listen "127.0.0.1:$port" --metrics-listen off >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do
    if grpcurl -plaintext -max-time 1 "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err"; echo "tour: serve --dev exited"; exit 1; }
    sleep 0.1
done

# The block after the marker, on this run's port.
python3 - "$work/tour.sh" "$port" <<'PY'
import re, sys
text = open("README.md").read()
block = re.search(r"<!-- tour:[^\n]*-->\n```sh\n(.*?)```", text, re.S)
if not block:
    sys.exit("README.md has no grpcurl tour after a `<!-- tour:` marker")
open(sys.argv[1], "w").write(block.group(1).replace("localhost:50051", f"127.0.0.1:{sys.argv[2]}"))
PY
bash "$work/tour.sh" >"$work/tour.out" 2>&1 || true
cat "$work/tour.out"

failed=0
expect() {
    if grep -qF -- "$1" "$work/tour.out"; then
        echo "tour: ok   $2"
    else
        echo "tour: FAIL $2 (no \"$1\" in the output)"
        failed=1
    fi
}
expect "vodsigner.v1.SignatureService" "list names the service"
expect "rpc CompleteUpload" "describe shows the RPCs"
expect '"state": "ISSUED"' "VerifySignature says ISSUED"
expect '"consumedAt"' "ConsumeSignature answers consumedAt"
expect "SIGNATURE_ALREADY_USED: signature was consumed at" "the replay is refused with its reason"
expect '"completedAt"' "CompleteUpload answers completedAt"
expect '"state": "COMPLETED"' "ListSignatures lists it COMPLETED"
expect '"previousState": "COMPLETED"' "RevokeSignature reports COMPLETED"
expect '"status": "SERVING"' "health is SERVING"
exit $failed
