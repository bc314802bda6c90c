#!/usr/bin/python3
"""Live sessions: GET /sessions on the metrics listener lists the open
sessions as JSON (site, client, user, backend, state, TLS, age, the running
transfer with its bytes so far and rate); `ftpgate sessions [-c FILE]`
prints them as a table.  pyftpdlib backend, ftplib clients (FTPS with the
proxy's certificate), a download read slowly so that it is running while
the test looks.  Loopback only.  TAP output."""

import http.client
import json
import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.start_tap()

ROOT = T.tmpdir('ftproot-')
os.chmod(ROOT, 0o755)
SIZE = 32 * T.MiB
SHA = T.make_random_file(os.path.join(ROOT, 'big.bin'), nbytes=SIZE)
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)
CERT, KEY = T.make_self_signed(T.tmpdir('sesscert-'))


def gate_conf(**site):
    c = T.gate_config(SRV, passive_ports=GP, **site)
    c['global']['metrics_listen'] = '127.0.0.1:%d' % T.free_port()
    return c


def http_get(g, path, method='GET'):
    port = int(re.search(r'metrics_listen = 127\.0\.0\.1:(\d+)', g.text).group(1))
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader('Content-Type'), r.read()
    finally:
        c.close()


def sessions(g):
    status, ctype, body = http_get(g, '/sessions')
    assert status == 200 and ctype == 'application/json', (status, ctype, body)
    doc = json.loads(body)
    assert doc['count'] == len(doc['sessions']), doc
    return doc['sessions']


def cli(g):
    return T.run_ftpgate(['sessions', '-c', g.conf])


def wait_for(g, pred, what):
    """Poll /sessions until pred(list) holds (bounded); return the list."""
    for _ in range(200):
        s = sessions(g)
        if pred(s):
            return s
        T.time.sleep(0.05)
    raise AssertionError('%s: %r' % (what, s))


def test_empty():
    with T.Ftpgate(gate_conf()) as g:
        assert sessions(g) == []
        r = cli(g)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0].split() == ['ID', 'SITE', 'CLIENT', 'USER', 'BACKEND',
                                                    'STATE', 'TLS', 'AGE', 'TRANSFER'], r.stdout
        assert len(r.stdout.splitlines()) == 1, r.stdout


def test_running_download():
    with T.Ftpgate(gate_conf(tls='terminate', tls_cert=CERT, tls_key=KEY)) as g:
        idle = T.ftp_login(g.port)                 # a plain session, logged in, idle
        f = T.ReuseFTP_TLS(context=T.tls_client_context())
        f.connect('127.0.0.1', g.port, timeout=20)
        f.login('u', 'p')
        assert f.prot_p().startswith('200')
        try:
            f.voidcmd('TYPE I')
            conn = f.transfercmd('RETR big.bin')
            got = bytearray(conn.recv(65536))
            tls_port = f.sock.getsockname()[1]

            def mine(ss):
                return [s for s in ss if s['client'] == '127.0.0.1:%d' % tls_port]
            ss = wait_for(g, lambda ss: mine(ss) and mine(ss)[0]['transfer'] and
                          mine(ss)[0]['transfer']['bytes'] > 0, 'no transfer bytes')
            assert len(ss) == 2, ss
            s = mine(ss)[0]
            assert (s['site'], s['user'], s['backend'], s['state']) == \
                ('test', 'u', SRV.addr(), 'transfer'), s
            assert s['tls'] is True and s['data_tls'] is True and s['backend_tls'] is False, s
            assert s['transfer']['command'] == 'RETR big.bin', s
            b1 = s['transfer']['bytes']
            assert 0 < b1 < SIZE and s['transfer']['seconds'] >= 0, s
            assert s['bytes_down'] == b1 and s['age_seconds'] >= 0, s
            o = [x for x in ss if x is not s][0]
            assert o['client'] == '127.0.0.1:%d' % idle.sock.getsockname()[1], o
            assert (o['state'], o['tls'], o['transfer'], o['user']) == ('idle', False, None, 'u'), o
            # The table while the transfer runs.
            r = cli(g)
            assert r.returncode == 0, r.stderr
            rows = {ln.split()[2]: ln for ln in r.stdout.splitlines()[1:]}
            row = rows['127.0.0.1:%d' % tls_port]
            assert re.match(r'\d+ +test +127\.0\.0\.1:\d+ +u +%s +transfer +yes +\d+s +RETR '
                            r'big\.bin: [0-9.]+ [KMG]?i?B, [0-9.]+ [KMG]?i?B/s$'
                            % re.escape(SRV.addr()), row), row
            assert re.search(r' idle +no +\d+s +-$', rows['127.0.0.1:%d'
                                                          % idle.sock.getsockname()[1]]), rows
            # Read 8 MiB more: the bytes so far grow.
            while len(got) < 8 * T.MiB:
                got += conn.recv(1 << 20)
            ss = wait_for(g, lambda ss: mine(ss)[0]['transfer'] and
                          mine(ss)[0]['transfer']['bytes'] > b1 + 4 * T.MiB, 'no growth')
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                got += b
            conn.unwrap()
            conn.close()
            assert f.voidresp().startswith('226')
            assert T.sha256_bytes(bytes(got)) == SHA
            s = wait_for(g, lambda ss: mine(ss)[0]['state'] == 'idle', 'not idle')
            assert mine(s)[0]['transfer'] is None and mine(s)[0]['bytes_down'] == SIZE, s
        finally:
            f.close()
            idle.close()


