#!/usr/bin/env bash
# The whole test suite: formatting and lints, engine unit/model/crash/
# concurrency/corruption tests, and end-to-end tests of the dms binary with
# its daemon on real loop devices and filesystems (those need root,
# /dev/fuse and loop devices; they say SKIPPED when missing, and fail under CI).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
need=()
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(util-linux)
command -v flock >/dev/null || need+=(util-linux)
command -v fio >/dev/null || need+=(fio)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v qemu-io >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release -p dms-cli
export DMS_BIN="$PWD/target/release/dms"
cargo test --workspace
