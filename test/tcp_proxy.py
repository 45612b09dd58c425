#!/usr/bin/env python3
"""A TCP proxy whose connections a test can make go silent, as a NAT or a firewall that forgets
a connection does: nothing more passes either way, and nothing is closed.

Usage: tcp_proxy.py --listen P --to HOST:PORT --control C

Each connection to 127.0.0.1:P is forwarded to HOST:PORT. On 127.0.0.1:C, one command a line:
  COUNT          the number of connections accepted so far
  SILENCE N      from now on, connection N (1 for the first accepted) passes nothing
  SILENCE NEW    every connection accepted from now on passes nothing from its start
  PASS NEW       connections accepted from now on pass again (silenced ones stay so)
Each is answered with one line ("OK", a number, or "ERR ...").

Standard library only.
"""

import argparse
import asyncio


class Proxy:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conns = []  # per accepted connection: {"silent": bool}
        self.silence_new = False

    async def pipe(self, reader, writer, state):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if state["silent"]:
                    continue  # read and dropped: the peer sees nothing, and no close
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not state["silent"]:
                writer.close()

    async def serve(self, reader, writer):
        state = {"silent": self.silence_new}
        self.conns.append(state)
        try:
            ur, uw = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self.pipe(reader, uw, state), self.pipe(ur, writer, state))

    async def control(self, reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            words = line.decode(errors="replace").split()
            if words == ["COUNT"]:
                answer = str(len(self.conns))
            elif words in (["SILENCE", "NEW"], ["PASS", "NEW"]):
                self.silence_new = words[0] == "SILENCE"
                answer = "OK"
            elif len(words) == 2 and words[0] == "SILENCE" and words[1].isdigit() and \
                    1 <= int(words[1]) <= len(self.conns):
                self.conns[int(words[1]) - 1]["silent"] = True
                answer = "OK"
            else:
                answer = "ERR unknown command or connection"
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description="A TCP proxy whose connections can go silent.")
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--to", required=True, help="HOST:PORT")
    ap.add_argument("--control", type=int, required=True)
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    p = Proxy(host, int(port))
    s1 = await asyncio.start_server(p.serve, "127.0.0.1", a.listen)
    s2 = await asyncio.start_server(p.control, "127.0.0.1", a.control)
    async with s1, s2:
        await asyncio.gather(s1.serve_forever(), s2.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
