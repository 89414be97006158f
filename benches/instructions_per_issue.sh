#!/bin/bash
# Instructions per IssueSignature (no subject) of one or more release binaries, under
# callgrind: the difference between a 3000-call and a 1000-call run, so start-up cancels out.
# Instruction counts do not move with the machine's load, so two builds compare on a busy
# machine. Needs valgrind, h2load (nghttp2-client) and redis-server.
#   bash benches/instructions_per_issue.sh OLD/vod-signer NEW/vod-signer
set -eu
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
D=$(mktemp -d); mkdir "$D/keys"
trap 'kill $RPID 2>/dev/null; rm -rf "$D"' EXIT
printf 'callgrind-secret-key-0123456789abcdef\n' > "$D/keys/AKIDcallgrind"
printf '\x00\x00\x00\x00\x00' > "$D/req.grpc"   # an empty IssueSignatureRequest frame
RP=$((30000 + RANDOM % 10000)); GP=$((RP + 1)); MP=$((RP + 2))
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --daemonize no --dir "$D" >/dev/null 2>&1 &
RPID=$!
for _ in $(seq 50); do redis-cli -p $RP PING >/dev/null 2>&1 && break; sleep 0.1; done
call() {
  h2load -n "$1" -c 1 -m 4 -d "$D/req.grpc" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$GP/vodsigner.v1.SignatureService/IssueSignature" | grep -q "$1 succeeded"
}
for bin in "$@"; do
  declare -A ir=()
  for n in 1000 3000; do
    redis-cli -p $RP FLUSHALL >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$bin" serve --listen 127.0.0.1:$GP \
      --metrics-listen 127.0.0.1:$MP --keys-dir "$D/keys" --redis-url redis://127.0.0.1:$RP \
      --log-level error >/dev/null 2>&1 &
    vp=$!
    for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$GP) 2>/dev/null && break; sleep 0.1; done
    call 50 || true     # warm-up: the Redis connection and the script cache
    call "$n" || { echo "$bin: not every call succeeded" >&2; exit 1; }
    kill -TERM $vp; wait $vp 2>/dev/null || true
    ir[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$D/cg.out")
  done
  echo "$bin: $(( (ir[3000] - ir[1000]) / 2000 )) instructions per IssueSignature"
done
