#!/usr/bin/env bash
# Builds a wasmtp plugin written in JavaScript into one component file, or runs its native tests.
#
#   ./build.sh [--world plugin-basic|plugin] [--out FILE] [DIR]   build DIR (default: this
#                                                                   script's directory)
#   ./build.sh test [DIR]                                           native tests: node --test
#                                                                   on DIR/test/*.test.js
#
# DIR holds app.js (which does `export const hooks = exportPlugin(YourPlugin)`), the SDK
# (wasmtp-plugin/), the WIT (wit/plugin.wit), the manifest (wasmtp-plugin.json) and the pinned
# toolchain (package.json + package-lock.json); --sdk DIR and --wit DIR take the SDK (with its
# package files) and the WIT from elsewhere (the wasmtp repository's own plugins do). The
# component is written to DIR/NAME.wasm (NAME from the manifest) unless --out; then, when
# DIR/tests holds cases and this wasmtp has `plugin test`, they are replayed against it.
#
# componentize-js comes from npm at the exact version package-lock.json pins (`npm ci`, only when
# the lock changed), into $WASMTP_JS_TOOLS (default: DIR itself, i.e. DIR/node_modules).
# `-d stdio random clocks http fetch-event` drops every WASI import the server does not grant.
# The world: componentize-js imports every interface of it, so `plugin-basic` (log and notes, no
# grants; the default) unless the plugin imports kv.js, dns.js or clock.js: then `plugin`, and
# the server config must grant "kv", "dns" and "clock". The manifest is embedded with `wasmtp
# plugin embed-manifest` ($WASMTP, else `wasmtp` on PATH).
set -euo pipefail
mode="build"
world="plugin-basic"
out=""
dir=""
sdk=""
wit=""
while [ $# -gt 0 ]; do
    case "$1" in
        test) mode="test" ;;
        --world) world="$2"; shift ;;
        --out) out="$2"; shift ;;
        --sdk) sdk="$2"; shift ;;
        --wit) wit="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) dir="$1" ;;
    esac
    shift
done
dir="$(cd "${dir:-$(dirname "${BASH_SOURCE[0]}")}" && pwd)"
sdk="$(cd "${sdk:-$dir}" && pwd)"
wit="$(cd "${wit:-$dir/wit}" && pwd)"
for f in "$dir/app.js" "$sdk/wasmtp-plugin/index.js" "$sdk/package-lock.json" "$wit/plugin.wit" \
    "$dir/wasmtp-plugin.json"; do
    [ -e "$f" ] || { echo "build.sh: $f is missing" >&2; exit 1; }
done
command -v node >/dev/null || { echo "build.sh: node is not installed (Node.js 20.19 or later)" >&2; exit 1; }

# The sources componentize-js reads: the plugin's own files, with the SDK beside them when it
# lives elsewhere (componentize-js resolves relative imports at build time).
src="$dir"
if [ "$sdk" != "$dir" ]; then
    src="$dir/.wasmtp/src"
    rm -rf "$src" && mkdir -p "$src"
    tar -C "$dir" --exclude=./.wasmtp --exclude=./node_modules --exclude=./target -cf - . \
        | tar -C "$src" -xf -
    cp -R "$sdk/wasmtp-plugin" "$src/"
    # ES modules for node (the native tests): the SDK's package.json says "type": "module".
    [ -e "$src/package.json" ] || cp "$sdk/package.json" "$src/"
fi

if [ "$mode" = "test" ]; then
    # The `wasmtp:plugin/*` imports resolve to wasmtp-plugin/testing.js's fakes.
    cd "$src"
    exec node --import ./wasmtp-plugin/register-fakes.js --test test/
fi

tools="${WASMTP_JS_TOOLS:-$dir}"
mkdir -p "$tools"
if [ "$tools" != "$sdk" ]; then
    cmp -s "$sdk/package.json" "$tools/package.json" || cp "$sdk/package.json" "$tools/"
    cmp -s "$sdk/package-lock.json" "$tools/package-lock.json" || cp "$sdk/package-lock.json" "$tools/"
fi
stamp="$tools/node_modules/.wasmtp-lock"
if ! cmp -s "$tools/package-lock.json" "$stamp"; then
    echo "build.sh: npm ci in $tools (componentize-js as package-lock.json pins it)" >&2
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$tools/package-lock.json" "$stamp"
fi

name="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).name)' "$dir/wasmtp-plugin.json")"
out="${out:-$dir/$name.wasm}"
mkdir -p "$(dirname "$out")"
echo "componentize-js: $dir -> $out (world $world)" >&2
"$tools/node_modules/.bin/componentize-js" "$src/app.js" --wit "$wit" --world-name "$world" \
    -d stdio random clocks http fetch-event -o "$out" >/dev/null
wasmtp="${WASMTP:-$(command -v wasmtp || true)}"
if [ -z "$wasmtp" ]; then
    echo "build.sh: wasmtp is not on PATH (or set WASMTP): cannot embed the manifest" >&2
    exit 1
fi
"$wasmtp" plugin embed-manifest "$out" "$dir/wasmtp-plugin.json"
if compgen -G "$dir/tests/*.toml" >/dev/null && "$wasmtp" plugin test --help >/dev/null 2>&1; then
    "$wasmtp" plugin test "$out" "$dir/tests"
fi
