#!/usr/bin/env bash
# Builds the Kubernetes test tools (a control plane, a kubelet, kwok, helm
# and the CSI sanity suite) from the Go module proxy, once per version,
# into ~/.cache/tessera/tools/<tool>-<version>/ and links them into
# ~/.cache/tessera/tools/bin. Prints that bin directory on stdout.
#
#   e2e/tools.sh            build what is missing
#   e2e/tools.sh --check    exit 1 if anything is missing, build nothing
#
# kube-apiserver and etcd cannot be `go install`ed (their go.mod files carry
# replace directives), so each is built from a small tools module that pins
# the published modules; see docs/decisions/0009-test-control-plane.md.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-4.3.1}
CSI_SANITY_VERSION=${CSI_SANITY_VERSION:-5.4.0}
COREDNS_VERSION=${COREDNS_VERSION:-1.14.7}

ROOT=${TESSERA_TOOLS:-$HOME/.cache/tessera/tools}
BIN=$ROOT/bin
mkdir -p "$BIN"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

log() { echo "tools: $*" >&2; }

# have NAME DIR: the binary exists in DIR; link it into BIN.
have() {
  if [ -x "$2/$1" ]; then
    ln -sf "$2/$1" "$BIN/$1"
    return 0
  fi
  return 1
}

build_k8s() {
  local dir=$ROOT/kubernetes-$K8S_VERSION
  have kube-apiserver "$dir/bin" && have kubectl "$dir/bin" && return
  $check_only && { log "kube-apiserver/kubectl $K8S_VERSION missing"; exit 1; }
  log "building kube-apiserver and kubectl $K8S_VERSION (once; about 10 minutes on 2 cores)"
  local work=$dir/src
  mkdir -p "$work" "$dir/bin"
  (
    cd "$work"
    [ -f go.mod ] || go mod init tessera.invalid/k8s-tools >/dev/null 2>&1
    go mod download "k8s.io/kubernetes@v$K8S_VERSION"
    local upstream
    upstream=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    # Upstream requires its staging modules at v0.0.0 and replaces them with
    # local paths; pin each to its published v0.<minor>.<patch> instead.
    for m in $(awk '$2=="v0.0.0"{print $1}' "$upstream" | grep '^k8s.io/'); do
      go mod edit -replace="$m=$m@v0.${K8S_VERSION#1.}"
    done
    grep '^godebug' "$upstream" >>go.mod || true
    go get "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@v$K8S_VERSION"
    local minor ld
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    ld="-s -w"
    for kv in "gitVersion=v$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
      ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
    done
    go build -trimpath -ldflags "$ld" -o "$dir/bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  )
  have kube-apiserver "$dir/bin"
  have kubectl "$dir/bin"
}

# The node side, built in the same pinned module as build_k8s (which must
# run first): a real kubelet and kube-proxy with the scheduler and the
# controller manager, for the tests that run pods
# (docs/decisions/0018-real-node-test-cluster.md).
build_k8s_node() {
  local dir=$ROOT/kubernetes-$K8S_VERSION
  local cmds=(kubelet kube-proxy kube-scheduler kube-controller-manager)
  local missing=false c
  for c in "${cmds[@]}"; do have "$c" "$dir/bin" || missing=true; done
  $missing || return 0
  $check_only && { log "kubelet/kube-proxy/kube-scheduler/kube-controller-manager $K8S_VERSION missing"; exit 1; }
  log "building kubelet, kube-proxy, kube-scheduler and kube-controller-manager $K8S_VERSION (once; about 5 minutes)"
  (
    cd "$dir/src"
    local pkgs=() minor ld
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go get "${pkgs[@]/%/@v$K8S_VERSION}"
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    ld="-s -w"
    for kv in "gitVersion=v$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
      ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
    done
    go build -trimpath -ldflags "$ld" -o "$dir/bin/" "${pkgs[@]}"
  )
  for c in "${cmds[@]}"; do have "$c" "$dir/bin"; done
}

build_etcd() {
  local dir=$ROOT/etcd-$ETCD_VERSION
  have etcd "$dir/bin" && return
  $check_only && { log "etcd $ETCD_VERSION missing"; exit 1; }
  log "building etcd $ETCD_VERSION"
  mkdir -p "$dir/src" "$dir/bin"
  (
    cd "$dir/src"
    [ -f go.mod ] || go mod init tessera.invalid/etcd-tools >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
  )
  have etcd "$dir/bin"
}

# go_install NAME MODULE_PATH/cmd/NAME VERSION
go_install() {
  local name=$1 pkg=$2 version=$3
  local dir=$ROOT/$name-$version
  have "$name" "$dir/bin" && return
  $check_only && { log "$name $version missing"; exit 1; }
  log "building $name $version"
  mkdir -p "$dir/bin"
  GOBIN=$dir/bin go install -trimpath -ldflags "-s -w" "$pkg@v$version"
  have "$name" "$dir/bin"
}

build_etcd
build_k8s
build_k8s_node
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
go_install csi-sanity github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity "$CSI_SANITY_VERSION"
# The real node's cluster DNS (Service names such as the master's).
go_install coredns github.com/coredns/coredns "$COREDNS_VERSION"
echo "$BIN"
