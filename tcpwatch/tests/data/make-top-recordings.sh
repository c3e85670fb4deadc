#!/usr/bin/env bash
# Regenerates the recordings `top`'s screen tests replay (maintainers only;
# the tests read the committed files). Needs root, iproute2 and python3.
# Each scenario runs in a namespace made here and deleted after; traffic
# stays on its loopback, and the flood's spoofed source is on the
# namespace's own veth subnet with a permanent neighbour entry that no
# host answers for (the network rule of tests/kernel/synflood.rs).
#
#   top-idle.rec: one listener, nothing happening.
#   top-busy.rec: a small web server (:8080, 3 worker connections per
#     request) and two client processes, ~100 requests/s, one client
#     also hitting a closed port (:9).
#   top-closewait.rec: a server that never closes what its peers hang up
#     (:7070), 40 connections over 1.2 s, next to a healthy one (:8080).
#   top-synflood.rec: 1,000 spoofed SYNs to :8080 (backlog 128,
#     syncookies on) in one second, while a client keeps connecting.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TCPWATCH:-$here/../../../target/release/tcpwatch}

record() { # name seconds python-program [setup]
    local name=$1 secs=$2 prog=$3 setup=${4:-}
    local ns=tcpwatch-top-$$ log
    log=$(mktemp)
    ip netns add "$ns"
    # shellcheck disable=SC2064
    trap "ip netns del $ns 2>/dev/null; rm -f $log" RETURN
    ip -n "$ns" link set lo up
    [ -n "$setup" ] && eval "$setup"
    "$bin" record "$here/$name.rec" --netns "$ns" --interval 0.5 --duration "$secs" 2>"$log" &
    local rec=$!
    until grep -q 'daemon up' "$log"; do sleep 0.1; done
    ip netns exec "$ns" python3 -c "$prog" &
    local load=$!
    wait "$rec"
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    cat "$log"
}

server='
import socket, threading, time, sys
def server(port, close=True, backlog=128):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(backlog)
    held = []
    def run():
        while True:
            s, _ = srv.accept()
            s.recv(100)
            if close:
                s.sendall(b"HTTP/1.0 200 OK\r\n\r\nok"); s.close()
            else:
                held.append(s)
    threading.Thread(target=run, daemon=True).start()
    return srv
def client(port, n, gap, wait=True):
    for _ in range(n):
        try:
            c = socket.create_connection(("127.0.0.1", port)); c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if wait: c.recv(100)
            c.close()
        except OSError: pass
        time.sleep(gap)
'

record top-idle 3 "$server
server(8080)
time.sleep(10)"

record top-busy 4 "$server
import os
server(8080)
time.sleep(0.6)
if os.fork() == 0:
    client(8080, 160, 0.015); os._exit(0)
for i in range(160):
    client(8080, 1, 0.012)
    if i % 10 == 0: client(9, 1, 0)
os.wait()"

record top-closewait 4 "$server
server(7070, close=False)
server(8080)
time.sleep(0.6)
for i in range(40):
    client(7070, 1, 0, wait=False); client(8080, 1, 0.03)
time.sleep(10)"

# The flood: a veth pair with 10.77.0.1/24 here and a permanent neighbour
# entry for 10.77.0.99 (a MAC no interface has), so SYN-ACKs to it go
# nowhere and nothing answers with a reset.
flood_setup='ip -n "$ns" link add tw-top0 type veth peer name tw-top1
ip -n "$ns" addr add 10.77.0.1/24 dev tw-top0
ip -n "$ns" link set tw-top0 up
ip -n "$ns" link set tw-top1 up
ip -n "$ns" neigh add 10.77.0.99 lladdr 02:00:00:00:77:99 nud permanent dev tw-top0
ip netns exec "$ns" sysctl -qw net.ipv4.tcp_syncookies=1'
record top-synflood 4 "$server
import struct
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('0.0.0.0', 8080)); srv.listen(128)
def serve():
    while True:
        s, _ = srv.accept(); s.recv(100); s.sendall(b'ok'); s.close()
threading.Thread(target=serve, daemon=True).start()
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def syn(sport, seq):
    src, dst = socket.inet_aton('10.77.0.99'), socket.inet_aton('10.77.0.1')
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    tcp = struct.pack('!HHIIBBHHH', sport, 8080, seq, 0, 5 << 4, 2, 65535, 0, 0)
    c = csum(src + dst + struct.pack('!BBH', 0, 6, 20) + tcp)
    return ip + tcp[:16] + struct.pack('!H', c) + tcp[18:]
time.sleep(1.0)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
t0 = time.time()
for i in range(1000):  # bounded: 1,000 SYNs, at most 2 s
    if time.time() - t0 > 2: break
    raw.sendto(syn(40000 + i, 0x10000000 + i), ('10.77.0.1', 0))
    if i % 100 == 0: client(8080, 1, 0)
    time.sleep(0.001)
client(8080, 20, 0.05)
time.sleep(10)" "$flood_setup"
ls -la "$here"/top-*.rec
