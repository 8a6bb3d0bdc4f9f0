# syntax=docker/dockerfile:1
# The release image: built on the official Rust image, run on distroless `cc` (glibc,
# libgcc, CA certificates; no shell, no package manager) as a non-root user. Nothing is
# written to the root filesystem, so it runs with `readOnlyRootFilesystem: true`.
# `make image` builds the same layout here without a registry (see image/README.md).
# The last stage is the worker, alone; `--target fake-bunq` builds the stand-in for bunq
# as an image of its own. Labels: pass --build-arg VERSION, REVISION and CREATED.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bunq-session-worker --bin fake-bunq \
    && install -D -m 0755 target/release/bunq-session-worker -t /out/worker \
    && install -D -m 0755 target/release/fake-bunq -t /out/fake-bunq

# What both images share: the distroless base (glibc, libgcc, CA certificates; no shell),
# the release's labels and the unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.documentation="image/README.md"
USER 65532:65532

FROM runtime AS fake-bunq
LABEL org.opencontainers.image.title="fake-bunq" \
      org.opencontainers.image.description="A stand-in for bunq's API (installation, device-server, session-server) for tests; never for production"
COPY --from=build /out/fake-bunq/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/fake-bunq"]

FROM runtime AS worker
LABEL org.opencontainers.image.title="bunq-session-worker" \
      org.opencontainers.image.description="Opens bunq API sessions for partner-provisioned users: RabbitMQ in, Redis cache, session events out"
COPY --from=build /out/worker/ /usr/local/bin/
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/bunq-session-worker"]
CMD ["run"]
