#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real server, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
