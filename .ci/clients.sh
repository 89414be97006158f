#!/usr/bin/env bash
# The Python and Node clients' checks and tests, against a live `vod-signer serve` and a real
# redis-server that each test harness starts itself on free loopback ports.
#
# Usage: .ci/clients.sh [python|node|all]   (default all). Needs cargo, python3 (3.10+), node
# 20+ with npm, redis-server and openssl on PATH; installs the rest under target/ and
# clients/node/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh
which=${1:-all}

# The binary the harnesses start: built once (a no-op after `cargo test`, which builds it).
cargo build --locked --quiet --bin vod-signer
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export VOD_SIGNER_BIN=$target_dir/debug/vod-signer

if [[ $which == all || $which == python ]]; then
    ensure_venv target/pyclient-venv clients/python/requirements-dev.txt
    py=$PWD/target/pyclient-venv/bin/python
    # The client itself, editable, with no download (its dependencies are pinned above).
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        -e clients/python
    (
        cd clients/python
        "$py" generate.py --check
        "$py" -m mypy
        PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -p no:cacheprovider -v
    )
fi

if [[ $which == all || $which == node ]]; then
    (
        cd clients/node
        node --version
        npm ci --no-audit --no-fund --loglevel=error
        npm test
    )
fi
