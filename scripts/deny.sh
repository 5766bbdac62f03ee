#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (rules and every exception in deny.toml): RustSec
# advisories (vulnerable, unmaintained or yanked crates), licences, duplicate versions, sources.
#
# RustSec's advisory database is fetched from GitHub when GitHub can be reached. Without that
# route, the snapshot kept in deny/advisory-db.tar.gz is used (its commit and date are in
# deny/advisory-db.snapshot). Refresh the snapshot from a checkout of
# https://github.com/rustsec/advisory-db with:
#   scripts/deny.sh --update-snapshot PATH-TO-CHECKOUT
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
snapshot=deny/advisory-db.tar.gz
if [ "${1:-}" = "--update-snapshot" ]; then
  checkout=${2:?usage: scripts/deny.sh --update-snapshot PATH-TO-ADVISORY-DB-CHECKOUT}
  stamp=$(git -C "$checkout" show -s --format='%H %cI' HEAD)
  date=${stamp#* }
  tar -C "$checkout" --sort=name --owner=0 --group=0 --numeric-owner --mtime="$date" \
    -czf "$snapshot" LICENSE.txt crates rust
  echo "$stamp" > deny/advisory-db.snapshot
  echo "snapshot of $stamp written to $snapshot"
  exit 0
fi
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $version"; then
  cargo install --locked "cargo-deny@$version"
fi
# Where cargo-deny keeps the default database (db-path in deny.toml, then a directory named
# after the database's URL).
db=target/advisory-dbs/advisory-db-3157b0e258782691
# The server speaks HTTP/1.1 only: no HTTP/2 implementation may be compiled into it (test doubles,
# dev-dependencies, may use one).
if [ -n "$(cargo tree --locked -e normal,build -i h2 2>/dev/null)" ]; then
  echo "h2 (HTTP/2) is among the server's dependencies:" >&2
  cargo tree --locked -e normal,build -i h2 >&2
  exit 1
fi
if timeout 20 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  exec cargo deny check
fi
read -r commit date < deny/advisory-db.snapshot
if [ "$(git -C "$db" log -1 --format=%s 2>/dev/null)" != "snapshot $commit" ]; then
  rm -rf "$db"
  mkdir -p "$db"
  tar -xzf "$snapshot" -C "$db"
  # cargo-deny reads the database's age from its last commit: the snapshot's own date.
  git -C "$db" init -q
  git -C "$db" add -A
  GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date \
    git -C "$db" -c user.name=village -c user.email=village@localhost commit -q -m "snapshot $commit"
fi
echo "cargo deny: GitHub cannot be reached; advisories from the snapshot of $date ($commit)"
# Offline, cargo-deny reads the crate graph of every target, which needs crates a build for this
# one never downloads (optional ones behind cfgs): fetch them from the registry first.
cargo fetch --locked --quiet
exec cargo deny --offline check
