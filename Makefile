# The one command for tests: `make test`. It installs what it needs (nothing
# beyond a Rust toolchain for now: protoc comes from a crate), checks
# formatting and lints, and runs every test, the multi-process fault tests
# (which mount a tmpfs, so run as root) included.

CARGO ?= cargo

.PHONY: test fmt lint unit demo bench-codec bench-read-tail bench-seq-read

test: fmt lint unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

demo:
	$(CARGO) run --release --locked --bin tessera -- demo

bench-codec:
	$(CARGO) run --release --locked --bin tessera -- bench codec

bench-read-tail:
	$(CARGO) run --release --locked --bin tessera -- bench read-tail --slow 1

bench-seq-read:
	$(CARGO) run --release --locked --bin tessera -- bench seq-read
