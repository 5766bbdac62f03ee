#!/usr/bin/env bash
# The Debian package, made by cargo-deb: the metadata is [package.metadata.deb] in Cargo.toml,
# the maintainer scripts are in packaging/debian/. Installs the pinned cargo-deb first when the
# installed one is another version (or none).
#
#   scripts/deb.sh                 a release build, then target/debian/village_<version>-1_<arch>.deb
#                                  (and its debug symbols, village-dbgsym_*.ddeb)
#   scripts/deb.sh ARGS...         ARGS go to `cargo deb` (e.g. --output DIR, --deb-revision N)
#   scripts/deb.sh --install-only  installs cargo-deb and stops (scripts/test.sh: tests/packaging.rs
#                                  packages the binary under test with it, without a release build)
#
# Install it with `sudo apt install ./target/debian/village_*.deb`: the server starts, its first
# admin token is in /var/lib/village/admin-token. `apt remove` keeps the configuration and the
# data, `apt purge` deletes them.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $version"; then
  cargo install --locked "cargo-deb@$version"
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
# [profile.release] keeps debug info (debug = 1): --dbgsym strips it from the package's binary into
# a separate target/debian/village-dbgsym_*.ddeb, as Debian's own packages do.
exec cargo deb --locked --dbgsym "$@"
