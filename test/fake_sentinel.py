#!/usr/bin/env python3
"""A Redis Sentinel that says what a test tells it to: a stale, misconfigured or hostile one.

Usage: fake_sentinel.py --port P --master NAME --primary HOST:PORT

Speaks RESP2 on 127.0.0.1:P:
  SENTINEL get-master-addr-by-name NAME   [host, port] as set (nil for another name)
  SUBSCRIBE ch...                         confirms each channel; then the messages published
  PING                                    +PONG
Control, for the test:
  FAKE.PRIMARY HOST PORT                  what get-master-addr-by-name answers from now on
  FAKE.PUBLISH CHANNEL MESSAGE            sent to every subscriber of CHANNEL; answers how many
Anything else: -ERR unknown command.

Standard library only.
"""

import argparse
import asyncio


def bulk(s):
    b = s.encode() if isinstance(s, str) else s
    return b"$%d\r\n%s\r\n" % (len(b), b)


def array(items):
    return b"*%d\r\n" % len(items) + b"".join(bulk(i) for i in items)


class Sentinel:
    def __init__(self, master, primary):
        self.master = master
        self.primary = primary
        self.subscribers = {}  # channel -> set of writers

    async def read_command(self, reader):
        line = await reader.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            return line.decode(errors="replace").split()
        n = int(line[1:])
        args = []
        for _ in range(n):
            hdr = await reader.readline()
            size = int(hdr[1:])
            data = await reader.readexactly(size + 2)
            args.append(data[:-2].decode(errors="replace"))
        return args

    async def serve(self, reader, writer):
        channels = set()
        try:
            while True:
                args = await self.read_command(reader)
                if args is None:
                    break
                if not args:
                    continue
                cmd = args[0].upper()
                if cmd == "SENTINEL" and len(args) == 3 and \
                        args[1].lower() == "get-master-addr-by-name":
                    if args[2] == self.master:
                        writer.write(array(list(self.primary)))
                    else:
                        writer.write(b"*-1\r\n")
                elif cmd == "SUBSCRIBE" and len(args) > 1:
                    for ch in args[1:]:
                        channels.add(ch)
                        self.subscribers.setdefault(ch, set()).add(writer)
                        writer.write(b"*3\r\n" + bulk("subscribe") + bulk(ch) +
                                     b":%d\r\n" % len(channels))
                elif cmd == "PING":
                    writer.write(b"+PONG\r\n")
                elif cmd == "FAKE.PRIMARY" and len(args) == 3:
                    self.primary = (args[1], args[2])
                    writer.write(b"+OK\r\n")
                elif cmd == "FAKE.PUBLISH" and len(args) == 3:
                    subs = list(self.subscribers.get(args[1], ()))
                    for w in subs:
                        w.write(array(["message", args[1], args[2]]))
                    writer.write(b":%d\r\n" % len(subs))
                else:
                    writer.write(b"-ERR unknown command\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            for ch in channels:
                self.subscribers.get(ch, set()).discard(writer)
            writer.close()


async def main():
    ap = argparse.ArgumentParser(description="A Redis Sentinel that says what it is told.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--master", required=True)
    ap.add_argument("--primary", required=True, help="HOST:PORT")
    a = ap.parse_args()
    host, _, port = a.primary.rpartition(":")
    s = Sentinel(a.master, (host, port))
    server = await asyncio.start_server(s.serve, "127.0.0.1", a.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
