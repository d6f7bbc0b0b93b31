# syntax=docker/dockerfile:1
# The operator as a small image: one static (musl) binary on distroless/static,
# running as the distroless non-root user. Builds for the platform it runs on
# (`docker buildx build --platform linux/amd64,linux/arm64 .` builds both).
#
#   docker build -t REGISTRY/replika:TAG .

FROM rust:1.95-slim AS build
# musl-gcc compiles ring's C and assembly for the static target.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && cargo build --release --locked --package replika --bin replika --target "$target" \
 && cp "target/$target/release/replika" /replika

FROM gcr.io/distroless/static:nonroot
COPY --from=build /replika /replika
USER 65532:65532
ENTRYPOINT ["/replika"]
CMD ["run"]
