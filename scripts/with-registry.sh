#!/usr/bin/env bash
# Runs a command with Debian's docker-registry (distribution) serving on
# 127.0.0.1, and stops the registry afterwards. The command finds it in
# OTTER_TEST_REGISTRY (host:port).
set -euo pipefail
bin=$(command -v docker-registry || echo /usr/bin/docker-registry)
[ -x "$bin" ] || { echo "with-registry: docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
dir=$(mktemp -d /tmp/otter-registry.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/config.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CFG
"$bin" serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; exit 1; }
  sleep 0.1
done
export OTTER_TEST_REGISTRY=127.0.0.1:$port
echo "with-registry: docker-registry on $OTTER_TEST_REGISTRY" >&2
"$@"
