# syntax=docker/dockerfile:1
# One image for every baton role: coordinator, example-workers, triggers, serve, topics apply, check,
# validate, ... (ENTRYPOINT is the baton binary; the role is the first argument).
#
#   docker build -t baton:dev .
#   docker run --rm baton:dev validate examples/order-fulfillment.yaml
#   docker run --rm -e BATON_BROKERS=kafka-1:9092 baton:dev check
#
# Build stage: the Swift 6.3.1 toolchain image; librdkafka 2.14.2 built from Debian's source package as
# scripts/setup does (deploy/image/build-librdkafka); `swift build -c release --product baton` with the Swift
# standard library and Foundation linked statically, so the runtime stage needs no Swift runtime libraries.
# Runtime stage: debian:bookworm-slim with only the libraries the binary and librdkafka load
# (deploy/image/runtime-packages), librdkafka's shared library copied from the build stage, and the
# non-root user baton (10001).
#
# No container engine runs where Baton is developed, so this file has not been built there: its runtime
# stage is reproduced in a debootstrap'd Debian bookworm root by deploy/image/check-runtime, and
# tests/deploy checks that the two stay the same (docs/deploy.md, "What was validated here and what was not").

ARG SWIFT_IMAGE=swift:6.3.1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${SWIFT_IMAGE} AS build
COPY deploy/image/build-librdkafka deploy/image/librdkafka-metadata-update-unnamed-topic.patch /usr/local/src/baton-librdkafka/
RUN /usr/local/src/baton-librdkafka/build-librdkafka /usr/local
WORKDIR /src
COPY Package.swift ./
COPY Sources Sources
COPY Tests Tests
RUN --mount=type=cache,target=/src/.build \
    swift build -c release --product baton --static-swift-stdlib \
 && install -D -m 0755 "$(swift build -c release --product baton --static-swift-stdlib --show-bin-path)/baton" /out/usr/local/bin/baton \
 && mkdir -p /out/usr/local/lib \
 && cp -a /usr/local/lib/librdkafka.so* /out/usr/local/lib/ \
 && /out/usr/local/bin/baton --help >/dev/null

FROM ${RUNTIME_IMAGE} AS runtime
COPY deploy/image/runtime-packages deploy/image/prepare-runtime /usr/local/share/baton-image/
RUN /usr/local/share/baton-image/prepare-runtime /usr/local/share/baton-image
COPY --from=build /out/ /
RUN ldconfig
# baton-probe PORT PATH: the compose healthchecks (no curl or wget here); baton-stop: the preStop hook of
# the coordinators and triggers in deploy/kubernetes.
COPY deploy/image/probe /usr/local/bin/baton-probe
COPY deploy/image/stop /usr/local/bin/baton-stop
# The example workflows, for `baton definitions register examples/...` (the topic specs are built into the
# binary: `baton topics apply` works from any folder).
COPY examples /usr/share/baton/examples
WORKDIR /usr/share/baton
USER 10001:10001
# serve's HTTP port, and the --metrics-port of each role as deploy/ uses them.
EXPOSE 8080 9464 9465 9466 9467
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["--help"]
