#!/usr/bin/env bash
# The container image and the Helm chart's pods, for real (docs/operating.md "Build and run the image").
#
#  1. Local stand-ins for the Dockerfile's two public bases, made with mmdebstrap from Debian
#     bookworm (no registry is reachable from CI): a builder (minbase + gcc, libc6-dev,
#     ca-certificates; the host's Rust toolchain and crate cache are mounted into the build)
#     and a runtime cut from an `essential` tree down to glibc, libgcc, the CA bundle Debian's
#     ca-certificates generated, netbase and distroless' users: no shell, no package manager.
#     A Redis image for the chart's throwaway Redis is cut the same way (Debian's
#     redis-server). Cached as podman images and tars under target/ci-image, keyed by a stamp
#     of the recipe: a second run makes none of them again.
#  2. `podman build --network none` of the shipped Dockerfile, both stages, with the stand-ins
#     as BUILDER_IMAGE and RUNTIME_IMAGE, the crates fetched on the host first and
#     CARGO_NET_OFFLINE=true inside; prints the image's size and its vod-signer layer's.
#  3. .ci/image_check.py run: the image locked down as production runs it, against a
#     redis-server on the host's loopback; then .ci/image_check.py kube: the chart rendered
#     and its Deployments, ConfigMaps and Secrets run with `podman kube play`.
#
# Usage: bash .ci/image.sh [all|build|run|kube]   (default all; run and kube build first)
# Needs root on Debian (podman, runc, slirp4netns, mmdebstrap and redis-server are installed
# when missing), python3 with venv, and cargo. All test traffic stays on 127.0.0.1 or inside
# network namespaces the checks made.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/lib.sh
what=${1:-all}
case $what in all | build | run | kube) ;; *) echo "usage: $0 [all|build|run|kube]" >&2; exit 2 ;; esac
started=$SECONDS
phase() { echo "ci-image: [$((SECONDS - started)) s] $*"; }

# ------------------------------------------------------------------ tools
missing=()
for pair in podman:podman runc:runc slirp4netns:slirp4netns mmdebstrap:mmdebstrap \
    redis-server:redis-server redis-cli:redis-tools nsenter:util-linux ip:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "ci-image: installing ${missing[*]} (Debian packages)"
    apt_install "${missing[@]}"
fi
podman --version

ci=$PWD/target/ci-image
bases=$ci/bases
mkdir -p "$bases"
# podman as it works on this kind of machine: runc (crun refuses hybrid cgroups), the
# cgroupfs manager, and explicit ulimits (the default setrlimit of RLIMIT_NOFILE fails).
export CONTAINERS_CONF=$ci/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF

