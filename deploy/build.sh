#!/usr/bin/env bash
# The one way this project builds the `stroom` binary: CI runs it as is (debug), the container image
# runs it with --release. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenDP's secure RNG links the system OpenSSL (libssl-dev) instead of building it from source.
export OPENSSL_NO_VENDOR=1
cargo build --locked --bin stroom "$@"
