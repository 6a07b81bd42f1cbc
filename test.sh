#!/usr/bin/env bash
# The whole test suite: lint, unit, property, crash, concurrency, corruption
# and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
