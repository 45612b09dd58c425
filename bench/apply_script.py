#!/usr/bin/env python3
"""The apply script's cost inside Redis, path by path.

Sends src/apply.lua's EVALSHA, with the arguments rivetd's queue sends for a webhook, to a Redis
at 127.0.0.1:PORT, pipelined 64 at a time, for three streams of events, and prints the cost per
call from INFO commandstats after each (the same figure bench/webhook.sh reads):

  repeat   what bench/webhook.sh sends: one subscription's same state again, distinct ids
  newer    one subscription, every event a second newer than the last, the plan changing
           every time (the entitlement is rebuilt and rewritten each time)
  first    a new customer every event (the whole record is written)

Usage: bench/apply_script.py PORT SCRIPT_FILE [CALLS]
"""
import socket
import sys

port, script = int(sys.argv[1]), open(sys.argv[2], 'rb').read()
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
STREAM = 'rivet:provisioning'


def enc(args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)


class Redis:
    def __init__(self):
        self.s = socket.create_connection(('127.0.0.1', port))
        self.f = self.s.makefile('rb')

    def reply(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b'-':
            raise SystemExit('apply_script: redis: %s' % rest.decode())
        if kind == b':':
            return int(rest)
        if kind == b'$':
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if kind == b'*':
            return [self.reply() for _ in range(int(rest))]
        return rest

    def call(self, *args):
        self.s.sendall(enc(args))
        return self.reply()

    def pipeline(self, cmds):
        self.s.sendall(b''.join(enc(c) for c in cmds))
        return [self.reply() for _ in cmds]


def data_head(i, cus, sub, tier, created):
    # The entry's data as rivetd writes it, without its closing brace, with the source.
    return ('{"v":2,"type":"subscription.updated","stripe_event_id":"evt_%d",'
            '"stripe_event_type":"customer.subscription.updated","created":%d,'
            '"livemode":false,"customer_id":"%s","subscription_id":"%s","tier":"%s",'
            '"status":"active","current_period_end":1724632454,"cancel_at_period_end":false,'
            '"currency":"usd","source":"webhook"' % (i, created, cus, sub, tier))


def evalsha(sha, i, cus, sub, tier, created):
    return ['EVALSHA', sha, 6, 'rivet:event:evt_%d' % i, STREAM, 'rivet:customer:' + cus,
            'rivet:none', 'rivet:none', 'rivet:none', 2592000, 'event', 'subscription.updated',
            'evt_%d' % i, data_head(i, cus, sub, tier, created), created, cus, '', sub,
            '%s|active|1724632454|0' % tier, '', '0', '1', 'webhook', '',
            'https://t.me/RivetCEO_bot?start=', 604800, 1796035987]


def stream(kind, sha, base):
    tiers = ('pro', 'enterprise')
    for i in range(base, base + calls):
        if kind == 'repeat':
            yield evalsha(sha, i, 'cus_QXg1o8vcGmoR32', 'sub_1Pgc6rB7WZ01zgkWNy0Cn5nw', 'pro',
                          1721954054)
        elif kind == 'newer':
            yield evalsha(sha, i, 'cus_NEWER', 'sub_NEWER', tiers[i % 2], 1721954054 + i)
        else:
            yield evalsha(sha, i, 'cus_F%d' % i, 'sub_F%d' % i, 'pro', 1721954054)


r = Redis()
sha = r.call('SCRIPT', 'LOAD', script).decode()
failed = 0
for n, kind in enumerate(('repeat', 'newer', 'first')):
    r.call('CONFIG', 'RESETSTAT')
    before = r.call('XLEN', STREAM)
    batch = []
    for cmd in stream(kind, sha, (n + 1) * 10000000):
        batch.append(cmd)
        if len(batch) == 64:
            r.pipeline(batch)
            batch = []
    if batch:
        r.pipeline(batch)
    added = r.call('XLEN', STREAM) - before
    stats = r.call('INFO', 'commandstats').decode()
    per = next(line.split('usec_per_call=')[1].split(',')[0] for line in stats.splitlines()
               if line.startswith('cmdstat_evalsha:'))
    print('  %-7s %s us per call (%d calls, %d entries)' % (kind, per, calls, added))
    if added != calls:
        print('  FAIL: %d calls appended %d entries' % (calls, added), file=sys.stderr)
        failed = 1
sys.exit(failed)
