#!/usr/bin/env bash
# The main job: build dms and run it on image files it creates in ./dms-demo.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -p dms-cli
exec target/release/dms demo --dir dms-demo "$@"
