#!/usr/bin/env bash
# Builds the JavaScript example plugin(s) in plugins/js/ into plugins/target/js/*.wasm with the
# SDK's build script (sdk/js/build.sh: componentize-js as sdk/js/package-lock.json pins it,
# the `plugin-basic` world, WASI imports dropped, manifest embedded with `wasmtp plugin
# embed-manifest`), after running each plugin's native tests (node --test, fake host).
# node_modules lives in plugins/target/js-tools (ignored; `npm ci` reruns only when the lock
# changes). The wasmtp used for embedding is $WASMTP if set, else the repository's debug build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
export WASMTP_JS_TOOLS="${WASMTP_JS_TOOLS:-$here/target/js-tools}"
if [ -z "${WASMTP:-}" ]; then
    cargo build -q --locked --bin wasmtp --manifest-path "$root/Cargo.toml"
    export WASMTP="$root/target/debug/wasmtp"
fi
for dir in "$here"/js/*/; do
    name="$(basename "$dir")"
    if [ -d "$dir/test" ]; then
        bash "$root/sdk/js/build.sh" test --sdk "$root/sdk/js" --wit "$root/wit" "$dir"
    fi
    bash "$root/sdk/js/build.sh" --sdk "$root/sdk/js" --wit "$root/wit" \
        --out "$here/target/js/${name//-/_}.wasm" "$dir"
done
