#!/usr/bin/python3
"""Access control: per site allow and deny prefixes (IPv4 and IPv6; deny
wins).  A refused client is closed at accept without a single byte (no
greeting) and counted in ftpgate_access_refused_total; with the PROXY
protocol the header's client address is the one checked; PORT/EPRT to an
address the lists refuse gets 504 even with allow_foreign_address; a
reload applies new lists to new connections.  pyftpdlib backend, ftplib
and raw sockets as clients.  Loopback only (127.0.0.0/8, ::1).  TAP
output."""

import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)

ROOT = T.root_with('x.txt')
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)


def gate(listen_host='127.0.0.1', **kw):
    c = T.gate_config(SRV, passive_ports=GP, listen_host=listen_host, **kw)
    c['global']['metrics_listen'] = '127.0.0.1:%d' % T.free_port()
    return T.Ftpgate(c)


def refused_count(g):
    text = T.gate_metrics(g)
    return int(re.search(r'^ftpgate_access_refused_total\{site="test"\} (\d+)$', text,
                         re.M).group(1))


def closed_silently(port, source, host='127.0.0.1', payload=b''):
    with T.RawCtl(host, port, source=source) as c:
        if payload:
            c.send(payload)
        data, how = c.until_closed(10)
    return data == b'', (data, how)


def admitted(port, source, host='127.0.0.1'):
    f = T.RecordingFTP()
    f.connect(host, port, timeout=20, source_address=(source, 0))
    try:
        f.login('u', 'p')
        return f.nlst() == ['x.txt']
    finally:
        f.close()


def test_deny():
    with gate(deny='127.0.0.2/32, 2001:db8::/32') as g:
        ok, why = closed_silently(g.port, '127.0.0.2')
        assert ok, why
        assert admitted(g.port, '127.0.0.1')
        assert admitted(g.port, '127.0.0.3')
        assert refused_count(g) == 1
        assert 'test/' not in ''.join(l for l in g.log().splitlines() if '127.0.0.2' in l)


def test_allow_deny_wins():
    with gate(allow='127.0.0.0/29', deny='127.0.0.4/30') as g:
        assert admitted(g.port, '127.0.0.1')
        for src in ('127.0.0.5', '127.0.0.9'):   # in deny; outside allow
            ok, why = closed_silently(g.port, src)
            assert ok, (src, why)
        assert refused_count(g) == 2


def test_ipv6():
    if not T.ipv6_loopback_ok():
        T.diag('no IPv6 loopback: skipped')
        return
    with gate(listen_host='::1', deny='::1/128') as g:
        ok, why = closed_silently(g.port, '::1', host='::1')
        assert ok, why
    with gate(listen_host='::1', allow='::1/128, 127.0.0.0/8') as g:
        assert admitted(g.port, '::1', host='::1')


def test_proxy_header_address():
    with gate(proxy_protocol='v1', proxy_trusted='127.0.0.1/32', deny='192.0.2.0/24') as g:
        hdr = b'PROXY TCP4 192.0.2.7 127.0.0.1 40000 21\r\n'
        ok, why = closed_silently(g.port, '127.0.0.1', payload=hdr)
        assert ok, why
        with T.RawCtl('127.0.0.1', g.port) as c:
            c.send(b'PROXY TCP4 198.51.100.7 127.0.0.1 40000 21\r\n')
            r = c.reply()
            assert r.startswith(b'220 '), r
        assert refused_count(g) == 1


def test_port_target():
    with gate(allow_foreign_address='yes', deny='127.0.0.9/32') as g:
        f = T.ftp_login(g.port)
        try:
            try:
                f.sendcmd('PORT 127,0,0,9,200,1')
                raise AssertionError('PORT to a denied address accepted')
            except T.ftplib.error_perm as e:
                assert str(e).startswith('504') and 'not allowed' in str(e), e
            assert f.sendcmd('PORT 127,0,0,8,200,1').startswith('200')
        finally:
            f.close()
        assert g.wait_log(r'refused PORT to 127\.0\.0\.9:51201: refused by allow/deny'), g.log()


def test_reload():
    with gate(deny='127.0.0.2/32') as g:
        assert closed_silently(g.port, '127.0.0.2')[0]
        with open(g.conf, 'w') as f:
            f.write(g.text.replace('deny = 127.0.0.2/32', 'deny = 127.0.0.3/32'))
        mark = g.log_mark()
        g.proc.send_signal(signal.SIGHUP)
        assert g.wait_log(r'reloaded', mark), g.log_since(mark)
        assert admitted(g.port, '127.0.0.2')
        assert closed_silently(g.port, '127.0.0.3')[0]
        assert refused_count(g) == 2   # counted across the reload


def test_config_errors():
    cases = [
        ('allow = 192.0.2.0/33', r':4: allow: "192\.0\.2\.0/33": the prefix length must be 0-32'),
        ('deny = 192.0.2.1/24', r':4: deny: "192\.0\.2\.1/24": bits set after the prefix'),
        ('allow = example.com', r':4: allow: "example\.com" is not an IPv4 or IPv6 address'),
        ('deny = 192.0.2.0/24,', r':4: deny: empty prefix in the list'),
    ]
    T.check_config_errors(cases, '[site:x]\nlisten = 127.0.0.1:2100\nbackend = 127.0.0.1:21\n')


t.case('deny: a listed client is closed without a byte and counted', test_deny)
t.case('allow and deny: outside allow refused, deny wins inside allow', test_allow_deny_wins)
t.case('IPv6 prefixes', test_ipv6)
t.case('PROXY protocol: the header\'s client address is checked', test_proxy_header_address)
t.case('PORT to an address the lists refuse: 504 even with allow_foreign_address',
       test_port_target)
t.case('a reload applies new lists to new connections', test_reload)
t.case('allow/deny configuration errors name file, line and key', test_config_errors)
SRV.stop()
t.done()
