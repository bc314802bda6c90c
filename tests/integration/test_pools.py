#!/usr/bin/python3
"""Backend pools: backend = HOST[:PORT], ... with balance = roundrobin,
leastconn, source.  Two pyftpdlib servers with different content (a.txt on
A, b.txt on B), so which server answered is visible in every listing.  A
server that refuses or does not answer the connect is skipped before the
client sees any reply; all down is 421, logged.  A server is killed and
restarted during the test.  Real clients: ftplib and curl.  Loopback only.
TAP output."""

import os
import re
import signal
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)


ROOT_A = T.root_with('a.txt')
ROOT_B = T.root_with('b.txt')
SRV = {'a': T.PyftpdServer(ROOT_A), 'b': T.PyftpdServer(ROOT_B)}
GP = T.port_range(100)


def gate(backend, **kw):
    return T.Ftpgate(T.gate_config(backend, passive_ports=GP, **kw))


def which(port, source=None):
    """Which server answered a session through the proxy: 'a' or 'b'."""
    names = T.listing_of(port, source)
    assert names in (['a.txt'], ['b.txt']), names
    return names[0][0]


def blackhole():
    """A listener whose accept queue is full: further connects time out."""
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(0)
    filler = socket.create_connection(lsock.getsockname(), timeout=5)
    return lsock, filler


def test_roundrobin():
    with gate('%s, %s' % (SRV['a'].addr(), SRV['b'].addr())) as g:
        got = [which(g.port) for _ in range(6)]
        assert got in (['a', 'b'] * 3, ['b', 'a'] * 3), got


def test_roundrobin_curl():
    with gate('%s, %s' % (SRV['a'].addr(), SRV['b'].addr())) as g:
        seen = set()
        for _ in range(2):
            r = T.curl(['-sS', '--list-only', 'ftp://u:p@127.0.0.1:%d/' % g.port])
            assert r.returncode == 0, r.stderr
            seen.add(r.stdout.decode().strip())
        assert seen == {'a.txt', 'b.txt'}, seen


def test_refused_skipped():
    dead = T.closed_port()
    with gate('127.0.0.1:%d, %s' % (dead, SRV['a'].addr())) as g:
        for _ in range(3):
            f = T.RecordingFTP()
            welcome = f.connect('127.0.0.1', g.port, timeout=20)
            assert SRV['a'].banner in welcome, welcome   # nothing else came before
            f.login('u', 'p')
            assert f.nlst() == ['a.txt']
            f.quit()
        assert g.wait_log(r'backend server 127\.0\.0\.1:%d: Connection refused; trying the next'
                          % dead), g.log()


def test_timeout_skipped():
    lsock, filler = blackhole()
    try:
        hole = lsock.getsockname()[1]
        with gate('127.0.0.1:%d, %s' % (hole, SRV['b'].addr()), connect_timeout=1) as g:
            f = T.RecordingFTP()
            welcome = f.connect('127.0.0.1', g.port, timeout=20)
            assert SRV['b'].banner in welcome, welcome
            f.login('u', 'p')
            assert f.nlst() == ['b.txt']
            f.quit()
            assert g.wait_log(r'backend server 127\.0\.0\.1:%d: no connection within 1 s; '
                              r'trying the next' % hole), g.log()
    finally:
        filler.close()
        lsock.close()


def test_all_down():
    d1, d2 = T.closed_port(), T.closed_port()
    with gate('127.0.0.1:%d, 127.0.0.1:%d' % (d1, d2)) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            r = c.reply()
            assert r.startswith(b'421 '), r
        assert g.wait_log(r'site test: no backend server up \(2 configured, 2 tried\): 421'), \
            g.log()
        assert g.wait_log(r'end: client .* cannot connect to backend: no server of the pool '
                          r'is up'), g.log()


def test_leastconn():
    with gate('%s, %s' % (SRV['a'].addr(), SRV['b'].addr()), balance='leastconn') as g:
        held = T.ftp_login(g.port)
        try:
            first = held.nlst()[0][0]
            other = 'b' if first == 'a' else 'a'
            # While one session holds `first`, new ones go to the other
            # server (roundrobin would alternate).
            for _ in range(3):
                mark = g.log_mark()
                assert which(g.port) == other
                assert g.wait_log(r'end: client', mark), g.log_since(mark)
        finally:
            held.quit()


def test_source():
    with gate('%s, %s' % (SRV['a'].addr(), SRV['b'].addr()), balance='source') as g:
        for src in ('127.0.0.1', '127.0.0.2', '127.0.0.3'):
            got = {which(g.port, source=src) for _ in range(3)}
            assert len(got) == 1, (src, got)


def test_killed_and_restarted():
    a_port = SRV['a'].port
    with gate('%s, %s' % (SRV['a'].addr(), SRV['b'].addr())) as g:
        assert sorted(which(g.port) for _ in range(2)) == ['a', 'b']
        SRV['a'].stop()
        mark = g.log_mark()
        assert [which(g.port) for _ in range(4)] == ['b'] * 4
        assert g.wait_log(r'backend server 127\.0\.0\.1:%d: Connection refused; trying the next'
                          % a_port, mark), g.log_since(mark)
        SRV['a'] = T.PyftpdServer(ROOT_A, port=a_port)
        assert sorted(which(g.port) for _ in range(2)) == ['a', 'b']


def test_reload_new_pool():
    with gate(SRV['a'].addr()) as g:
        held = T.ftp_login(g.port)
        assert held.nlst() == ['a.txt']
        with open(g.conf, 'w') as f:
            f.write(g.text.replace('backend = %s' % SRV['a'].addr(),
                                   'backend = %s' % SRV['b'].addr()))
        mark = g.log_mark()
        g.proc.send_signal(signal.SIGHUP)
        assert g.wait_log(r'reloaded', mark), g.log_since(mark)
        assert [which(g.port) for _ in range(2)] == ['b', 'b']   # new sessions: the new pool
        assert held.nlst() == ['a.txt']                          # the open one keeps its server
        held.quit()


def test_config_errors():
    cases = [
        ('backend = 127.0.0.1:21, 127.0.0.1:21', r':3: backend: 127\.0\.0\.1:21 is listed twice'),
        ('backend = 127.0.0.1:21, ', r':3: backend: empty server in the list'),
        ('backend = 127.0.0.1:21\nbalance = random',
         r':4: balance: "random" is not one of roundrobin, leastconn, source'),
        ('backend = ' + ','.join('1.2.3.%d' % i for i in range(1, 18)),
         r':3: backend: more than 16 servers'),
    ]
    T.check_config_errors(cases)


t.case('roundrobin: sessions alternate between the two servers (ftplib)', test_roundrobin)
t.case('roundrobin with curl: both servers answer', test_roundrobin_curl)
t.case('a server that refuses is skipped before the client sees a reply', test_refused_skipped)
t.case('a server that does not answer the connect is skipped after connect_timeout',
       test_timeout_skipped)
t.case('every server down: 421 and a log line', test_all_down)
t.case('leastconn: new sessions go to the server with fewer open', test_leastconn)
t.case('source: one client address stays on one server', test_source)
t.case('a server killed and restarted: skipped while down, used again after',
       test_killed_and_restarted)
t.case('a reload: new sessions use the new pool, an open session keeps its server',
       test_reload_new_pool)
t.case('pool configuration errors name file, line and key', test_config_errors)
for s in SRV.values():
    s.stop()
t.done()
