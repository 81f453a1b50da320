# tidegate's container image: a pinned Rust builder, and a distroless runtime that holds only the
# binary (glibc and CA certificates from the base, no shell, no package manager), run as non-root.
#
#   docker build -t tidegate:0.1.0 .        (or: podman build -t tidegate:0.1.0 .)
#
# The binary is the release profile CI's tests are written against: no debug info (about 20 MB),
# symbols kept so a panic's backtrace names its functions.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: stub targets with the real manifest and lock file,
# so a source change rebuilds only tidegate itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in pick publish metrics discovery; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin tidegate \
    && rm -rf src benches target/release/.fingerprint/tidegate-* target/release/deps/tidegate-* \
        target/release/deps/libtidegate-*
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tidegate

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tidegate" \
      org.opencontainers.image.description="An HTTP reverse proxy that makes Kubernetes rolling updates safe to watch and safe to steer" \
      org.opencontainers.image.source="https://github.com/tidegate/tidegate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/tidegate /tidegate
# distroless's nonroot user, by number so that runAsNonRoot can verify it.
USER 65532:65532
# The proxy listener and the admin API (probes, metrics) as the shipped configs set them.
EXPOSE 8080 9901
ENTRYPOINT ["/tidegate"]
CMD ["proxy", "--config", "/etc/tidegate/tidegate.yaml"]
