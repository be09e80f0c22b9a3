#!/usr/bin/env bash
# Builds a wasmtp plugin written in Python into one component file, or runs its native tests.
#
#   ./build.sh [--world plugin-basic|plugin] [--out FILE] [DIR]   build DIR (default: this
#                                                                   script's directory)
#   ./build.sh test [--world W] [DIR]                               native tests (python3 -m
#                                                                   unittest discover -p 'test_*.py')
#
# DIR holds app.py (which assigns `Hooks = YourPlugin.export()`), the SDK (wasmtp_plugin/), the
# WIT (wit/plugin.wit) and the manifest (wasmtp-plugin.json); --sdk DIR and --wit DIR take the
# SDK and the WIT from elsewhere (the wasmtp repository's own plugins do). The component is written to
# DIR/NAME.wasm (NAME from the manifest) unless --out says otherwise; then, when DIR/tests
# holds cases and this wasmtp has `plugin test`, they are replayed against it.
#
# componentize-py 0.25.1 comes from PyPI into a virtual environment, never the global Python:
# $WASMTP_PY_VENV, else ~/.cache/wasmtp/componentize-py-0.25.1 (shared by every plugin). The
# world: componentize-py imports every interface of it, so `plugin-basic` (log and notes, no
# grants; the default) unless the plugin uses kv, dns or clock: then `plugin`, and the server
# config must grant all three. --stub-wasi removes every WASI import (the server grants none).
# The manifest is embedded with `wasmtp plugin embed-manifest` ($WASMTP, else `wasmtp` on PATH).
set -euo pipefail
want="0.25.1"
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
for f in "$dir/app.py" "$sdk/wasmtp_plugin/__init__.py" "$wit/plugin.wit" "$dir/wasmtp-plugin.json"; do
    [ -e "$f" ] || { echo "build.sh: $f is missing" >&2; exit 1; }
done

venv="${WASMTP_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmtp/componentize-py-$want}"
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$want"; then
    echo "build.sh: installing componentize-py==$want into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "componentize-py==$want"
fi
cpy="$venv/bin/componentize-py"

if [ "$mode" = "test" ]; then
    # The generated bindings are plain Python: the tests build the same records the component
    # sees, and wasmtp_plugin.testing.FakeHost swaps the capabilities for fakes.
    rm -rf "$dir/.wasmtp/bindings"
    "$cpy" -d "$wit" -w "$world" bindings "$dir/.wasmtp/bindings" >/dev/null
    cd "$dir"
    PYTHONPATH="$dir:$sdk:$dir/.wasmtp/bindings" PYTHONDONTWRITEBYTECODE=1 \
        exec python3 -m unittest discover -s "$dir" -p 'test_*.py' -t "$dir"
fi

name="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$dir/wasmtp-plugin.json")"
out="${out:-$dir/$name.wasm}"
mkdir -p "$(dirname "$out")"
echo "componentize-py: $dir -> $out (world $world)" >&2
(cd "$dir" && "$cpy" -d "$wit" -w "$world" componentize --stub-wasi -p "$dir" -p "$sdk" app -o "$out" >/dev/null)
wasmtp="${WASMTP:-$(command -v wasmtp || true)}"
if [ -z "$wasmtp" ]; then
    echo "build.sh: wasmtp is not on PATH (or set WASMTP): cannot embed the manifest" >&2
    exit 1
fi
"$wasmtp" plugin embed-manifest "$out" "$dir/wasmtp-plugin.json"
if compgen -G "$dir/tests/*.toml" >/dev/null && "$wasmtp" plugin test --help >/dev/null 2>&1; then
    "$wasmtp" plugin test "$out" "$dir/tests"
fi
