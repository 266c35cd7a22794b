#!/usr/bin/env bash
# The project's test command (README, .ci/run): lint, check generated files, build, run every test.
# It installs what the tests need itself, so it works on a fresh machine with only Rust and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the e2e tests run the strata binary)"
cargo build --locked -p strata-cli

echo "== generated CRDs match apis/"
target/debug/strata crdgen --check

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
else
  cargo test --workspace --locked --no-fail-fast
fi
