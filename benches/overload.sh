#!/bin/bash
# Goodput under overload: one replica with its defaults on one Redis, IssueSignature with no
# subject, driven closed-loop at 48, 400, 1 600 and 6 400 concurrent streams by two harnesses
# in turn, h2load and this repository's load generator (`examples/loadgen`). Prints, per row:
# successes per second (h2load: counted by the server's `ok` counter over the run, since
# h2load counts a refusal as a 2xx; loadgen: its own successes over its timed phase), the ratio to the capacity (the best of the 48- and 400-stream rows of the same
# harness in the same run), the refusals by reason, and the p99 of admitted calls (from their
# admission to their answer, the server's `vodsigner_request_duration_seconds`) next to the
# p99 of their wait for a slot (`vodsigner_admission_wait_seconds`), both interpolated in
# the histograms' buckets, the server's CPU time per success, and the load generator's own
# p99 of every call (wait included).
#   bash benches/overload.sh [VOD_SIGNER_BINARY [LOADGEN_BINARY]] [-- MORE SERVE FLAGS]
# Defaults: target/release/vod-signer and target/release/examples/loadgen (build them with
# `cargo build --release --bin vod-signer --example loadgen`). Needs h2load (Debian
# nghttp2-client), redis-server and python3. ROWS="c:m ...", CALLS and ROUNDS override the
# shape.
set -eu
BIN=${1:-target/release/vod-signer}; LOADGEN=${2:-target/release/examples/loadgen}
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
ROWS=${ROWS:-"4:12 4:100 16:100 64:100"}; CALLS=${CALLS:-100000}; ROUNDS=${ROUNDS:-3}
D=$(mktemp -d); mkdir "$D/keys"
trap 'kill $VPID $RPID 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
SID=AKIDloadgen0000000000000000000000000
printf 'LoadgenSecretKey0123456789abcdef' > "$D/keys/$SID"
printf '\x00\x00\x00\x00\x00' > "$D/req.grpc"   # an empty IssueSignatureRequest frame
RP=$((30000 + RANDOM % 10000)); GP=$((RP + 1)); MP=$((RP + 2))
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --daemonize no --dir "$D" >/dev/null 2>&1 &
RPID=$!
for _ in $(seq 50); do redis-cli -p $RP PING >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" serve --listen 127.0.0.1:$GP --metrics-listen 127.0.0.1:$MP --keys-dir "$D/keys" \
  --active-key $SID --redis-url redis://127.0.0.1:$RP "$@" 2>"$D/server.log" &
VPID=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$GP) 2>/dev/null && break; sleep 0.1; done
scrape() { curl -s "http://127.0.0.1:$MP/metrics" > "$1"; }
cpu() { awk '{print $14 + $15}' /proc/$VPID/stat; }   # the server's CPU time, clock ticks

# What the server counted between two scrapes: ok, refusals by reason, and the p99s.
delta() {
  python3 - "$1" "$2" <<'EOF'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        if line.startswith('#'): continue
        m = re.match(r'(\S+?)(\{.*\})? (\S+)$', line.strip())
        if m: out[(m.group(1), m.group(2) or '')] = float(m.group(3))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
d = {k: v - a.get(k, 0.0) for k, v in b.items()}
issue = 'rpc="IssueSignature"'
ok, refused = 0, {}
for (name, labels), v in d.items():
    if name == 'vodsigner_requests_total' and issue in labels and v > 0:
        result = re.search(r'result="([^"]+)"', labels).group(1)
        if result == 'ok': ok = v
        else: refused[result] = refused.get(result, 0) + v
def p99(metric, labels=issue):
    buckets = sorted((float(re.search(r'le="([^"]+)"', l).group(1).replace('+Inf', 'inf')), v)
                     for (n, l), v in d.items() if n == metric + '_bucket' and labels in l)
    if not buckets or buckets[-1][1] <= 0: return float('nan')
    want, lo, below = 0.99 * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= want:
            if le == float('inf'): return lo * 1000
            return (lo + (le - lo) * (want - below) / max(n - below, 1e-9)) * 1000
        lo, below = le, n
    return float('nan')
print(int(ok), ','.join(f'{k}={int(v)}' for k, v in sorted(refused.items())) or '-',
      f"{p99('vodsigner_request_duration_seconds'):.2f}", f"{p99('vodsigner_admission_wait_seconds', ''):.2f}")
EOF
}

