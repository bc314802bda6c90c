#!/usr/bin/python3
"""Health checks that speak FTP (health_interval, health_timeout,
health_fall, health_rise): a server killed during the test is marked down
with one log line, gets no new sessions, and is marked up again with one
line after it is restarted; /metrics follows it (ftpgate_backend_up and
each server's sessions and failures).  A server that accepts but never
greets, or greets with 421, is down; with backend_tls the handshake and
the certificate are part of the check.  A reload keeps the state of the
servers that stay.  Two pyftpdlib servers with different content (a.txt,
b.txt); real clients (ftplib, curl).  Loopback only.  TAP output."""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)


ROOT_A = T.root_with('a.txt')
ROOT_B = T.root_with('b.txt')
SRV = {'a': T.PyftpdServer(ROOT_A), 'b': T.PyftpdServer(ROOT_B)}
GP = T.port_range(100)
HEALTH = dict(health_interval=1, health_timeout=1, health_fall=2, health_rise=2)


def config(backend, **kw):
    c = T.gate_config(backend, passive_ports=GP, **dict(HEALTH, **kw))
    c['global']['metrics_listen'] = '127.0.0.1:%d' % T.free_port()
    return c


def scrape(g):
    return T.gate_metrics(g)


def server_metric(g, name, server):
    m = re.search(r'^%s\{site="test",server="%s"\} (\d+)$' % (name, re.escape(server)),
                  scrape(g), re.M)
    assert m, 'no %s for %s in /metrics' % (name, server)
    return int(m.group(1))


