# vod-signer container image: a release build on Debian bookworm, then only the binary on
# distroless (glibc, no shell, no package manager), running as the non-root user 65532.
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t vod-signer:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 vod-signer:0.1.0 serve --dev
#
# The build needs no protoc: build.rs compiles proto/ with the pure-Rust protox.
# Both bases are build arguments: CI builds this same file offline against local stand-ins
# (.ci/image.sh, docs/operating.md "Build and run the image").

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# true: build from the crates already in $CARGO_HOME, with no network (CI's offline build).
ARG CARGO_NET_OFFLINE=false

# 1. Dependencies only, against stub sources: this layer is rebuilt only when Cargo.toml or
#    Cargo.lock change, so editing src/ does not recompile the dependency tree. Every target
#    Cargo.toml declares must exist, hence the stub bench.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/codec.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo build --release --locked --bin vod-signer \
    && rm -rf src build.rs target/release/vod-signer* target/release/deps/vod_signer-* \
       target/release/deps/libvod_signer-* target/release/build/vod-signer-* \
       target/release/.fingerprint/vod-signer-*

# 2. The crate itself. The stub crate's artifacts and fingerprints are gone, and touch guards
#    against COPY's file times being older than the stub build. The git revision (no .git in
#    the build context) reaches vodsigner_build_info{revision} through build.rs.
COPY build.rs ./
COPY proto proto
COPY src src
ARG REVISION=unknown
RUN touch build.rs src/main.rs src/lib.rs \
    && VOD_SIGNER_REVISION="${REVISION}" cargo build --release --locked --bin vod-signer \
    && cp target/release/vod-signer /vod-signer

FROM ${RUNTIME_IMAGE}
# The OCI labels: VERSION is Cargo.toml's (tests/image.rs keeps the two equal), REVISION the
# git commit, SOURCE the repository URL (CI passes the clone's origin).
ARG REVISION=unknown
ARG VERSION=0.1.0
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="vod-signer" \
      org.opencontainers.image.description="Issues and redeems single-use Tencent Cloud VOD upload signatures over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=builder /vod-signer /vod-signer
# distroless's nonroot user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# gRPC (--listen) and Prometheus metrics (--metrics-listen).
EXPOSE 50051 9090
ENTRYPOINT ["/vod-signer"]
CMD ["serve"]