# Warm-up: the Redis connection, the script cache.
h2load -n 2000 -c 4 -m 12 -d "$D/req.grpc" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://127.0.0.1:$GP/vodsigner.v1.SignatureService/IssueSignature" >/dev/null
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); $CALLS calls a row, $ROUNDS rounds; $("$BIN" --version)"
printf '%-5s %-8s %7s %10s %6s %10s %10s %8s  %s\n' round harness streams "ok/s" ratio "p99 ms" "wait p99" "CPU us" refusals
: > "$D/rows"
# Rounds interleave the rows: on a shared machine the capacity and the overloaded rows of one
# round run seconds apart, and the summary compares medians.
for round in $(seq "$ROUNDS"); do
for harness in h2load loadgen; do
  capacity=0
  for row in $ROWS; do
    c=${row%%:*}; m=${row##*:}; streams=$((c * m))
    scrape "$D/a"; ticks=$(cpu); start=$(date +%s.%N)
    if [ $harness = h2load ]; then
      h2load -n "$CALLS" -c "$c" -m "$m" -d "$D/req.grpc" -H 'content-type: application/grpc' \
        -H 'te: trailers' "http://127.0.0.1:$GP/vodsigner.v1.SignatureService/IssueSignature" \
        > "$D/out" || true
      own=""
    else
      "$LOADGEN" --target 127.0.0.1:$GP --redis-url redis://127.0.0.1:$RP --scenario issue \
        --without-subject --requests "$CALLS" --connections "$c" --concurrency "$streams" \
        --no-baseline --no-h2load --max-seconds 120 > "$D/out" 2>&1 || true
      own=" (loadgen p99 of all calls $(awk '/latency ms/ {print $6; exit}' "$D/out") ms)"
    fi
    end=$(date +%s.%N); ticks=$(( $(cpu) - ticks )); scrape "$D/b"
    read -r ok refusals p99 wait < <(delta "$D/a" "$D/b")
    rate=$(python3 -c "print(round($ok / ($end - $start)))")
    if [ $harness = loadgen ]; then
      # Its own successes over its timed phase: the process' start, its connections and its
      # warm-up are not the server's goodput.
      rate=$(python3 -c "import json; p=[json.loads(l[5:]) for l in open('$D/out') if l.startswith('JSON ')][0]['phases'][0]; print(round(p['ok'] / p['seconds']))" 2>/dev/null || echo 0)
    fi
    [ "$streams" -le 400 ] && [ "$rate" -gt "$capacity" ] && capacity=$rate
    ratio=$(python3 -c "print(f'{$rate / max($capacity, 1):.2f}')")
    us=$(python3 -c "print(f'{$ticks * 1e6 / $(getconf CLK_TCK) / max($ok, 1):.1f}')")
    printf '%-5s %-8s %7d %10d %6s %10s %10s %8s  %s%s\n' "$round" $harness $streams "$rate" "${ratio}x" "$p99" "$wait" "$us" "$refusals" "$own"
    echo "$harness $streams $rate $ratio $p99 $us" >> "$D/rows"
  done
done
done
# Per harness and row, over the rounds: the median ok/s, and the median (lowest-highest) of
# the rounds' ratios to their own capacity, of the admitted p99 and of the CPU per success.
python3 - "$D/rows" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    h, streams, rate, ratio, p99, us = line.split()
    rows.setdefault((h, int(streams)), []).append((int(rate), float(ratio), float(p99), float(us)))
def span(xs, fmt):
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}-{fmt(max(xs))})"
print('summary: median over the rounds (lowest-highest)')
print(f"{'harness':8} {'streams':>7} {'ok/s':>10}  {'ratio':<18} {'p99 ms':<20} CPU us")
for (h, streams), v in sorted(rows.items()):
    print(f"{h:8} {streams:7d} {statistics.median(r[0] for r in v):10.0f}  "
          f"{span([r[1] for r in v], lambda x: f'{x:.2f}x'):<18} "
          f"{span([r[2] for r in v], lambda x: f'{x:.2f}'):<20} "
          f"{span([r[3] for r in v], lambda x: f'{x:.1f}')}")
EOF
