#!/usr/bin/env python3
"""The apply script's cost inside Redis, path by path.

Sends src/apply.lua's EVALSHA, with the arguments rivetd's queue sends for a webhook, to a Redis
at 127.0.0.1:PORT, pipelined 64 at a time, for three streams of events, and prints the cost per
call from INFO commandstats after each (the same figure bench/webhook.sh reads):

  repeat   what bench/webhook.sh sends: one subscription's same state again, distinct ids
  newer    one subscription, every event a second newer than the last, the plan changing
           every time (the entitlement is rebuilt and rewritten each time)
  first    a new customer every event (the whole record is written)

and, for comparison on the repeat path's arguments and customer:

  function the same script loaded as a Redis Function (FUNCTION LOAD, FCALL)
  floor    a script that only does the three commands no event can do without: SET NX EX of
           the event key, HMGET of the customer's fields, XADD of the entry with the
           entitlement; what the apply script costs beyond it is its own logic
  commands the same three commands sent on their own, without a script: what is left of the
           floor is the cost of running a script and calling commands from it

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
    return ['EVALSHA', sha, 7, 'rivet:event:evt_%d' % i, STREAM, 'rivet:customer:' + cus,
            'rivet:none', 'rivet:none', 'rivet:none', 'rivet:doubts', 2592000, 'event',
            'subscription.updated',
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


FLOOR = b"""
if not redis.call('SET', KEYS[1], ARGV[14], 'NX', 'EX', ARGV[1]) then return {2, '', 0, ''} end
local r = redis.call('HMGET', KEYS[3], 'ent', 'subs', 'pd', 's:' .. ARGV[9], 'email', 'email_v',
  'telegram_user_id')
local id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[3], 'stripe_event_id', ARGV[4], 'data',
  ARGV[5] .. ',"entitlement":' .. r[1] .. '}')
return {1, id, 0, ''}
"""


def measure(kind, cmds, stat, seed=None):
    # Every run starts from an empty database, so that each grows Redis's key table alike.
    r.call('FLUSHALL')
    if seed:
        r.call(*seed)
    r.call('CONFIG', 'RESETSTAT')
    before = r.call('XLEN', STREAM)
    batch = []
    for cmd in cmds:
        batch.append(cmd)
        if len(batch) == 64:
            r.pipeline(batch)
            batch = []
    if batch:
        r.pipeline(batch)
    added = r.call('XLEN', STREAM) - before
    stats = r.call('INFO', 'commandstats').decode()
    per = next(line.split('usec_per_call=')[1].split(',')[0] for line in stats.splitlines()
               if line.startswith('cmdstat_%s:' % stat))
    print('  %-8s %s us per call (%d calls, %d entries)' % (kind, per, calls, added))
    return added == calls


def commands(base):
    # The floor's three commands as plain commands, with the repeat path's arguments.
    ent = r.call('HGET', seed[5], 'ent').decode()
    for cmd in stream('repeat', sha, base):
        keys = cmd[3:3 + cmd[2]]
        argv = [None] + cmd[3 + cmd[2]:]  # 1-based, as the script reads them
        yield ['SET', keys[0], 'webhook', 'NX', 'EX', argv[1]]
        yield ['HMGET', keys[2], 'ent', 'subs', 'pd', 's:' + argv[9], 'email', 'email_v',
               'telegram_user_id']
        yield ['XADD', STREAM, '*', 'type', argv[3], 'stripe_event_id', argv[4], 'data',
               argv[5] + ',"entitlement":' + ent + '}']


def measure_commands(base):
    r.call('FLUSHALL')
    r.call(*seed)
    r.call('CONFIG', 'RESETSTAT')
    before = r.call('XLEN', STREAM)
    batch = []
    for cmd in commands(base):
        batch.append(cmd)
        if len(batch) == 192:
            r.pipeline(batch)
            batch = []
    if batch:
        r.pipeline(batch)
    added = r.call('XLEN', STREAM) - before
    stats = r.call('INFO', 'commandstats').decode()
    per = {}
    for line in stats.splitlines():
        name = line.split(':')[0][len('cmdstat_'):]
        if name in ('set', 'hmget', 'xadd'):
            per[name] = float(line.split('usec_per_call=')[1].split(',')[0])
    print('  %-8s %.2f us per event (SET NX EX %.2f, HMGET %.2f, XADD %.2f; %d entries)' % (
        'commands', sum(per.values()), per.get('set', 0), per.get('hmget', 0),
        per.get('xadd', 0), added))
    return added == calls


def as_fcall(cmd):
    return ['FCALL', 'rivet_apply'] + cmd[2:]


r = Redis()
sha = r.call('SCRIPT', 'LOAD', script).decode()
floor = r.call('SCRIPT', 'LOAD', FLOOR).decode()
r.call('FUNCTION', 'LOAD', 'REPLACE', b'#!lua name=rivet_bench\n'
       b'redis.register_function("rivet_apply", function(KEYS, ARGV)\n' + script + b'\nend)\n')
# The repeat path's customer, as its first event leaves it.
seed = next(stream('repeat', sha, 1))
for cmd in stream('repeat', sha, 2):  # warm up
    r.call(*cmd)
    if r.call('XLEN', STREAM) >= min(calls, 10000):
        break
ok = True
for n, kind in enumerate(('repeat', 'newer', 'first')):
    ok &= measure(kind, stream(kind, sha, (n + 1) * 10000000), 'evalsha',
                  seed if kind == 'repeat' else None)
    if kind == 'repeat':
        ok &= measure('function', (as_fcall(c) for c in stream(kind, sha, 40000000)), 'fcall',
                      seed)
        ok &= measure('floor', stream(kind, floor, 50000000), 'evalsha', seed)
        ok &= measure_commands(60000000)
r.call('FUNCTION', 'DELETE', 'rivet_bench')
if not ok:
    print('  FAIL: a run did not append exactly one entry per call', file=sys.stderr)
sys.exit(0 if ok else 1)
