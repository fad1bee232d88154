#!/usr/bin/env bash
# Builds the browser demo and serves it on this machine only:
#   web/serve.sh [PORT]      (default PORT: 8080), then open http://127.0.0.1:PORT/
# Browsers allow WebGPU on http://127.0.0.1 and http://localhost without HTTPS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${1:-8080}"
case "$port" in
    ''|*[!0-9]*) echo "error: invalid port '$port'; pass a number such as 8080" >&2; exit 2 ;;
esac
"$root/web/build.sh" "$root/web/dist"
echo "serving $root/web/dist at http://127.0.0.1:$port/ (Ctrl+C stops)"
# Python's server sends .wasm files as application/wasm, which the page's loader needs.
exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$root/web/dist"
