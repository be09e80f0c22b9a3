#!/usr/bin/env bash
# Builds the Python example plugin(s) in plugins/python/ into plugins/target/python/*.wasm with
# the SDK's build script (sdk/python/build.sh: componentize-py 0.25.1 from PyPI in a virtual
# environment, the `plugin-basic` world, --stub-wasi, manifest embedded with `wasmtp plugin
# embed-manifest`), after running each plugin's native tests under plain python3.
# The venv lives in plugins/target/py-venv (ignored, reused by reruns). The wasmtp used for
# embedding is $WASMTP if set, else the repository's debug build (the build the tests use).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
export WASMTP_PY_VENV="${WASMTP_PY_VENV:-$here/target/py-venv}"
if [ -z "${WASMTP:-}" ]; then
    cargo build -q --locked --bin wasmtp --manifest-path "$root/Cargo.toml"
    export WASMTP="$root/target/debug/wasmtp"
fi
for dir in "$here"/python/*/; do
    name="$(basename "$dir")"
    if compgen -G "$dir/test_*.py" >/dev/null; then
        bash "$root/sdk/python/build.sh" test --sdk "$root/sdk/python" --wit "$root/wit" "$dir"
    fi
    bash "$root/sdk/python/build.sh" --sdk "$root/sdk/python" --wit "$root/wit" \
        --out "$here/target/python/${name//-/_}.wasm" "$dir"
done
