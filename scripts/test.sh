#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real server, real HTTP
# and WebSocket clients, and the dashboard in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard's browser tests (tests/dashboard.rs) drive Debian's Chromium through its WebDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi
# The runner's tests clone git repositories and run the fake agent CLIs (Python 3, standard
# library only).
for tool in git python3; do
  if ! command -v "$tool" >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool"
  fi
done
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Advisories, licences, duplicate versions, sources (deny.toml); installs cargo-deny once.
./scripts/deny.sh
# cargo-deb at its pinned version: tests/packaging.rs builds the .deb of the binary under test.
./scripts/deb.sh --install-only
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
