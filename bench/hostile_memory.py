#!/usr/bin/env python3
"""Anonymous clients that try to make rivetd hold memory, one way after another.

Usage: hostile_memory.py PORT PID

Each attack opens its connections, sends what it sends, holds the connections for a moment and
closes them; after each one the daemon's peak resident size (VmHWM) and its resident size now are
printed. The figures to judge: the peak over all attacks, against the 160 MiB target with the
default settings (MAX_BODY_BUFFER 64 MiB, MAX_CONNECTIONS 10,000).
"""
import resource
import socket
import sys
import time

PORT = int(sys.argv[1])
PID = int(sys.argv[2])


def status_kib(field):
    with open("/proc/%d/status" % PID) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def connect_many(n, rcvbuf=0):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            s.connect(("127.0.0.1", PORT))
        except OSError:
            s.close()
            break
        s.setblocking(False)
        socks.append(s)
    return socks


def send_some(socks, data, rounds=1):
    """Send data on every socket as far as the socket takes it; returns bytes sent in all."""
    total = 0
    for _ in range(rounds):
        for s in socks:
            try:
                total += s.send(data)
            except OSError:
                pass
    return total


def answered(socks):
    n = 0
    for s in socks:
        try:
            if s.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 "):
                n += 1
        except OSError:
            pass
    return n


def close_all(socks):
    for s in socks:
        s.close()


def report(name, sent, socks, note=""):
    time.sleep(2.0)
    print("memory: attack %-28s %5d connections, %9.1f MiB sent: peak RSS %6.1f MiB, now %6.1f "
          "MiB%s" % (name, len(socks), sent / 1048576.0, status_kib("VmHWM") / 1024.0,
                     status_kib("VmRSS") / 1024.0, note), flush=True)


def webhook_bodies():
    # The reported attack: many clients each holding most of a 1 MiB webhook body.
    socks = connect_many(1100)
    head = (b"POST /api/webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
    sent = send_some(socks, head)
    chunk = b"x" * 65536
    sent += send_some(socks, chunk, rounds=15)  # up to 960 KiB each, as far as taken
    report("960 KiB webhook bodies", sent, socks,
           ", %d refused at once (503)" % answered(socks))
    close_all(socks)


def chunked_bodies():
    socks = connect_many(1100)
    head = (b"POST /api/webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    sent = send_some(socks, head)
    chunk = b"10000\r\n" + b"y" * 65536 + b"\r\n"
    sent += send_some(socks, chunk, rounds=15)
    report("chunked webhook bodies", sent, socks, ", %d answered (503/413)" % answered(socks))
    close_all(socks)


def big_headers():
    # Every connection an unfinished header block just under MAX_HEADER_BYTES.
    socks = connect_many(9990)
    line = b"X-Pad: " + b"h" * 1000 + b"\r\n"
    sent = send_some(socks, b"GET /health HTTP/1.1\r\nHost: x\r\n" + line * 15)
    report("15 KiB unfinished headers", sent, socks, ", %d answered (503)" % answered(socks))
    close_all(socks)


def pipeliners():
    # Clients that pipeline requests for the largest answer and never read.
    socks = connect_many(9990, rcvbuf=4096)
    req = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = send_some(socks, req * 3000, rounds=2)
    report("pipelined, never reading", sent, socks)
    close_all(socks)


def docs_readers():
    socks = connect_many(9990, rcvbuf=4096)
    sent = send_some(socks, b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n")
    report("/docs, never reading", sent, socks)
    close_all(socks)


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("memory: before the attacks: RSS %.1f MiB" % (status_kib("VmRSS") / 1024.0), flush=True)
    for attack in (webhook_bodies, chunked_bodies, big_headers, pipeliners, docs_readers):
        attack()
        time.sleep(0.5)
    peak = status_kib("VmHWM") / 1024.0
    print("memory: peak resident size over every attack: %.1f MiB (target <= 160)" % peak,
          flush=True)


main()
