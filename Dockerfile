# syntax=docker/dockerfile:1
# The release image: built on the official Rust image, run on distroless `cc` (glibc,
# libgcc, CA certificates; no shell, no package manager) as a non-root user. Nothing is
# written to the root filesystem, so it runs with `readOnlyRootFilesystem: true`.
# `make image` builds the same layout here without a registry (see image/README.md).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bunq-session-worker --bin fake-bunq \
    && install -D -m 0755 target/release/bunq-session-worker target/release/fake-bunq -t /out

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/bunq-session-worker"]
CMD ["run"]