# Everything this run starts carries this prefix, so the trap removes exactly that.
run_id=vsci-$$
export VOD_SIGNER_CI_RUN_ID=$run_id
scratch=$(mktemp -d "$ci/run.XXXXXX")
cleanup() {
    local status=$?
    set +e
    # Pods and containers the checks left behind (they clean up after themselves; this is for
    # a check killed half-way), then the processes whose pid files they wrote.
    podman pod ls --filter "name=$run_id" -q 2>/dev/null | xargs -r podman pod rm -f -t 0 >/dev/null 2>&1
    podman ps -a --filter "name=$run_id" -q 2>/dev/null | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    podman secret ls --format '{{.Name}}' 2>/dev/null | grep "^$run_id" | xargs -r podman secret rm >/dev/null 2>&1
    podman volume ls --format '{{.Name}}' 2>/dev/null | grep "^$run_id" | xargs -r podman volume rm -f >/dev/null 2>&1
    while read -r pidfile; do
        kill "$(cat "$pidfile")" 2>/dev/null
    done < <(find "$scratch" -name '*.pid' 2>/dev/null)
    # A build stopped half-way leaves buildah's working containers (storage only): those
    # created since this run's build began go.
    if [[ -n ${build_started:-} ]]; then
        podman ps -a --external --format json 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    if c.get("State") == "storage" and c.get("Created", 0) >= int(sys.argv[1]):
        print(c["Id"])' "$build_started" | xargs -r podman rm -f >/dev/null 2>&1
    fi
    rm -rf "$scratch"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. base stand-ins
suite=bookworm
builder_include=gcc,libc6-dev,ca-certificates
essential_include=ca-certificates,libgcc-s1,netbase,redis-server
# What the runtime keeps: as gcr.io/distroless/cc-debian12 minus libssl3, libstdc++6 and
# libgomp1 (vod-signer links none of them: rustls, no C++), tzdata (it never reads zoneinfo).
runtime_keep=base-files,netbase,libc6,libgcc-s1,gcc-12-base
# Debian's redis-server and the libraries it links, on top of the runtime's packages.
redis_keep=$runtime_keep,redis-server,redis-tools,libatomic1,liblzf1,libjemalloc2,libsystemd0,libssl3,libstdc++6,libcap2,libgcrypt20,liblzma5,libzstd1,liblz4-1,libgpg-error0
recipe="$suite|$builder_include|$essential_include|$runtime_keep|$redis_keep|$(sha256sum .ci/cut-rootfs.py)"
stamp=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
builder_image=localhost/vod-signer-ci/builder:$stamp
runtime_image=localhost/vod-signer-ci/runtime:$stamp
redis_image=localhost/vod-signer-ci/redis:$stamp
cache=$bases/$stamp
mkdir -p "$cache"

if ! podman image exists "$builder_image"; then
    if [[ ! -s $cache/builder.tar ]]; then
        phase "making the builder stand-in (mmdebstrap minbase + $builder_include)"
        mmdebstrap --quiet --variant=minbase --include="$builder_include" --format=tar \
            "$suite" "$cache/builder.tar.part"
        mv "$cache/builder.tar.part" "$cache/builder.tar"
    fi
    # The official rust image's layout: the toolchain in /usr/local/rustup, cargo's home in
    # /usr/local/cargo (both mounted from the host for the build).
    podman import --quiet \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$cache/builder.tar" "$builder_image" >/dev/null
fi
if ! podman image exists "$runtime_image" || ! podman image exists "$redis_image"; then
    if [[ ! -s $cache/runtime.tar || ! -s $cache/redis.tar ]]; then
        phase "making the runtime and Redis stand-ins (mmdebstrap essential + $essential_include, then cut)"
        rootfs=$scratch/essential
        mmdebstrap --quiet --variant=essential --include="$essential_include" --format=directory \
            "$suite" "$rootfs"
        # The CA bundle is generated by ca-certificates' own maintainer script in the tree.
        python3 .ci/cut-rootfs.py "$rootfs" "$cache/runtime.tar.part" \
            --packages "$runtime_keep" --path etc/ssl/certs/ca-certificates.crt
        python3 .ci/cut-rootfs.py "$rootfs" "$cache/redis.tar.part" \
            --packages "$redis_keep" --path etc/ssl/certs/ca-certificates.crt
        mv "$cache/runtime.tar.part" "$cache/runtime.tar"
        mv "$cache/redis.tar.part" "$cache/redis.tar"
        rm -rf "$rootfs"
    fi
    # distroless' :nonroot configuration: PATH, user 65532, working directory its home; the
    # Redis image as docker.io/library/redis sets it up: PATH, working directory /data.
    path='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    podman import --quiet --change "$path" --change 'USER 65532:65532' \
        --change 'WORKDIR /home/nonroot' "$cache/runtime.tar" "$runtime_image" >/dev/null
    podman import --quiet --change "$path" --change 'WORKDIR /data' \
        "$cache/redis.tar" "$redis_image" >/dev/null
fi
# Like distroless, the runtime has no shell: this must fail.
if podman run --rm --network none "$runtime_image" /bin/sh -c true >/dev/null 2>&1; then
    echo "ci-image: FAIL: the runtime stand-in $runtime_image has a shell"
    exit 1
fi
# Stand-ins of an older recipe are not needed any more.
for name in builder runtime redis; do
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "localhost/vod-signer-ci/$name" | grep -v ":$stamp\$"); do
        podman rmi "$old" >/dev/null 2>&1 || true
    done
done
find "$bases" -mindepth 1 -maxdepth 1 -type d ! -name "$stamp" -exec rm -rf {} +
phase "bases: $builder_image, $runtime_image (no shell), $redis_image"

