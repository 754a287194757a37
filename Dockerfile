# One image with every Tessera binary: tessera, tessera-operator,
# tessera-chunkserver and tessera-csi (the Helm chart picks the command per
# workload).
# Not built in CI here (no container engine); build with
#   docker build -t ghcr.io/tessera-dev/tessera:0.1.0 .

FROM golang:1.26-bookworm AS csi-spec
# csi.proto comes from the CSI spec's Go module and the plugin-registration
# API from the kubelet's (both checksum-verified).
RUN go mod download -json github.com/container-storage-interface/spec@v1.12.0 k8s.io/kubelet@v0.35.4 \
 && cp "$(go env GOMODCACHE)/github.com/container-storage-interface/spec@v1.12.0/csi.proto" /csi.proto \
 && cp "$(go env GOMODCACHE)/k8s.io/kubelet@v0.35.4/pkg/apis/pluginregistration/v1/api.proto" /pluginregistration.proto

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=csi-spec /csi.proto /pluginregistration.proto /
ENV TESSERA_CSI_PROTO=/csi.proto TESSERA_PLUGINREGISTRATION_PROTO=/pluginregistration.proto
# protoc comes from a crate, so the toolchain is all the build needs.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tessera --bin tessera-operator --bin tessera-chunkserver --bin tessera-csi \
 && mkdir -p /out \
 && cp target/release/tessera target/release/tessera-operator target/release/tessera-chunkserver target/release/tessera-csi /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# The operator runs as this user; the chunkserver and CSI DaemonSets
# override it (host data directories, mounts).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tessera"]
