#!/usr/bin/env bash
# Builds the release binary and, from that one binary, webhookd's .deb
# (cargo-deb) and .rpm (cargo-generate-rpm) into target/, then prints their
# paths. Installs cargo-deb and cargo-generate-rpm first if they are missing.
#
#   packaging/build.sh [REVISION]
#
# REVISION is the package revision (Debian revision, RPM release; default 1):
# packaging/test.sh builds revision 2 to test an upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."

revision="${1:-1}"
case "$revision" in
  '' | *[!0-9]*) echo "build.sh: REVISION must be a number, got '$revision'" >&2; exit 2 ;;
esac

cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo generate-rpm --version >/dev/null 2>&1 || cargo install --locked cargo-generate-rpm

# Reproducible timestamps inside both packages: the last commit's time.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
  export SOURCE_DATE_EPOCH
fi

cargo build --release --locked --bin webhookd

# Where cargo put the binary (CARGO_TARGET_DIR or build.target-dir may move it).
metadata="$(cargo metadata --format-version 1 --no-deps)"
target_dir="$(printf '%s' "$metadata" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
version="$(printf '%s' "$metadata" | sed -n 's/.*"name":"webhookd","version":"\([^"]*\)".*/\1/p')"
[ -x "$target_dir/release/webhookd" ] || { echo "build.sh: no binary at $target_dir/release/webhookd" >&2; exit 1; }
[ -n "$version" ] || { echo "build.sh: cannot read the package version from cargo metadata" >&2; exit 1; }

# Both packages take their payload from target/packaging/, so they carry
# the same bytes: the binary stripped the way dh_strip does (the release
# profile keeps line tables for profiling; a package does not need them),
# and the man page compressed reproducibly.
staging=target/packaging
mkdir -p "$staging"
strip --strip-unneeded --remove-section=.comment -o "$staging/webhookd" "$target_dir/release/webhookd"
gzip -9n <packaging/webhookd.8 >"$staging/webhookd.8.gz"

mkdir -p target/debian target/generate-rpm
deb="target/debian/webhookd_${version}-${revision}_$(dpkg --print-architecture 2>/dev/null || echo amd64).deb"
cargo deb --no-build --no-strip --deb-revision "$revision" --output "$deb" >/dev/null
rpm="target/generate-rpm/webhookd-${version}-${revision}.$(uname -m).rpm"
cargo generate-rpm --set-metadata "release = \"$revision\"" --output "$rpm"

[ -f "$deb" ] || { echo "build.sh: cargo deb did not write $deb" >&2; exit 1; }
[ -f "$rpm" ] || { echo "build.sh: cargo generate-rpm did not write $rpm" >&2; exit 1; }
echo "deb: $deb"
echo "rpm: $rpm"