# ------------------------------------------------------------------ 2. the image
revision=$(git rev-parse HEAD)
version=$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "vod-signer"))')
source_url=$(git config --get remote.origin.url || true)
image=localhost/vod-signer:ci-${revision:0:12}
phase "cargo fetch --locked (host), then podman build --network none of the Dockerfile"
cargo fetch --locked --quiet
# The host's toolchain (rustup's) and crate cache, mounted where the official rust image has them.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$(rustup show home 2>/dev/null || echo "$HOME/.rustup")}
if [[ ! -d $rustup_home/toolchains || ! -x $cargo_home/bin/cargo ]]; then
    echo "ci-image: FAIL: the build mounts a rustup toolchain ($rustup_home) and cargo's home" \
        "($cargo_home): install Rust with rustup"
    exit 1
fi
build_log=$ci/build.log
build() { # build EXTRA-ARGS...: the Dockerfile with the stand-ins, offline
    podman build --network none --layers \
        --volume "$rustup_home:/usr/local/rustup:ro" \
        --volume "$cargo_home:/usr/local/cargo" \
        --build-arg "BUILDER_IMAGE=$builder_image" \
        --build-arg "RUNTIME_IMAGE=$runtime_image" \
        --build-arg CARGO_NET_OFFLINE=true \
        --build-arg "REVISION=$revision" \
        --build-arg "VERSION=$version" \
        --build-arg "SOURCE=${source_url:-unknown}" \
        --file Dockerfile "$@" . >>"$build_log" 2>&1
}
: >"$build_log"
build_started=$(date +%s)
if ! build --tag "$image"; then
    tail -n 60 "$build_log"
    echo "ci-image: FAIL: podman build (whole log: $build_log)"
    exit 1
fi
# Disk stays bounded on a machine that builds every commit: the builder stage (about 1 GB, the
# layer cache of the next build) is kept under one tag (from the cache: no second build), and
# the previous builder stage and the older CI images go.
stage=localhost/vod-signer-ci/builder-stage:latest
old_stage=$(podman image inspect --format '{{.Id}}' "$stage" 2>/dev/null || true)
build --target builder --tag "$stage"
if [[ -n $old_stage && $old_stage != "$(podman image inspect --format '{{.Id}}' "$stage")" ]]; then
    podman rmi "$old_stage" >/dev/null 2>&1 || true
fi
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/vod-signer | grep -v ":ci-${revision:0:12}\$"); do
    podman rmi "$old" >/dev/null 2>&1 || true
done
build_started=
# Sizes: the image (uncompressed, as `podman images` counts it) and the vod-signer layer alone.
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$runtime_image")
# The layer that adds /vod-signer (the runtime stage's one COPY).
layer=$(podman history --format json "$image" | python3 -c '
import json, sys
print(next((e["size"] for e in json.load(sys.stdin) if "COPY" in e["CreatedBy"] and " in /vod-signer" in e["CreatedBy"]), ""))')
[[ -n $layer ]] || { echo "ci-image: FAIL: no COPY layer (the binary) in $image"; exit 1; }
echo "ci-image: $image: image $(mb "$size"), vod-signer layer $(mb "$layer"), runtime stand-in $(mb "$base_size")"
if ((size > 40 * 1000 * 1000)); then
    echo "ci-image: FAIL: the image is above its 40 MB budget"
    exit 1
fi
phase "built $image"
[[ $what == build ]] && exit 0

# ------------------------------------------------------------------ 3. the checks
ensure_venv target/grpcurl-venv .ci/requirements-grpcurl.txt
ensure_venv target/helm-venv helm/tests/requirements.txt
export GRPCURL=$PWD/target/grpcurl-venv/bin/grpcurl
checks=(run kube)
[[ $what == all ]] || checks=("$what")
for check in "${checks[@]}"; do
    phase "image_check.py $check"
    PYTHONDONTWRITEBYTECODE=1 target/helm-venv/bin/python .ci/image_check.py "$check" \
        --image "$image" --redis-image "$redis_image" --revision "$revision" --version "$version" \
        --scratch "$scratch"
done
phase "passed"
