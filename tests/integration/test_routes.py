#!/usr/bin/python3
"""Routing by user: [route:SITE] maps user names (exact or shell globs,
user@host included) to servers, first match wins, the site's own backend
when none matches.  The proxy greets and answers USER itself (331), then
connects, consumes the backend's 220, sends USER (without @host unless
route_keep_host) and relays the answer to PASS.  Two pyftpdlib servers with
different content (a.txt on A, the site's backend; b.txt on B, the routes'),
so the listing shows where a user landed.  Real clients: ftplib (plain and
FTPS with require_tls), curl.  Loopback only.  TAP output."""

import ftplib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)

ROOT_A = T.root_with('a.txt')
ROOT_B = T.root_with('b.txt')
A = T.PyftpdServer(ROOT_A)
B = T.PyftpdServer(ROOT_B)
GP = T.port_range(100)


def config(routes=None, **kw):
    c = T.gate_config(A, passive_ports=GP, **kw)
    c['route:test'] = routes or {'u': B.addr(), '*@acme.example': B.addr(),
                                 'ftp-*': B.addr()}
    return c


def listing(port, user, passwd='p'):
    f = T.RecordingFTP()
    f.connect('127.0.0.1', port, timeout=20)
    try:
        f.login(user, passwd)
        return f.nlst()
    finally:
        f.close()


def pass_reply(port, user, passwd):
    """The reply to PASS (text) for user/passwd."""
    with T.RawCtl('127.0.0.1', port) as c:
        assert c.reply().startswith(b'220')
        r = c.cmd('USER ' + user)
        assert r.startswith(b'331'), r
        return c.cmd('PASS ' + passwd).decode()


def test_by_name():
    with T.Ftpgate(config()) as g:
        assert listing(g.port, 'u') == ['b.txt']
        assert listing(g.port, 'anonymous', 'x@') == ['a.txt']   # no route: the site's
        assert g.wait_log(r'user "u" routed by "u" \(line \d+\)'), g.log()
        assert g.wait_log(r'user "anonymous": no route matches, the site\'s backend'), g.log()
        r = T.curl(['--list-only', 'ftp://u:p@127.0.0.1:%d/' % g.port])
        assert r.stdout.decode().strip() == 'b.txt'


def test_user_at_host():
    with T.Ftpgate(config()) as g:
        assert listing(g.port, 'u@acme.example') == ['b.txt']   # B got "u"
        assert g.wait_log(r'user "u@acme\.example" routed by "\*@acme\.example"'), g.log()
        # @host selects only configured routes, never a host: no match, the site's backend.
        mark = g.log_mark()
        assert listing(g.port, 'u@127.0.0.1') == ['a.txt']
        assert g.wait_log(r'end: client \S+ backend %s user "u"' % re.escape(A.addr()), mark), \
            g.log_since(mark)


def test_keep_host():
    with T.Ftpgate(config(route_keep_host='yes')) as g:
        # B gets "u@acme.example", a user it does not know.
        assert pass_reply(g.port, 'u@acme.example', 'p').startswith('530')


def test_wrong_password_looks_the_same():
    with T.Ftpgate(config()) as routed, \
            T.Ftpgate(T.gate_config(B, passive_ports=GP)) as direct:
        want = pass_reply(direct.port, 'u', 'wrong')
        assert want.startswith('530'), want
        assert pass_reply(routed.port, 'u', 'wrong') == want
        assert pass_reply(routed.port, 'ftp-nobody', 'x') == pass_reply(direct.port,
                                                                        'ftp-nobody', 'x')


def test_before_user():
    with T.Ftpgate(config()) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply().startswith(b'220 Service ready')
            assert c.cmd('PASS x').startswith(b'503')
            assert c.cmd('LIST').startswith(b'530')
            assert c.cmd('NOOP').startswith(b'200')
            feat = c.cmd('FEAT')
            assert feat.startswith(b'211-') and b' EPSV' in feat, feat
            assert c.cmd('QUIT').startswith(b'221')
        assert 'backend' not in ''.join(l for l in g.log().splitlines() if 'start:' in l)


def test_ftps_require_tls():
    pki = T.make_tls_certs(T.tmpdir('pki-'))
    cfg = config(tls='terminate', require_tls='yes', tls_cert=pki['cert'],
                 tls_key=pki['key'])
    with T.Ftpgate(cfg) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            c.reply()
            assert c.cmd('USER u').startswith(b'530'), 'USER before AUTH TLS'
        f = T.ReuseFTP_TLS(context=T.tls_client_context(pki['ca']))
        f.connect('127.0.0.1', g.port, timeout=20)
        try:
            f.auth()
            f.login('u@acme.example', 'p')
            f.prot_p()
            assert f.nlst() == ['b.txt']
        finally:
            f.close()


def test_route_servers_in_metrics():
    cfg = config(health_interval=1, health_timeout=1, health_fall=1, health_rise=1)
    cfg['global']['metrics_listen'] = '127.0.0.1:%d' % T.free_port()
    with T.Ftpgate(cfg) as g:
        assert listing(g.port, 'u') == ['b.txt']
        text = T.gate_metrics(g)
        for srv, sessions in ((A, 0), (B, 1)):
            assert re.search(r'^ftpgate_backend_up\{site="test",server="%s"\} 1$'
                             % re.escape(srv.addr()), text, re.M), text
            assert re.search(r'^ftpgate_backend_sessions_total\{site="test",server="%s"\} %d$'
                             % (re.escape(srv.addr()), sessions), text, re.M), text
        # B is listed once although three routes name it.
        assert len(re.findall(r'^ftpgate_backend_up\{site="test",server="%s"\}'
                              % re.escape(B.addr()), text, re.M)) == 1


def test_config_errors():
    cases = [
        ('[route:nosuch]\nu = 127.0.0.1:21', r':4: route:nosuch: no \[site:nosuch\] above it'),
        ('[route:x]\nu = 127.0.0.1:21\nu = 127.0.0.1:22', r':6: u: listed twice in \[route:x\]'),
        ('[route:x]\nu = not an address', r':5: u: '),
        ('[route:x]\nu = ' + ', '.join('127.0.0.1:%d' % (2000 + i) for i in range(5)),
         r':5: u: more than 4 servers'),
        ('tls = passthrough\n[route:x]\nu = 127.0.0.1:21',
         r':6: route:x: a passthrough site cannot route by user'),
        ('route_keep_host = maybe', r':4: route_keep_host: "maybe" is not yes or no'),
    ]
    T.check_config_errors(cases, '[site:x]\nlisten = 127.0.0.1:2100\nbackend = 127.0.0.1:21\n')


t.case('users routed by name to their server; no route: the site\'s backend (ftplib, curl)',
       test_by_name)
t.case('user@host: routed by a glob, the backend gets the name without @host; an unknown '
       '@host selects nothing', test_user_at_host)
t.case('route_keep_host = yes: the backend gets user@host', test_keep_host)
t.case('a wrong password or user looks the same as with a single backend',
       test_wrong_password_looks_the_same)
t.case('before USER the proxy answers: 503, 530, NOOP, FEAT, QUIT; no backend connected',
       test_before_user)
t.case('FTPS with require_tls: USER only after AUTH TLS, then routed', test_ftps_require_tls)
t.case('route servers are health-checked and in /metrics, once each',
       test_route_servers_in_metrics)
t.case('route configuration errors name file, line and key', test_config_errors)
A.stop()
B.stop()
t.done()
