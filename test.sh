#!/usr/bin/env bash
# The whole test suite: formatting and lints; engine unit, model, crash,
# concurrency and corruption tests; end-to-end tests of the dms binary and
# its daemon with real loop devices, filesystems and NBD clients; and the
# Python module's pytest suite. Tests that need root, /dev/fuse or loop
# devices say SKIPPED when those are missing, and fail under CI.
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
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v rbd >/dev/null || need+=(ceph-common)
command -v socat >/dev/null || need+=(socat)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
tools/check-layers.sh >/dev/null
cargo build --release -p dms-cli
export DMS_BIN="$PWD/target/release/dms"
cargo test --workspace
# The model test again with rollbacks merged in one-chunk groups by four
# threads, so that its small origins go through the parallel merge too.
DMS_ROLLBACK_GROUP=1 DMS_ROLLBACK_WORKERS=4 DMS_MODEL_CASES=300 \
    cargo test -p dms-engine --test model
# The fuzz targets still compile (fuzz/run.sh runs them with cargo fuzz).
cargo check -q --manifest-path fuzz/Cargo.toml --bins
# The Python module, built with maturin into a venv, and its tests.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade maturin pytest typing_extensions
.venv/bin/pip install -q ./pyshim
(cd pyshim && ../.venv/bin/python -m pytest -q tests)
