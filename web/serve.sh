#!/usr/bin/env bash
# Builds the browser demo and serves it on this machine only:
#   web/serve.sh [PORT]      (default PORT: 8080), then open http://127.0.0.1:PORT/
# Browsers allow WebGPU on http://127.0.0.1 and http://localhost without HTTPS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${1:-8080}"
case "$port" in
    ''|*[!0-9]*) echo "error: invalid port '$port'; pass a number from 1 to 65535, such as 8080" >&2; exit 2 ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "error: invalid port $port; pass a number from 1 to 65535, such as 8080" >&2
    exit 2
fi
if ! command -v python3 >/dev/null; then
    echo "error: python3 not found; install it, or serve $root/web/dist with any static web server after web/build.sh" >&2
    exit 1
fi
# Checked before the build, so that a busy port does not cost a build and end in a traceback.
if ! python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
    echo "error: port $port on 127.0.0.1 is in use or not allowed; pass another port, such as web/serve.sh 8081" >&2
    exit 1
fi
"$root/web/build.sh" "$root/web/dist"
echo "serving $root/web/dist at http://127.0.0.1:$port/ (Ctrl+C stops)"
# Python's server sends .wasm files as application/wasm, which the page's loader needs.
exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$root/web/dist"
