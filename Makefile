# The one command for tests: `make test`. It builds the Kubernetes test tools
# it needs (etcd, kube-apiserver, kubectl, kubelet, kube-proxy,
# kube-scheduler, kube-controller-manager, kwok, helm, csi-sanity, coredns)
# from the Go module proxy once per version into ~/.cache/tessera/tools,
# checks formatting, lints and that crds/ is current, and runs every test:
# unit and property tests, the multi-process fault tests (which mount a
# tmpfs, so run as root) and the end-to-end tests against a real etcd and
# kube-apiserver, and a real kubelet with containerd for the pod tests.

CARGO ?= cargo

.PHONY: test tools crds fmt lint unit demo e2e-cluster bench-codec bench-read-tail bench-seq-read

test: tools fmt lint unit

tools:
	./e2e/tools.sh >/dev/null

# Regenerate crds/ from the Rust types (a test fails when it is stale).
crds:
	$(CARGO) run --locked --quiet --bin tessera-operator -- crds > crds/tessera.dev.yaml
	cp crds/tessera.dev.yaml charts/tessera/crds/tessera.dev.yaml

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Also builds the programs the end-to-end tests run as processes (cargo
# builds a package's binaries for its integration tests).
unit:
	$(CARGO) test --workspace --locked

demo:
	$(CARGO) run --release --locked --bin tessera -- demo

# The tests' cluster with one real node and Tessera installed, for a person
# (root; see docs/kubernetes.md): prints a KUBECONFIG, stops on Ctrl-C.
# Built as `make test` builds (the whole workspace), so nothing is rebuilt.
e2e-cluster: tools
	$(CARGO) build --locked --workspace --bins
	"$$($(CARGO) metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')/debug/tessera-e2e-cluster" $(E2E_CLUSTER_ARGS)

bench-codec:
	$(CARGO) run --release --locked --bin tessera -- bench codec

bench-read-tail:
	$(CARGO) run --release --locked --bin tessera -- bench read-tail --slow 1

bench-seq-read:
	$(CARGO) run --release --locked --bin tessera -- bench seq-read
