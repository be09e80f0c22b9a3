#!/usr/bin/env bash
# Builds the Python example plugin(s) in plugins/python/ into plugins/target/python/*.wasm with
# componentize-py 0.25.1 (installed from PyPI when missing). They target the `plugin-basic` world
# (log + notes only): componentize-py imports every interface of its world whether used or not.
# --stub-wasi replaces all WASI imports with traps, so the component imports only wasmtp:plugin.
# Each plugin's wasmtp-plugin.json (its manifest) is then embedded with `wasmtp plugin
# embed-manifest`: $WASMTP if set, else the repository's wasmtp built by cargo (debug, the build
# the tests use).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
want="0.25.1"
if ! componentize-py --version 2>/dev/null | grep -q "$want"; then
    python3 -m pip install --quiet "componentize-py==$want"
fi
out="$here/target/python"
mkdir -p "$out"
for dir in "$here"/python/*/; do
    name="$(basename "$dir")"
    wasm="$out/${name//-/_}.wasm"
    echo "componentize-py: $name -> $wasm"
    (cd "$dir" && componentize-py -d "$here/../wit" -w plugin-basic componentize --stub-wasi app -o "$wasm")
    if [ -f "$dir/wasmtp-plugin.json" ]; then
        if [ -z "${WASMTP:-}" ]; then
            cargo build -q --locked --bin wasmtp --manifest-path "$here/../Cargo.toml"
            WASMTP="$here/../target/debug/wasmtp"
        fi
        "$WASMTP" plugin embed-manifest "$wasm" "$dir/wasmtp-plugin.json"
    fi
done
