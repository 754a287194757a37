# One image with every Tessera binary: tessera, tessera-operator and
# tessera-chunkserver (the Helm chart picks the command per workload).
# Not built in CI here (no container engine); build with
#   docker build -t ghcr.io/tessera-dev/tessera:0.1.0 .

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from a crate, so the toolchain is all the build needs.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tessera --bin tessera-operator --bin tessera-chunkserver \
 && mkdir -p /out \
 && cp target/release/tessera target/release/tessera-operator target/release/tessera-chunkserver /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# The operator runs as this user; the chunkserver DaemonSet overrides it to
# own host data directories.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tessera"]
