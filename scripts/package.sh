#!/usr/bin/env bash
# Builds defender-edge for the Raspberry Pi (and x86_64) and lays out a
# Greengrass component the way `greengrass-cli deployment create --recipeDir
# --artifactDir` and the GDK expect:
#
#   OUT/recipes/com.defenderedge.DefenderEdge-VERSION.yaml
#   OUT/artifacts/com.defenderedge.DefenderEdge/VERSION/defender-edge-aarch64
#   OUT/artifacts/com.defenderedge.DefenderEdge/VERSION/defender-edge-armv7
#   OUT/artifacts/com.defenderedge.DefenderEdge/VERSION/defender-edge-x86_64
#
# and, for each --plugin, a plugin component from recipes/plugin-component.yaml
# with the .wasm and a precompiled .cwasm for each target.
# Run `scripts/package.sh --help` for the options; docs/DEPLOY.md for the rest.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/package.sh [OPTIONS]

Cross-compiles defender-edge and writes a Greengrass component (recipe with the
version filled in, artifacts in artifacts/<component>/<version>/).

Options:
  --out DIR             Output folder [default: dist/greengrass]. Its recipes/
                        and artifacts/ go to greengrass-cli --recipeDir and
                        --artifactDir. For the GDK: greengrass-build.
  --version VERSION     Component version [default: the Cargo workspace version]
  --targets LIST        Comma-separated: aarch64, armv7, x86_64
                        [default: aarch64,armv7,x86_64]
  --profile NAME        Cargo profile [default: release]
  --firehose            Use the recipe that depends on the Token Exchange
                        Service (recipes/com.defenderedge.DefenderEdge.firehose.yaml)
  --bucket NAME         Write artifact URIs as s3://NAME/<component>/<version>/FILE,
                        for `aws greengrassv2 create-component-version`. Without
                        it the URIs keep the GDK's placeholders
                        (s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/FILE),
                        which greengrass-cli ignores.
  --plugin COMPONENT=FILE.wasm
                        Also package FILE.wasm as plugin component COMPONENT
                        (same version), repeatable. The plugin name is the
                        file stem with _ turned into - (owner_enrichment.wasm
                        is the plugin owner-enrichment). The component ships
                        FILE.wasm and, for each of --targets, the plugin
                        precompiled for it (NAME.<target>.cwasm), which hosts
                        with plugins.trustPrecompiled load without compiling.
  --compiler PATH       The defender-edge that precompiles the plugins; it
                        must be of the same release as the packaged hosts
                        [default: the x86_64 or aarch64 artifact just
                        packaged when it runs here, else a native build]
  --no-precompile       Ship plugins as .wasm only (devices compile them)
  --recipe-file NAME    File name of the host recipe in OUT/recipes
                        [default: com.defenderedge.DefenderEdge-VERSION.yaml].
                        The GDK's custom build passes recipe.yaml, the name
                        `gdk component publish` reads back.
  --no-build            Package binaries already built with the same profile
  --no-strip            Keep symbols (the cross binutils strip them otherwise)
  -h, --help            This help

Needs (Debian): gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf,
libc6-dev-arm64-cross, libc6-dev-armhf-cross, and the Rust targets
aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf; scripts/test.sh
installs them all. The linkers are set in .cargo/config.toml.

Examples:
  scripts/package.sh
  scripts/package.sh --targets aarch64 --out /tmp/gg
  scripts/package.sh --plugin com.example.OwnerEnrichment=target/wasm32-wasip2/release/owner_enrichment.wasm
  sudo /greengrass/v2/bin/greengrass-cli deployment create \
      --recipeDir dist/greengrass/recipes --artifactDir dist/greengrass/artifacts \
      --merge com.defenderedge.DefenderEdge=0.1.0
USAGE
}

# Relative paths in the arguments are relative to where the script was
# started (the GDK starts it in recipes/); the build runs from the repository.
start=$PWD
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$start/$1" ;; esac; }
cd "$(dirname "$0")/.."
repo=$PWD
component=com.defenderedge.DefenderEdge
out=dist/greengrass
version=
targets=aarch64,armv7,x86_64
profile=release
recipe=recipes/$component.yaml
bucket=
recipe_file=
build=1
strip=1
plugins=()
compiler=
precompile=1

die() { echo "package.sh: $*" >&2; exit 2; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$(absolute "${2:?--out needs a folder}"); shift 2 ;;
    --version) version=${2:?--version needs a version}; shift 2 ;;
    --targets) targets=${2:?--targets needs a list}; shift 2 ;;
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    --firehose) recipe=recipes/$component.firehose.yaml; shift ;;
    --bucket) bucket=${2:?--bucket needs a name}; shift 2 ;;
    --plugin) plugins+=("${2:?--plugin needs COMPONENT=FILE.wasm}"); shift 2 ;;
    --recipe-file) recipe_file=${2:?--recipe-file needs a name}; shift 2 ;;
    --compiler) compiler=$(absolute "${2:?--compiler needs a path}"); shift 2 ;;
    --no-precompile) precompile=0; shift ;;
    --no-build) build=0; shift ;;
    --no-strip) strip=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