def test_hostile_strings():
    # A user name with quotes, a backslash and bytes that are not UTF-8 (the
    # proxy refuses control bytes in a command line; the log-escaped name it
    # keeps holds backslashes of its own).
    with T.Ftpgate(gate_conf()) as g:
        c = socket.create_connection(('127.0.0.1', g.port), timeout=10)
        try:
            assert c.recv(4096).startswith(b'220')
            c.sendall(b'USER a"b\\c\xe9\xc3z\r\n')
            assert c.recv(4096).startswith(b'331')
            status, ctype, body = http_get(g, '/sessions')
            assert status == 200
            assert all(b >= 0x20 for b in body.replace(b'\n', b'')), body
            body.decode('utf-8')                   # valid UTF-8
            s = json.loads(body)['sessions'][0]
            assert s['user'].startswith('a"b\\') and s['state'] == 'login', s
            assert not any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in s['user']), s
            r = cli(g)
            assert r.returncode == 0, r.stderr
            assert not re.search(r'[\x00-\x08\x0b-\x1f\x7f]', r.stdout), repr(r.stdout)
            assert ' login ' in r.stdout.splitlines()[1], r.stdout
        finally:
            c.close()


def test_http():
    with T.Ftpgate(gate_conf()) as g:
        status, ctype, body = http_get(g, '/sessions?format=table')
        assert status == 200 and ctype.startswith('text/plain') and body.startswith(b'ID '), body
        assert http_get(g, '/sessions?format=json')[0] == 200
        assert http_get(g, '/sessions?format=xml')[0] == 400
        assert http_get(g, '/sessions', 'POST')[0] == 405
        status, _, body = http_get(g, '/sessions', 'HEAD')
        assert status == 200 and body == b''
        assert http_get(g, '/metrics')[0] == 200


def test_cli_errors():
    c = T.gate_config(SRV, passive_ports=GP)
    with T.Ftpgate(c) as g:
        r = cli(g)
        assert r.returncode == 1 and re.search(
            r'^ftpgate sessions: .*ftpgate\.ini: metrics_listen is not set', r.stderr), r.stderr
    c = gate_conf()
    g = T.Ftpgate(c)
    g.stop()                                   # configured, not running
    r = cli(g)
    assert r.returncode == 1 and re.search(
        r'^ftpgate sessions: no answer from 127\.0\.0\.1:\d+ \(metrics_listen of .*\): is '
        r'ftpgate running\?', r.stderr), r.stderr
    r = T.run_ftpgate(['sessions', '-c', '/nonexistent.ini'])
    assert r.returncode == 1 and 'nonexistent.ini: cannot open' in r.stderr, r.stderr
    r = T.run_ftpgate(['sessions', '-x'])
    assert r.returncode == 2 and 'usage: ftpgate sessions [-c FILE]' in r.stderr, r.stderr


t.case('/sessions and `ftpgate sessions` with no session', test_empty)
t.case('a running FTPS download: user, TLS, bytes so far growing, rate; the table',
       test_running_download)
t.case('hostile user name: escaped in JSON, nothing raw in the table', test_hostile_strings)
t.case('/sessions?format=table|json, 400, 405, HEAD', test_http)
t.case('ftpgate sessions: metrics not configured, not running, bad file, bad option',
       test_cli_errors)
SRV.stop()
t.done()
