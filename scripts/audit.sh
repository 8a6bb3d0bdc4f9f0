#!/usr/bin/env bash
# Checks the dependency tree with cargo-deny (advisories, licenses, bans, sources),
# offline, against the RustSec snapshot in ../shared/rustsec-advisory-db.
#
# cargo-deny reads the advisory database from a git checkout at a path it derives from
# the database URL. The snapshot is plain files, so this script makes a throwaway git
# repository of it at that path, committed with the snapshot's own date so the age check
# sees how old it really is (deny.toml states the age it accepts).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
snapshot="${ADVISORY_DB:-$repo/../shared/rustsec-advisory-db}"
[[ -d "$snapshot/crates" ]] || { echo "no advisory snapshot at $snapshot (set ADVISORY_DB)" >&2; exit 1; }

# Pinned: a new cargo-deny may read deny.toml differently; upgrade it here, on purpose.
CARGO_DENY_VERSION=0.20.2
if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]]; then
    echo "installing cargo-deny $CARGO_DENY_VERSION"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet
fi

cd "$repo"
# cargo-deny reads the whole graph, every platform included: have it all locally.
cargo fetch --locked --quiet
# Ask cargo-deny where it looks for the database (it fails here, having none yet).
db_path="$( (cargo deny --offline --log-level debug check advisories 2>&1 || true) \
    | sed -n "s/.*Opening advisory database at '\([^']*\)'.*/\1/p" | head -n 1)"
[[ -n "$db_path" ]] || { echo "could not learn cargo-deny's database path" >&2; exit 1; }

snapshot_date="$(sed -n 's/.*(\([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\)).*/\1/p' "$snapshot/SNAPSHOT.md" | head -n 1)"
rm -rf "$db_path"
mkdir -p "$db_path"
cp -R "$snapshot/." "$db_path/"
chmod -R u+w "$db_path"
(
    cd "$db_path"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z" \
        git -c user.name=audit -c user.email=audit@localhost commit -qm "RustSec snapshot ${snapshot_date}"
)
echo "advisory database: snapshot of ${snapshot_date} at $db_path"

cargo deny --offline check advisories licenses bans sources
