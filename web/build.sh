#!/usr/bin/env bash
# Builds the browser demo into one folder that any static web server can serve:
#   web/build.sh [OUT]      (default OUT: web/dist)
# OUT/index.html, app.js, worker.js, style.css   the page (copied from web/www)
# OUT/pkg/                                      the WebAssembly module and its JS glue
# OUT/model/                                    the model bundle (copied from assets/web)
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock; both install without downloading binaries:
#   rustup target add wasm32-unknown-unknown
#   cargo install wasm-bindgen-cli --version <version>
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/web/dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")"
if ! command -v wasm-bindgen >/dev/null; then
    echo "error: wasm-bindgen not found; install it with: cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
have="$(wasm-bindgen --version | awk '{ print $2 }')"
if [ "$have" != "$want" ]; then
    echo "error: wasm-bindgen $have is installed but Cargo.lock has $want; run: cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "error: the wasm32-unknown-unknown target is missing; run: rustup target add wasm32-unknown-unknown" >&2
    exit 1
fi
if [ ! -f "$root/assets/web/model.json" ]; then
    echo "error: no model bundle in assets/web; write one with: metairnet export-web --run RUN --data DIR --out assets/web" >&2
    exit 1
fi

cd "$root"
# The `web` profile optimises for size; without the name section, function names are left out of
# the module (panic messages are kept).
cargo build --profile web --target wasm32-unknown-unknown --package metairnet-web
wasm-bindgen --target web --no-typescript --remove-name-section --out-dir "$out/pkg" \
    "$target_dir/wasm32-unknown-unknown/web/metairnet_web.wasm"
cp web/www/* "$out/"
mkdir -p "$out/model"
cp assets/web/* "$out/model/"
echo "built $out ($(du -sh "$out/pkg/metairnet_web_bg.wasm" | cut -f1) of WebAssembly)"
