#!/usr/bin/env bash
# Regenerates the small recordings under tests/data/ (maintainers only; the
# tests read the committed files). Needs root, iproute2 and python3. All
# traffic stays on loopback inside a namespace made here and deleted after.
#
#   basic.rec: a listener on :8080; 20 orderly connections (client closes
#   first); 3 connects refused by :9; 3 connections reset by the client
#   (SO_LINGER 0); 2 connections the server never closes (left in
#   CLOSE-WAIT); census and counters every 0.5 s.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TCPWATCH:-$here/../../../target/release/tcpwatch}
ns=tcpwatch-rec-$$
log=$(mktemp)
ip netns add "$ns"
trap 'kill %1 2>/dev/null || true; ip netns del "$ns"; rm -f "$log"' EXIT
ip -n "$ns" link set lo up
"$bin" record "$here/basic.rec" --netns "$ns" --interval 0.5 --duration 5 2>"$log" &
until grep -q 'daemon up' "$log"; do sleep 0.1; done
ip netns exec "$ns" python3 - <<'PY'
import socket, struct, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8080)); srv.listen(64)
for _ in range(20):
    c = socket.create_connection(("127.0.0.1", 8080)); s, _ = srv.accept()
    c.close(); s.recv(1); s.close(); time.sleep(0.02)
for _ in range(3):
    try: socket.create_connection(("127.0.0.1", 9))
    except ConnectionRefusedError: pass
for _ in range(3):
    c = socket.create_connection(("127.0.0.1", 8080)); s, _ = srv.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
    time.sleep(0.01); s.close()
held = []
for _ in range(2):
    c = socket.create_connection(("127.0.0.1", 8080)); s, _ = srv.accept()
    c.close(); held.append(s)
time.sleep(6.5)  # past the end of the recording: still in CLOSE-WAIT
PY
wait %1
cat "$log"
