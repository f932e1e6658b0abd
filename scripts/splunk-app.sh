#!/usr/bin/env bash
# Packages the Splunk app in siem/splunk/defender_edge as
# dist/defender_edge-<version>.tgz, the file Splunk Web (Apps > Manage Apps >
# Install app from file), `splunk install app` and AppInspect take. The
# version is app.conf's, which the test suite keeps equal to the Cargo
# workspace version. The archive is reproducible: same sources, same bytes.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/splunk-app.sh [--out DIR]

Writes DIR/defender_edge-<version>.tgz (one top-level folder, defender_edge/)
and prints its path.

Options:
  --out DIR   Output folder [default: dist]
  -h, --help  This help
USAGE
}

cd "$(dirname "$0")/.."
repo=$PWD
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "splunk-app.sh: --out needs a folder" >&2; exit 2; }
           out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "splunk-app.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

app=siem/splunk/defender_edge
# The [launcher] and [id] stanzas both carry the version; they must agree.
versions=$(sed -n 's/^version *= *\([^ ]*\) *$/\1/p' "$app/default/app.conf" | sort -u)
if [ "$(printf '%s\n' "$versions" | grep -c .)" != 1 ]; then
  echo "splunk-app.sh: $app/default/app.conf must give one version in [launcher] and [id], found: ${versions:-none}" >&2
  exit 2
fi
version=$versions

mkdir -p "$out"
out=$(cd "$out" && pwd)
archive="$out/defender_edge-$version.tgz"
# Copy what git would ship (no editor or OS droppings), with the modes
# Splunk expects: folders 755, files 644 (an app has no executables).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/defender_edge"
(cd "$app" && find . -type f ! -name '.*' ! -name '*~' -print0) |
  while IFS= read -r -d '' file; do
    mkdir -p "$stage/defender_edge/$(dirname "$file")"
    cp "$app/$file" "$stage/defender_edge/$file"
  done
find "$stage/defender_edge" -type d -exec chmod 755 {} +
find "$stage/defender_edge" -type f -exec chmod 644 {} +
# Every entry gets the time of the app's last commit (checkouts do not keep
# file times), so a rebuild of the same sources gives the same bytes.
mtime=$(git -C "$repo" log -1 --format=%ct -- "$app" 2>/dev/null || true)
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
  --mtime="@${mtime:-0}" -cf - defender_edge | gzip -n -9 > "$archive.tmp"
mv "$archive.tmp" "$archive"
echo "$archive"
