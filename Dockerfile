# syntax=docker/dockerfile:1
#
# prime-sigv4-proxy container image.
#
#   docker build -t registry.example.com/prime-sigv4-proxy:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e AWS_REGION=us-east-1 \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN \
#     registry.example.com/prime-sigv4-proxy:0.1.0
#
# Pin the toolchain with --build-arg RUST_VERSION=1.90 (the crate needs 1.85 or later).
ARG RUST_VERSION=1

# ---------------------------------------------------------------------------------------------
# Build stage: Debian bookworm, the same glibc (2.36) as the distroless runtime below.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# .dockerignore keeps docs, charts, examples, scripts and build output out of the context, so
# edits there do not invalidate this layer. The BuildKit cache mounts keep the crates.io
# downloads and the compiled dependencies between builds, so a source change recompiles only this
# crate. (A stub-main "dependencies only" layer is not used: it breaks as soon as Cargo.toml
# names a bench, test or example target whose file is not copied yet.)
COPY . .
RUN --mount=type=cache,id=prime-sigv4-proxy-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=prime-sigv4-proxy-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=prime-sigv4-proxy-target,target=/build/target,sharing=locked \
    cargo build --release --locked --bin prime-sigv4-proxy \
    && install -D -m 0755 target/release/prime-sigv4-proxy /out/prime-sigv4-proxy

# ---------------------------------------------------------------------------------------------
# Runtime stage: glibc + libgcc + CA certificates, no shell, no package manager.
# aws-lc (TLS and SigV4 crypto) is linked statically; rustls reads the system roots from
# /etc/ssl/certs.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="prime-sigv4-proxy" \
      org.opencontainers.image.description="Signing reverse proxy (AWS SigV4) for Amazon Prime APIs" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/prime-sigv4-proxy /usr/local/bin/prime-sigv4-proxy

# In a container the listeners must not be bound to loopback only. Environment variables override
# the TOML file; the Helm chart sets both explicitly (127.0.0.1:8080 for the proxy in sidecar mode).
ENV PRIME_PROXY_LISTEN=0.0.0.0:8080 \
    PRIME_PROXY_ADMIN_LISTEN=0.0.0.0:9901

# 8080: proxy (unsigned requests in), 9901: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9901

# distroless "nonroot" user; the proxy writes nothing to disk (read-only root filesystem is fine).
USER 65532:65532

# Logs are JSON lines on stdout. SIGTERM drains in-flight requests (shutdown_grace_ms), then exits 0.
ENTRYPOINT ["/usr/local/bin/prime-sigv4-proxy"]
