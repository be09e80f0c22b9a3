#!/bin/sh
# Builds the plugin component and checks it: native unit tests, the wasm32-wasip2 build, then the
# offline cases in tests/ through wasmtp's own plugin host (`wasmtp plugin test`).
set -eu
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo test --quiet
cargo build --release --target wasm32-wasip2
wasm="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{name_snake}}.wasm"
cp "$wasm" {{name}}.wasm
echo "built {{name}}.wasm"
if command -v wasmtp >/dev/null 2>&1; then
    wasmtp plugin test {{name}}.wasm tests/
fi
