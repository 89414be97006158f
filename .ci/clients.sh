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

# Node 20+ with npm (Debian's nodejs if the machine has none; the clients need Node 18+).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ci: installing nodejs and npm (Debian packages)"
    apt_install nodejs npm
fi
# openssl makes the test CA of the TLS tests.
if ! command -v openssl >/dev/null 2>&1; then
    echo "ci: installing openssl (Debian package)"
    apt_install openssl
fi

# The binary the harnesses start: $VOD_SIGNER_BIN when set (.ci/run passes the one `cargo test`
# just built: a `cargo build` there would compile the crates again with other features),
# else `cargo build` (a no-op when it is up to date).
if [[ -z ${VOD_SIGNER_BIN:-} ]]; then
    cargo build --locked --quiet --bin vod-signer
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    VOD_SIGNER_BIN=$target_dir/debug/vod-signer
fi
[[ -x $VOD_SIGNER_BIN ]] || { echo "ci: $VOD_SIGNER_BIN is not an executable"; exit 1; }
export VOD_SIGNER_BIN

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