def wait_metric(g, name, server, want, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        v = server_metric(g, name, server)
        if v == want or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


def which(port):
    names = T.listing_of(port)
    assert names in (['a.txt'], ['b.txt']), names
    return names[0][0]


def test_kill_and_restart():
    a, b = SRV['a'], SRV['b']
    a_name, b_name = a.addr(), b.addr()
    with T.Ftpgate(config('%s, %s' % (a_name, b_name))) as g:
        assert wait_metric(g, 'ftpgate_backend_up', a_name, 1) == 1
        assert server_metric(g, 'ftpgate_backend_up', b_name) == 1
        assert sorted(which(g.port) for _ in range(2)) == ['a', 'b']
        assert server_metric(g, 'ftpgate_backend_sessions_total', a_name) == 1
        assert server_metric(g, 'ftpgate_backend_sessions_total', b_name) == 1

        a_port = a.port
        a.stop()
        assert g.wait_log(r'site test: backend server %s is down: .*\(2 failed health checks\)'
                          % re.escape(a_name), timeout=15), g.log()
        assert wait_metric(g, 'ftpgate_backend_up', a_name, 0) == 0
        fails = server_metric(g, 'ftpgate_backend_failures_total', a_name)
        assert server_metric(g, 'ftpgate_backend_health_check_failures_total', a_name) >= 2
        # Down: no new session even tries it.
        assert [which(g.port) for _ in range(4)] == ['b'] * 4
        assert server_metric(g, 'ftpgate_backend_failures_total', a_name) == fails
        assert server_metric(g, 'ftpgate_backend_sessions_total', b_name) == 5
        r = T.curl(['--list-only', 'ftp://u:p@127.0.0.1:%d/' % g.port])
        assert r.stdout.decode().strip() == 'b.txt'
        # A session open on b while a comes back stays where it is.
        held = T.ftp_login(g.port)
        assert held.nlst() == ['b.txt']

        SRV['a'] = T.PyftpdServer(ROOT_A, port=a_port)
        assert g.wait_log(r'site test: backend server %s is up \(2 good health checks\)'
                          % re.escape(a_name), timeout=15), g.log()
        assert wait_metric(g, 'ftpgate_backend_up', a_name, 1) == 1
        assert server_metric(g, 'ftpgate_backend_sessions_open', b_name) == 1
        assert held.nlst() == ['b.txt']
        held.quit()
        assert sorted(which(g.port) for _ in range(2)) == ['a', 'b']
        log = g.log()
        assert len(re.findall(r'backend server %s is down' % re.escape(a_name), log)) == 1, log
        assert len(re.findall(r'backend server %s is up' % re.escape(a_name), log)) == 1, log
        assert 'backend server %s is' % b_name not in log, log


def test_all_down():
    d = T.closed_port()
    name = '127.0.0.1:%d' % d
    with T.Ftpgate(config(name)) as g:
        assert g.wait_log(r'backend server %s is down: .*Connection refused' % re.escape(name),
                          timeout=15), g.log()
        with T.RawCtl('127.0.0.1', g.port) as c:
            r = c.reply()
            assert r.startswith(b'421 '), r
        assert g.wait_log(r'no backend server up \(1 configured, 0 tried\): 421'), g.log()


def silent(conn, fb):
    conn.readline(timeout=30)


def busy(conn, fb):
    conn.send('421 Too many users\r\n')
    conn.readline(timeout=5)


def test_speaks_ftp():
    with T.FakeBackend(silent) as s1, T.FakeBackend(busy) as s2:
        with T.Ftpgate(config('%s, %s, %s' % (s1.addr(), s2.addr(), SRV['b'].addr()))) as g:
            assert g.wait_log(r'backend server %s is down: no 220 greeting within 1 s'
                              % re.escape(s1.addr()), timeout=15), g.log()
            assert g.wait_log(r'backend server %s is down: greeting answered 421'
                              % re.escape(s2.addr()), timeout=15), g.log()
            assert [which(g.port) for _ in range(3)] == ['b'] * 3
            assert 'backend server %s is down' % SRV['b'].addr() not in g.log()


def proxy_v1(conn, fb):
    first = conn.readline(timeout=10)
    fb.events.append(first)
    if first == 'PROXY UNKNOWN':
        conn.send('220 behind a proxy-protocol listener\r\n')
        conn.readline(timeout=5)


def test_proxy_header():
    with T.FakeBackend(proxy_v1) as fb:
        with T.Ftpgate(config(fb.addr(), backend_proxy_protocol='v1')) as g:
            deadline = time.monotonic() + 15
            while len(fb.events) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert fb.events[:3] == ['PROXY UNKNOWN'] * 3, fb.events
            assert 'is down' not in g.log(), g.log()
            assert server_metric(g, 'ftpgate_backend_health_check_failures_total',
                                 fb.addr()) == 0


def test_tls_check():
    why = T.pyftpdlib_tls_available()
    assert why is None, why
    pki = T.make_tls_certs(T.tmpdir('pki-'))
    root = T.root_with('tls.txt')
    with T.PyftpdTLSServer(root, pki['cert'], pki['key']) as srv:
        good = config(srv.addr(), backend_tls='on', backend_ca=pki['ca'])
        with T.Ftpgate(good) as g:
            time.sleep(3)   # several checks: none may fail
            assert 'is down' not in g.log(), g.log()
            assert server_metric(g, 'ftpgate_backend_up', srv.addr()) == 1
            assert server_metric(g, 'ftpgate_backend_health_check_failures_total',
                                 srv.addr()) == 0
            f = T.ftp_login(g.port)
            assert f.nlst() == ['tls.txt']
            f.quit()
        bad = config(srv.addr(), backend_tls='on', backend_ca=pki['other_ca'])
        with T.Ftpgate(bad) as g:
            assert g.wait_log(r'backend server %s is down: TLS: .*certificate verify failed'
                              % re.escape(srv.addr()), timeout=15), g.log()
            assert wait_metric(g, 'ftpgate_backend_up', srv.addr(), 0) == 0


def test_reload_keeps_state():
    d = T.closed_port()
    dead = '127.0.0.1:%d' % d
    b_name = SRV['b'].addr()
    with T.Ftpgate(config('%s, %s' % (dead, b_name))) as g:
        assert g.wait_log(r'backend server %s is down' % re.escape(dead), timeout=15), g.log()
        assert [which(g.port) for _ in range(2)] == ['b'] * 2
        before = server_metric(g, 'ftpgate_backend_sessions_total', b_name)
        # Reload with other settings and the pool in another order.
        text = g.text.replace('backend = %s, %s' % (dead, b_name),
                              'backend = %s, %s\nidle_timeout = 600' % (b_name, dead))
        assert text != g.text
        with open(g.conf, 'w') as f:
            f.write(text)
        mark = g.log_mark()
        g.proc.send_signal(signal.SIGHUP)
        assert g.wait_log(r'reloaded', mark), g.log_since(mark)
        # Still down right after the reload (no new check needed), counters kept.
        assert server_metric(g, 'ftpgate_backend_up', dead) == 0
        assert server_metric(g, 'ftpgate_backend_sessions_total', b_name) == before
        assert [which(g.port) for _ in range(2)] == ['b'] * 2
        time.sleep(2)
        assert 'is down' not in g.log_since(mark), g.log_since(mark)
        assert 'is up' not in g.log_since(mark), g.log_since(mark)


def test_config_errors():
    cases = [
        ('health_interval = soon', r':4: health_interval: "soon" is not a number of seconds'),
        ('health_timeout = 0', r':4: health_timeout: "0" is not a number of seconds'),
        ('health_fall = 0', r':4: health_fall: "0" is not a number in 1-100'),
        ('health_rise = 101', r':4: health_rise: "101" is not a number in 1-100'),
    ]
    T.check_config_errors(cases, '[site:x]\nlisten = 127.0.0.1:2100\nbackend = 127.0.0.1:21\n')


t.case('a killed server is marked down (one line), skipped, and up again after restart; '
       '/metrics follows', test_kill_and_restart, timeout=120)
t.case('the only server down: 421 without trying it', test_all_down)
t.case('the check speaks FTP: a silent server and a 421 greeting are down', test_speaks_ftp)
t.case('backend_tls: the handshake and the certificate are checked', test_tls_check)
t.case('backend_proxy_protocol: a check starts with a header of its own (v1 UNKNOWN)',
       test_proxy_header)
t.case('a reload keeps the state and counters of servers that stay', test_reload_keeps_state)
t.case('health check configuration errors name file, line and key', test_config_errors)
for s in SRV.values():
    s.stop()
t.done()
