#!/usr/bin/env bash
# The API as a checked artifact: `buf lint` (STANDARD rules, exceptions in proto/buf.yaml),
# `buf breaking` (FILE rules: renames fail too) against the released and the previous API,
# and a self-test proving the breaking check still fails on a rename.
#
# Baselines: the last tag reachable from HEAD (the released API), and HEAD~1 (the previous
# commit of main; for a merge commit, main before the merge). BUF_AGAINST=<git ref> replaces
# them. A shallow clone is deepened by one commit when its remote allows; a history with no
# previous commit has nothing to compare against, which is said, not hidden.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh

ensure_venv target/buf-venv .ci/requirements-buf.txt
BUF=$PWD/target/buf-venv/bin/buf
echo "buf $("$BUF" --version)"

# Inside target/: buf looks for a buf.yaml in parent directories, and /tmp may hold anything.
tmp=$(mktemp -d "$PWD/target/buf-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- lint
(cd proto && "$BUF" lint)
echo "buf lint: ok"

# ---------------------------------------------------------------- breaking
baselines=()
if [[ -n ${BUF_AGAINST:-} ]]; then
    baselines+=("$BUF_AGAINST")
else
    if tag=$(git describe --tags --abbrev=0 HEAD 2>/dev/null); then
        baselines+=("$tag")
    fi
    if ! git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null \
        && [[ $(git rev-parse --is-shallow-repository) == true ]]; then
        echo "buf breaking: shallow clone, fetching one more commit"
        git fetch -q --deepen=1 2>/dev/null || echo "buf breaking: could not deepen the clone"
    fi
    if git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null; then
        baselines+=(HEAD~1)
    fi
fi
if [[ ${#baselines[@]} -eq 0 ]]; then
    echo "buf breaking: SKIPPED, no tag and no previous commit to compare against (single-commit or shallow history)"
fi
for ref in "${baselines[@]}"; do
    dir=$tmp/against-$(git rev-parse --short "$ref")
    mkdir -p "$dir"
    if ! git cat-file -e "$ref:proto" 2>/dev/null; then
        echo "buf breaking: $ref has no proto/ directory, nothing to compare"
        continue
    fi
    # git archive works the same in a clone, a worktree and a deepened shallow clone.
    git archive "$ref" proto | tar -x -C "$dir"
    "$BUF" breaking proto --against "$dir/proto"
    echo "buf breaking against $ref ($(git rev-parse --short "$ref")): ok"
done

# ---------------------------------------------------------------- the guard's self-test
# Each mutation is applied to a copy of proto/ and must make `buf breaking` fail with the
# expected finding; a compatible addition must pass. A mutation whose text is no longer in the
# proto fails the test, so the guard cannot rot silently when the proto changes.
proto_file=vodsigner/v1/signer.proto
mutate() { # mutate NAME FROM TO: a copy of proto/ with every FROM replaced by TO; prints its path
    local copy=$tmp/mutant-$1
    cp -r proto "$copy"
    python3 - "$copy/$proto_file" "$2" "$3" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if old not in text:
    sys.exit(f"self-test: {old!r} is no longer in the proto: update the mutation in .ci/buf.sh")
open(path, "w").write(text.replace(old, new))
PY
    echo "$copy"
}
must_break() { # must_break NAME FROM TO EXPECTED-FINDING
    local copy out
    copy=$(mutate "$1" "$2" "$3")
    if out=$("$BUF" breaking "$copy" --against proto 2>&1); then
        echo "buf guard self-test FAILED: $1 was not reported as breaking"
        exit 1
    fi
    if ! grep -qF -- "$4" <<<"$out"; then
        echo "buf guard self-test FAILED: $1: expected a finding containing '$4', got:"
        echo "$out"
        exit 1
    fi
    echo "buf guard: $1 is refused: $(grep -F -- "$4" <<<"$out" | head -1 | sed 's/^.*proto:[0-9:]*//')"
}
must_break "field-rename" "string idempotency_key = 3;" "string idempotency_token = 3;" \
    'changed name from "idempotency_key" to "idempotency_token"'
must_break "enum-value-rename" "  CONSUMED = 2;" "  USED = 2;" \
    'changed name from "CONSUMED" to "USED"'
must_break "rpc-rename" "rpc ConsumeSignature(" "rpc UseSignature(" \
    'RPC "ConsumeSignature" on service "SignatureService" was deleted'
must_break "message-rename" "VerifySignatureRequest" "CheckSignatureRequest" \
    'Previously present message "VerifySignatureRequest" was deleted'
must_break "field-renumber" "string subject = 4;" "string subject = 40;" \
    'field "4" with name "subject" on message "IssueSignatureRequest" was deleted'
copy=$(mutate "compatible-addition" "string idempotency_key = 3;" \
    "string idempotency_key = 3; string guard_self_test = 1000;")
"$BUF" breaking "$copy" --against proto
echo "buf guard: a compatible addition (new field) passes"
echo "buf: lint, breaking and the guard's self-test passed"