if [ -z "$version" ]; then
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
  [ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"
fi
# Greengrass component versions are semantic versions (major.minor.patch).
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "version $version is not major.minor.patch"

# The Rust target, the artifact suffix used in the recipe's manifests, and the
# strip program for each short name.
triple_of() {
  case "$1" in
    aarch64) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
    x86_64) echo x86_64-unknown-linux-gnu ;;
    *) die "unknown target $1 (use aarch64, armv7, x86_64)" ;;
  esac
}
strip_of() {
  case "$1" in
    aarch64) echo aarch64-linux-gnu-strip ;;
    armv7) echo arm-linux-gnueabihf-strip ;;
    x86_64) echo strip ;;
  esac
}
# Cargo names the dev profile's folder `debug`.
profile_dir=$profile
[ "$profile" = dev ] && profile_dir=debug
target_dir=${CARGO_TARGET_DIR:-$repo/target}

IFS=, read -r -a short_targets <<<"$targets"
artifacts=$out/artifacts/$component/$version
mkdir -p "$out/recipes" "$artifacts"

for short in "${short_targets[@]}"; do
  triple=$(triple_of "$short")
  if [ "$build" = 1 ]; then
    # The Pi binaries are device builds (feature `device`, host/Cargo.toml):
    # without `cross-compile` they compile plugins only for themselves, and
    # build in half the time. The x86_64 binary keeps it: it is also the
    # precompiler of every target's plugins (--compiler).
    features=()
    [ "$short" = x86_64 ] || features=(--no-default-features --features device)
    say "building defender-edge for $triple ($profile${features:+, device features})"
    cargo build --locked --profile "$profile" --target "$triple" --bin defender-edge "${features[@]}"
  fi
  binary=$target_dir/$triple/$profile_dir/defender-edge
  [ -x "$binary" ] || die "$binary is missing (built with --profile $profile?)"
  cp "$binary" "$artifacts/defender-edge-$short"
  if [ "$strip" = 1 ]; then
    "$(strip_of "$short")" "$artifacts/defender-edge-$short"
  fi
  chmod 0755 "$artifacts/defender-edge-$short"
done

# The recipe: the version filled in, and the URIs pointed at the bucket when
# one is given. Manifests whose binary was not built are kept: a core of that
# architecture then fails the deployment naming the missing artifact, rather
# than silently matching nothing.
uri_prefix="s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/"
[ -n "$bucket" ] && uri_prefix="s3://$bucket/$component/$version/"
write_recipe() { # source, component, version, destination
  sed -e "s|^ComponentVersion: .*|ComponentVersion: \"$3\"|" \
      -e "s|s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/|${uri_prefix//$component/$2}|" \
      "$1" >"$4"
}
recipe_file=${recipe_file:-$component-$version.yaml}
write_recipe "$recipe" "$component" "$version" "$out/recipes/$recipe_file"
say "wrote $out/recipes/$recipe_file"

# The plugin precompiler: a defender-edge that runs on this machine, built from
# this tree (a .cwasm loads only into the wasmtime release that made it).
if [ "${#plugins[@]}" -gt 0 ] && [ "$precompile" = 1 ] && [ -z "$compiler" ]; then
  here=$(uname -m)
  if [[ ",$targets," == *",$here,"* ]]; then
    compiler=$artifacts/defender-edge-$here
  else
    if [ "$build" = 1 ]; then
      say "building defender-edge for this machine to precompile plugins"
      cargo build --locked --profile "$profile" --bin defender-edge
    fi
    compiler=$target_dir/$profile_dir/defender-edge
  fi
fi
if [ "$precompile" = 1 ] && [ -n "$compiler" ]; then
  [ -x "$compiler" ] || die "$compiler is missing: pass --compiler PATH (a defender-edge of this release that runs here), or --no-precompile"
fi

for spec in "${plugins[@]}"; do
  plugin_component=${spec%%=*}
  wasm=$(absolute "${spec#*=}")
  [ "$plugin_component" != "$spec" ] && [ -n "$plugin_component" ] || die "--plugin $spec: expected COMPONENT=FILE.wasm"
  [[ $plugin_component =~ ^[A-Za-z0-9._-]+$ ]] || die "--plugin $spec: $plugin_component is not a component name"
  [ -f "$wasm" ] || die "--plugin $spec: $wasm does not exist"
  stem=$(basename "$wasm" .wasm)
  name=${stem//_/-}
  [[ $name =~ ^[a-z][a-z0-9-]*$ ]] || die "--plugin $spec: plugin name $name must be lowercase letters, digits and dashes"
  plugin_artifacts=$out/artifacts/$plugin_component/$version
  mkdir -p "$plugin_artifacts"
  cp "$wasm" "$plugin_artifacts/$name.wasm"
  # Keep the manifests of the targets precompiled for; drop the others.
  drop=()
  for arch in aarch64 armv7 x86_64; do
    if [ "$precompile" = 1 ] && [[ ",$targets," == *",$arch,"* ]]; then
      say "precompiling $name for $arch"
      "$compiler" plugin compile "$wasm" --target "$arch" -o "$plugin_artifacts/$name.$arch.cwasm" >&2 \
        || die "precompiling $wasm for $arch failed"
    else
      drop+=(-e "/^  # >>> $arch\$/,/^  # <<< $arch\$/d")
    fi
  done
  sed "${drop[@]}" \
      -e "s|com\.example\.defenderedge\.OwnerEnrichment|$plugin_component|g" \
      -e "s|owner-enrichment|$name|g" \
      -e "s|^ComponentVersion: .*|ComponentVersion: \"$version\"|" \
      -e "s|s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/|${uri_prefix//$component/$plugin_component}|" \
      recipes/plugin-component.yaml >"$out/recipes/$plugin_component-$version.yaml"
  say "wrote $out/recipes/$plugin_component-$version.yaml"
done

say "done: greengrass-cli deployment create --recipeDir $out/recipes --artifactDir $out/artifacts --merge $component=$version"
