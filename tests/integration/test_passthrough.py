#!/usr/bin/python3
"""ftpgate TLS passthrough (`tls = passthrough` / `passthrough_implicit`):
the proxy holds no certificate; before AUTH it relays commands (PASV/EPSV
unchanged, PORT/EPRT refused with 502), after the backend's 234 it relays
the control connection blindly, and it forwards each port of passive_ports
1:1 to the backend's same port, for clients with a live control session.
TAP output; see ftptest.py for the environment variables.

Loopback layout (the proxy and the backend never bind the same IP:port):
  clients (source 127.0.0.1) --> ftpgate listen 127.0.0.2:PORT, data 127.0.0.2:P
                             --> backend 127.0.0.1 (vsftpd / pyftpdlib TLS),
                                 passive range == the site's passive_ports,
                                 announcing 127.0.0.2 in its 227.
The last case builds network namespaces (documentation ranges, deleted at
exit) and is skipped with a reason when that is impossible.

Needs /usr/bin/python3, curl, the openssl CLI, /usr/sbin/vsftpd;
pyftpdlib + python3-openssl for the pyftpdlib TLS backend (skipped without)."""

import atexit
import ftplib
import hashlib
import os
import re
import socket
import shutil
import signal
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
BIG_MIB = 64
MID_MIB = 4
PROXY_IP = '127.0.0.2'      # ftpgate's listen address (and its forwarders')
BACK_IP = '127.0.0.1'       # backends' address; clients' source address
STRANGER_IP = '127.0.0.3'
CMD_TIMEOUT = 40            # bound on every external command
IP = T.IP
PT_REFUSED_502 = ('502 Active mode is not available through this proxy; '
                  'use passive mode (PASV/EPSV).')
END_RE = (r'end: client (?P<client>\S+) backend (?P<backend>\S+) user "[^"]*" '
          r'data up (?P<up>\d+) down (?P<down>\d+) bytes, '
          r'control relayed (?P<ctrl>\d+) bytes, [0-9.]+ s: (?P<why>[^\n]*)')

# --------------------------------------------------------------------------
# bookkeeping: our own processes (by PID) and namespaces, removed at exit
# (atexit is LIFO: this runs before ftptest's own cleanup)

_my_procs = []
TOPO = T.NetnsTopology('fpt')


def _cleanup():
    for p in list(_my_procs):
        try:
            p.stop()
        except Exception:
            pass
    del _my_procs[:]
    TOPO.delete()


atexit.register(_cleanup)

t = T.start_tap(('curl', T.CURL), ('openssl CLI', T.OPENSSL))
_why = T.vsftpd_unavailable()
if _why:
    t.bail(_why)
T.use_private_binary()


def run(cmd, timeout=CMD_TIMEOUT, check=True):
    return T.run_cmd(cmd, timeout=timeout, check=check)


# --------------------------------------------------------------------------
# backends

def make_self_signed(d):
    """Self-signed certificate + key (one PEM file each, world-readable)."""
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    T._openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key',
                '-out', 'srv.pem', '-days', '30', '-subj', '/CN=ftptest passthrough backend',
                '-addext', 'subjectAltName=IP:127.0.0.1,IP:198.51.100.2'], d)
    for n in ('srv.key', 'srv.pem'):
        os.chmod(os.path.join(d, n), 0o644)
    return os.path.join(d, 'srv.pem'), os.path.join(d, 'srv.key')


def Vsftpd(cert, key, pasv_ports, pasv_address, listen_ip=BACK_IP, port=None,
           implicit=False, ns=None):
    """vsftpd, anonymous only (no password), explicit FTPS offered but not
    forced (plain clients log in too), require_ssl_reuse=YES; or implicit
    FTPS.  In namespace ns when given."""
    vs = T.VsftpdServer(cert, key, pasv_ports, host=listen_ip, port=port,
                        pasv_address=pasv_address, force_tls=False, implicit=implicit, ns=ns)
    _my_procs.append(vs)
    return vs


def PyTLS(root, cert, key, pasv_ports):
    """pyftpdlib TLS_FTPHandler (TLS required on control and data) on
    127.0.0.1, user u/p on root, masquerading as 127.0.0.2 in its 227."""
    srv = T.PyftpdTLSServer(root, cert, key, host=BACK_IP, pasv_ports=pasv_ports,
                            masquerade_address=PROXY_IP)
    _my_procs.append(srv)
    return srv


# --------------------------------------------------------------------------
# fixture

try:
    CERT, KEY = make_self_signed(T.tmpdir('pt-cert-'))
    SRC = T.tmpdir('pt-src-')
    os.chmod(SRC, 0o755)
    LOCAL = T.tmpdir('pt-local-')
    BIG = os.path.join(SRC, 'big.bin')
    MID = os.path.join(SRC, 'mid.bin')
    BIG_SHA = T.make_random_file(BIG, BIG_MIB)
    MID_SHA = T.make_random_file(MID, MID_MIB)
    UP_BIG = os.path.join(LOCAL, 'upbig.src')
    UP_BIG_SHA = T.make_random_file(UP_BIG, BIG_MIB)
    UP_MID = os.path.join(LOCAL, 'upmid.src')
    UP_MID_SHA = T.make_random_file(UP_MID, 0, nbytes=3 * MiB + 4321)
    # small files for the concurrency case (sizes not multiples of a record)
    SMALL = []
    for _i, _n in enumerate((1 * MiB + 777, 2 * MiB + 4099, 3 * MiB + 13)):
        _p = os.path.join(SRC, 'small%d.bin' % _i)
        SMALL.append(('small%d.bin' % _i, T.make_random_file(_p, 0, nbytes=_n), _n))
    for _p in [BIG, MID] + [os.path.join(SRC, n) for n, _, _ in SMALL]:
        os.chmod(_p, 0o644)
    # one passive range per passthrough backend (== the proxy site's range)
    R_EX, R_IMP, R_PY, R_IDLE = (T.port_range(20) for _ in range(4))
    VS = Vsftpd(CERT, KEY, R_EX, PROXY_IP)
    VS.put(BIG)
    VS.put(MID)
    for _n, _, _ in SMALL:
        VS.put(os.path.join(SRC, _n))
    VSI = Vsftpd(CERT, KEY, R_IMP, PROXY_IP, implicit=True)
    VSI.put(MID)
    PY_WHY = T.pyftpdlib_tls_available()
    PY = None
    if not PY_WHY:
        PYROOT = T.tmpdir('pt-pyroot-')
        os.link(MID, os.path.join(PYROOT, 'mid.bin'))
        PY = PyTLS(PYROOT, CERT, KEY, R_PY)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:3000])


def L(name):
    return os.path.join(LOCAL, name)


def pt_gate(backend, prange, tls='passthrough', **site):
    """One passthrough site listening on 127.0.0.2, passive_ports == prange."""
    port = T.free_port(PROXY_IP)
    cfg = T.gate_config(backend.addr(), listen_port=port, listen_host=PROXY_IP,
                        passive_ports=prange, tls=tls, **site)
    g = T.Ftpgate(cfg)
    g.pt_range = prange
    return g


def wait_end(g, mark, timeout=10.0, client=None):
    """The session end line logged after mark (dict of its fields, ints)."""
    pat = END_RE if client is None else END_RE.replace('(?P<client>\\S+)',
                                                       '(?P<client>%s:\\d+)' % re.escape(client))
    m = g.wait_log(pat, mark, timeout)
    assert m, 'no session end line within %.0f s; log since mark:\n%s' % (
        timeout, g.log_since(mark)[-3000:])
    d = m.groupdict()
    for k in ('up', 'down', 'ctrl'):
        d[k] = int(d[k])
    return d


def pt_url(g, path='', scheme='ftp'):
    return '%s://%s:%d/%s' % (scheme, PROXY_IP, g.port, path)


def curl_v(args, timeout=CMD_TIMEOUT):
    """curl -v; returns stderr text (commands, replies, connects)."""
    r = T.curl(['-v'] + list(args), timeout=timeout)
    return r.stderr.decode('utf-8', 'replace')


def parse_227(text):
    m = re.search(r'227 [^\n]*?\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', text)
    assert m, 'no 227 reply in:\n%s' % text[-3000:]
    return '.'.join(m.group(i) for i in range(1, 5)), int(m.group(5)) * 256 + int(m.group(6))


def parse_229(text):
    m = re.search(r'229 [^\n]*\(\|\|\|(\d+)\|\)', text)
    assert m, 'no 229 reply in:\n%s' % text[-3000:]
    return int(m.group(1))


def no_verify_ctx():
    return T.tls_client_context(None)


def with_logs(fn, *servers):
    """Add the tail of backend logs to a failure."""
    def wrapped():
        try:
            fn()
        except AssertionError as e:
            tails = []
            for s in servers:
                if s is not None:
                    tails.append('--- %s log, last lines:\n%s' % (
                        type(s).__name__, '\n'.join(s.log().splitlines()[-20:])))
            raise AssertionError('%s\n%s' % (e, '\n'.join(tails))) from None
    return wrapped


SSL = ['--ssl-reqd', '-k']
TRUST_227 = ['--no-ftp-skip-pasv-ip', '--disable-epsv']

# --------------------------------------------------------------------------
# cases


def case_vsftpd_curl():
    g = pt_gate(VS, R_EX)
    try:
        assert not re.search(r'(?m)^\s*tls_(cert|key)\s*=', g.text), \
            'the passthrough config holds a certificate/key:\n%s' % g.text
        assert re.search(r'(?m)^tls = passthrough$', g.text), g.text
        lo, hi = R_EX
        # LIST
        mark = g.log_mark()
        r = T.curl(SSL + [pt_url(g)])
        listing = r.stdout.decode('utf-8', 'replace')
        assert re.search(r'(?m)\bbig\.bin\s*$', listing) and 'mid.bin' in listing, \
            'LIST through passthrough: %r' % listing
        e = wait_end(g, mark)
        assert e['ctrl'] > 0, 'LIST session: control relayed %d bytes' % e['ctrl']
        # 64 MiB download, PASV (trusting the 227 address)
        mark = g.log_mark()
        out = L('big.pasv')
        err = curl_v(SSL + TRUST_227 + [pt_url(g, 'big.bin'), '-o', out])
        # (curl 7.88 sends AUTH SSL first; the proxy relays any AUTH)
        assert re.search(r'> AUTH (TLS|SSL)', err) and re.search(r'< 234', err), \
            'no AUTH / 234 in curl -v output:\n%s' % err[-3000:]
        assert '> PASV' in err and 'EPSV' not in err, 'curl did not use PASV:\n%s' % err[-3000:]
        ip, port = parse_227(err)
        assert ip == PROXY_IP, '227 announces %s, not %s' % (ip, PROXY_IP)
        assert lo <= port <= hi, '227 port %d outside %d-%d' % (port, lo, hi)
        assert re.search(r'(Trying|Connecting to) %s[: ]' % re.escape(PROXY_IP), err) and \
            ('port %d' % port in err or ':%d' % port in err), \
            'curl did not connect the data channel to %s:%d:\n%s' % (PROXY_IP, port, err[-3000:])
        got = T.sha256_file(out)
        assert got == BIG_SHA, 'PASV download sha256 %s != %s (size %d)' % (
            got, BIG_SHA, os.path.getsize(out))
        e = wait_end(g, mark)
        log = g.log_since(mark)
        assert re.search(r'command AUTH (TLS|SSL)', log) and 'command RETR' not in log \
            and 'command USER' not in log, \
            'the proxy saw commands after AUTH (not blind):\n%s' % log[-2000:]
        assert e['ctrl'] > 0, 'control relayed %d bytes' % e['ctrl']
        assert e['down'] >= BIG_MIB * MiB, \
            'end line counts %d bytes down for a %d MiB TLS download' % (e['down'], BIG_MIB)
        T.diag('PASV download end line: %r' % e)
        # 64 MiB download, EPSV
        mark = g.log_mark()
        out = L('big.epsv')
        err = curl_v(SSL + [pt_url(g, 'big.bin'), '-o', out])
        assert '> EPSV' in err and '> PASV' not in err, 'curl did not use EPSV:\n%s' % err[-3000:]
        port = parse_229(err)
        assert lo <= port <= hi, '229 port %d outside %d-%d' % (port, lo, hi)
        got = T.sha256_file(out)
        assert got == BIG_SHA, 'EPSV download sha256 %s != %s' % (got, BIG_SHA)
        e = wait_end(g, mark)
        assert e['ctrl'] > 0 and e['down'] >= BIG_MIB * MiB, e
        # 64 MiB uploads, PASV and EPSV
        for mode, extra in (('pasv', TRUST_227), ('epsv', [])):
            mark = g.log_mark()
            name = 'up-%s.bin' % mode
            err = curl_v(SSL + extra + ['-T', UP_BIG, pt_url(g, 'up/' + name)])
            want = '> PASV' if mode == 'pasv' else '> EPSV'
            assert want in err, 'curl did not send %s:\n%s' % (want, err[-3000:])
            dest = os.path.join(VS.up, name)
            assert os.path.exists(dest), 'no uploaded file %s on vsftpd' % dest
            got = T.sha256_file(dest)
            assert got == UP_BIG_SHA, '%s upload sha256 %s != %s (size %d)' % (
                mode, got, UP_BIG_SHA, os.path.getsize(dest))
            e = wait_end(g, mark)
            assert e['ctrl'] > 0 and e['up'] >= BIG_MIB * MiB, e
    finally:
        g.stop()


def ftplib_roundtrip(port, cls, user, passwd, rname, rsha, upname, updir):
    """FTP_TLS through the proxy: AUTH TLS, PROT P, RETR + STOR."""
    f = cls(context=no_verify_ctx(), timeout=30)
    f.connect(PROXY_IP, port, timeout=30)
    try:
        f.login(user, passwd)           # sends AUTH TLS first
        assert isinstance(f.sock, ssl.SSLSocket), 'control connection not TLS'
        assert f.prot_p().startswith('200'), f.replies[-1]
        data = T.retr_bytes(f, rname)
        got = T.sha256_bytes(data)
        assert got == rsha, 'RETR %s sha256 %s != %s (%d bytes)' % (rname, got, rsha, len(data))
        with open(UP_MID, 'rb') as src:
            r = f.storbinary('STOR ' + upname, src)
        assert r.startswith('226'), 'STOR reply %r' % r
        dest = os.path.join(updir, os.path.basename(upname))
        got = T.sha256_file(dest)
        assert got == UP_MID_SHA, 'STOR sha256 %s != %s (size %d)' % (
            got, UP_MID_SHA, os.path.getsize(dest))
        f.quit()
    finally:
        f.close()
    return f


def case_ftplib_vsftpd():
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        f = ftplib_roundtrip(g.port, T.ReuseFTP_TLS, 'anonymous', '', 'mid.bin', MID_SHA,
                             'up/ftplib.bin', VS.up)
        T.diag('replies: %r' % [r.split('\n')[0][:60] for r in f.replies])
        e = wait_end(g, mark)
        assert e['ctrl'] > 0 and e['down'] >= MID_MIB * MiB and e['up'] >= 3 * MiB, e
    finally:
        g.stop()


def case_ftplib_pyftpdlib():
    # the backend itself works with stock FTP_TLS (no session reuse)?
    d = T.RecordingFTP_TLS(context=no_verify_ctx(), timeout=20)
    d.connect(BACK_IP, PY.port, timeout=20)
    try:
        d.login('u', 'p')
        d.prot_p()
        got = T.sha256_bytes(T.retr_bytes(d, 'mid.bin'))
        assert got == MID_SHA, 'direct RETR from pyftpdlib TLS failed: environment problem'
        d.quit()
    finally:
        d.close()
    g = pt_gate(PY, R_PY)
    try:
        mark = g.log_mark()
        ftplib_roundtrip(g.port, T.RecordingFTP_TLS, 'u', 'p', 'mid.bin', MID_SHA,
                         'ftplib.bin', PY.root)
        e = wait_end(g, mark)
        assert e['ctrl'] > 0 and e['down'] >= MID_MIB * MiB and e['up'] >= 3 * MiB, e
    finally:
        g.stop()


def case_plain_no_auth():
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        out = L('mid.plain')
        err = curl_v(TRUST_227 + [pt_url(g, 'mid.bin'), '-o', out])
        assert 'AUTH' not in err, 'curl sent AUTH:\n%s' % err[-2000:]
        ip, port = parse_227(err)
        assert ip == PROXY_IP and R_EX[0] <= port <= R_EX[1], (ip, port)
        got = T.sha256_file(out)
        assert got == MID_SHA, 'plain download sha256 %s != %s' % (got, MID_SHA)
        e = wait_end(g, mark)
        assert e['down'] >= MID_MIB * MiB, e
        # and EPSV + a plain upload
        out = L('mid.plain.epsv')
        T.curl([pt_url(g, 'mid.bin'), '-o', out])
        assert T.sha256_file(out) == MID_SHA, 'plain EPSV download mismatch'
        T.curl(['-T', UP_MID, pt_url(g, 'up/plain.bin')])
        got = T.sha256_file(os.path.join(VS.up, 'plain.bin'))
        assert got == UP_MID_SHA, 'plain upload sha256 %s != %s' % (got, UP_MID_SHA)
    finally:
        g.stop()


def case_stranger():
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        c = T.RawCtl(PROXY_IP, g.port, timeout=10, source=BACK_IP)
        try:
            assert c.reply().startswith(b'220'), 'no greeting'
            assert c.cmd('USER anonymous').startswith(b'230'), c
            assert c.cmd('TYPE I').startswith(b'200')
            r = c.cmd('PASV').decode('latin-1')
            ip, port = parse_227(r)
            assert ip == PROXY_IP and R_EX[0] <= port <= R_EX[1], r
            # a stranger (no control session from 127.0.0.3) on that port
            s = socket.socket()
            s.bind((STRANGER_IP, 0))
            s.settimeout(5)
            t0 = time.monotonic()
            s.connect((PROXY_IP, port))
            data, how = T.recv_until_closed(s, 3.0)
            dt = time.monotonic() - t0
            s.close()
            assert how in ('eof', 'reset') and data == b'', \
                'stranger connection not closed at once: %s after %.2f s, got %r' % (
                    how, dt, data[:100])
            assert dt < 1.5, 'stranger connection closed only after %.2f s' % dt
            m = g.wait_log(r'refused data connection from %s\S* to port %d: '
                           r'no control session from that address'
                           % (re.escape(STRANGER_IP), port), mark, 5)
            assert m, 'no "refused data connection" log line:\n%s' % g.log_since(mark)[-2000:]
            # the real client, same port: the transfer works
            d = socket.socket()
            d.bind((BACK_IP, 0))
            d.settimeout(10)
            d.connect((PROXY_IP, port))
            r = c.cmd('RETR mid.bin')
            assert r.startswith(b'150'), 'RETR: %r' % r
            data, how = T.recv_until_closed(d, 20)
            d.close()
            assert how == 'eof', 'data connection ended by %s' % how
            assert T.sha256_bytes(data) == MID_SHA, 'RETR after stranger: %d bytes, bad sha' \
                % len(data)
            r = c.reply(20)
            assert r.startswith(b'226'), 'after RETR: %r' % r
            assert c.cmd('QUIT').startswith(b'221')
        finally:
            c.close()
        e = wait_end(g, mark)
        assert e['down'] >= MID_MIB * MiB, e
    finally:
        g.stop()


def case_port_refused():
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        with T.RawCtl(PROXY_IP, g.port, timeout=10) as c:
            assert c.reply().startswith(b'220')
            assert c.cmd('USER anonymous').startswith(b'230')
            r = c.cmd('PORT 127,0,0,1,100,1').decode('latin-1').rstrip('\r\n')
            assert r == PT_REFUSED_502, 'PORT: %r' % r
            r = c.cmd('EPRT |1|127.0.0.1|25601|').decode('latin-1').rstrip('\r\n')
            assert r == PT_REFUSED_502, 'EPRT: %r' % r
            # the session still works (the backend never saw PORT)
            assert c.cmd('NOOP').startswith(b'200')
            assert c.cmd('QUIT').startswith(b'221')
        log = g.log_since(mark)
        assert re.search(r'refused PORT\b', log) and re.search(r'refused EPRT\b', log), \
            'no log lines for the refused PORT/EPRT:\n%s' % log[-2000:]
        assert not re.search(r'(?m)PORT 127,0,0,1,100,1', VS.log()), \
            'vsftpd received the PORT command'
    finally:
        g.stop()


def case_overlap():
    d = T.tmpdir('pt-overlap-')
    p1, p2 = T.free_port(PROXY_IP), T.free_port(PROXY_IP)
    lo, hi = R_IDLE
    text = ('[global]\nlog_level = info\n\n'
            '[site:plain]\nlisten = 127.0.0.2:%d\nbackend = %s\npassive_ports = %d-%d\n\n'
            '[site:pt]\nlisten = 127.0.0.2:%d\nbackend = %s\ntls = passthrough\n'
            'passive_ports = %d-%d\n' % (p1, VS.addr(), lo, lo + 10,
                                         p2, VS.addr(), lo + 5, hi))
    conf = os.path.join(d, 'overlap.ini')
    with open(conf, 'w') as f:
        f.write(text)
    pp_lines = [i + 1 for i, ln in enumerate(text.splitlines())
                if ln.startswith('passive_ports')]
    r = T.run_ftpgate(['-t', '-c', conf])
    out = r.stdout + r.stderr
    assert r.returncode == 1, 'ftpgate -t exit %d:\n%s' % (r.returncode, out)
    m = re.search(re.escape(conf) + r':(\d+): passive_ports: .*overlaps', out)
    assert m, 'no "FILE:LINE: passive_ports: ... overlaps" message:\n%s' % out
    assert int(m.group(1)) in pp_lines, 'line %s is not a passive_ports line %r:\n%s' % (
        m.group(1), pp_lines, out)
    assert '%d-%d' % (lo, lo + 10) in out and '%d-%d' % (lo + 5, hi) in out, out
    T.diag(out.strip())
    # disjoint ranges are fine
    with open(conf, 'w') as f:
        f.write(text.replace('%d-%d\n\n[site:pt]' % (lo, lo + 10),
                             '%d-%d\n\n[site:pt]' % (lo, lo + 4)))
    r = T.run_ftpgate(['-t', '-c', conf])
    assert r.returncode == 0, 'disjoint ranges refused (exit %d):\n%s' % (
        r.returncode, r.stdout + r.stderr)


def case_implicit():
    g = pt_gate(VSI, R_IMP, tls='passthrough_implicit')
    try:
        # direct first: the backend itself speaks implicit FTPS
        out = L('mid.imp.direct')
        T.curl(['-k', 'ftps://%s/mid.bin' % VSI.addr(), '-o', out])
        assert T.sha256_file(out) == MID_SHA, 'direct implicit download mismatch'
        for mode, extra in (('epsv', []), ('pasv', ['--no-ftp-skip-pasv-ip', '--disable-epsv'])):
            mark = g.log_mark()
            out = L('mid.imp.' + mode)
            err = curl_v(['-k'] + extra + [pt_url(g, 'mid.bin', 'ftps'), '-o', out])
            got = T.sha256_file(out)
            assert got == MID_SHA, 'implicit %s download sha256 %s != %s' % (mode, got, MID_SHA)
            if mode == 'pasv':
                ip, port = parse_227(err)
                assert ip == PROXY_IP and R_IMP[0] <= port <= R_IMP[1], (ip, port)
            e = wait_end(g, mark)
            assert e['ctrl'] > 0 and e['down'] >= MID_MIB * MiB, e
    finally:
        g.stop()


def case_idle():
    g = pt_gate(VS, R_IDLE, idle_timeout=2)
    try:
        mark = g.log_mark()
        f = T.ReuseFTP_TLS(context=no_verify_ctx(), timeout=20)
        f.connect(PROXY_IP, g.port, timeout=20)
        try:
            f.login('anonymous', '')
            assert isinstance(f.sock, ssl.SSLSocket)
            t0 = time.monotonic()
            f.sock.settimeout(10)
            try:
                b = f.sock.recv(4096)
                how = 'eof' if b == b'' else 'data %r' % b[:80]
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError) as ex:
                how = 'eof (%s)' % type(ex).__name__
            except socket.timeout:
                how = 'timeout'
            dt = time.monotonic() - t0
        finally:
            f.close()
        assert how.startswith('eof'), 'idle TLS session: %s after %.1f s' % (how, dt)
        assert 1.5 <= dt <= 6.0, 'idle session closed after %.1f s (idle_timeout 2)' % dt
        T.diag('idle TLS session closed after %.2f s' % dt)
        e = wait_end(g, mark, 5)
        assert 'idle' in e['why'], 'end reason: %r' % e['why']
        assert e['ctrl'] > 0, e
    finally:
        g.stop()


# --------------------------------------------------------------------------
# network namespaces

NS_C, NS_G, NS_S = TOPO.client, TOPO.gate, TOPO.server
CLIENT_IP, GATE_IP, GATE_BACK_IP, SERVER_IP = (
    TOPO.CLIENT_IP, TOPO.GATE_IP, TOPO.GATE_BACK_IP, TOPO.SERVER_IP)
NS_FTP_PORT = 2121
NS_PASV = (41000, 41019)
nsexec = T.nsexec


def make_topology():
    """None, or the reason why namespaces cannot be used here."""
    return TOPO.build(CMD_TIMEOUT) or TOPO.wait_addresses()


def NsGate(text):
    """ftpgate -f inside the gateway namespace, its forwarded ports open."""
    g = T.Ftpgate(text, ns=NS_G, wait_ports=NS_PASV)
    _my_procs.append(g)
    return g


def case_netns():
    vs = Vsftpd(CERT, KEY, NS_PASV, GATE_IP, listen_ip=SERVER_IP, port=NS_FTP_PORT, ns=NS_S)
    vs.put(MID)
    conf = ('[global]\nlog_level = debug\n\n[site:pt]\nlisten = %s:%d\nbackend = %s:%d\n'
            'tls = passthrough\npassive_ports = %d-%d\n'
            % (GATE_IP, NS_FTP_PORT, SERVER_IP, NS_FTP_PORT, NS_PASV[0], NS_PASV[1]))
    g = NsGate(conf)
    try:
        for ns, nets in ((NS_C, {'203.0.113.0/24'}), (NS_S, {'198.51.100.0/24'})):
            out = run([IP, '-n', ns, '-4', 'route', 'show']).stdout.decode()
            got = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
            assert got == nets, '%s routes: %r' % (ns, out)
        url = 'ftp://%s:%d/mid.bin' % (GATE_IP, NS_FTP_PORT)
        for mode, extra in (('pasv', TRUST_227), ('epsv', [])):
            out = L('ns.' + mode)
            r = run(nsexec(NS_C, [T.CURL, '-sS', '-v', '--max-time', '30'] + SSL + extra +
                          [url, '-o', out]), check=False)
            err = r.stderr.decode('utf-8', 'replace')
            assert r.returncode == 0, 'curl %s through the gateway: exit %d\n%s' % (
                mode, r.returncode, err[-3000:])
            if mode == 'pasv':
                ip, port = parse_227(err)
                assert ip == GATE_IP and NS_PASV[0] <= port <= NS_PASV[1], (ip, port)
            got = T.sha256_file(out)
            assert got == MID_SHA, '%s download sha256 %s != %s' % (mode, got, MID_SHA)
        deadline = time.monotonic() + 5
        while not re.search(END_RE, g.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        ends = [m.groupdict() for m in re.finditer(END_RE, g.log())]
        assert ends and all(int(e['ctrl']) > 0 and int(e['down']) >= MID_MIB * MiB
                            for e in ends), 'end lines: %r' % ends
        # direct from the client network to the backend: no route
        r = run(nsexec(NS_C, [T.CURL, '-sS', '--max-time', '5'] + SSL +
                       ['ftp://%s:%d/mid.bin' % (SERVER_IP, NS_FTP_PORT), '-o',
                        L('ns.direct')]), timeout=15, check=False)
        assert r.returncode != 0, 'curl reached the backend directly from the client ns'
        T.diag('direct: curl exit %d: %s' % (r.returncode, r.stderr.decode().strip()))
    except AssertionError as e:
        raise AssertionError('%s\n--- vsftpd log:\n%s' % (
            e, '\n'.join(vs.log().splitlines()[-20:]))) from None
    finally:
        g.stop()
        vs.stop()


LFTP = shutil.which('lftp')


def lftp_cmd(script):
    """argv + env for lftp -d -c script, with its own HOME (no user rc)."""
    home = T.tmpdir('lftp-home-')
    return [LFTP, '-d', '-c', script], dict(os.environ, HOME=home, LFTP_HOME=home)


def case_many_sessions():
    """Issue 16.4: 8 curl sessions and 2 lftp sessions at once, all from
    127.0.0.1, each doing several TLS transfers over one control
    connection; every file checked by checksum, every session's bytes in
    the end lines."""
    g = pt_gate(VS, R_EX)
    procs = []
    try:
        mark = g.log_mark()
        want = {}            # local path -> sha256
        down_total = 0
        for i in range(8):
            args = [T.CURL, '-sS', '--max-time', '60', '--ssl-reqd', '-k']
            if i % 2:
                args += TRUST_227
            for k in range(3):
                name, sha, n = SMALL[(i + k) % len(SMALL)]
                out = L('many-%d-%d' % (i, k))
                args += [pt_url(g, name), '-o', out]
                want[out] = sha
                down_total += n
            procs.append(('curl %d' % i, subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE), None))
        up_total = 0
        if LFTP:
            for i in range(2):
                outs = [L('many-lftp-%d-%d' % (i, k)) for k in range(2)]
                script = ('set ftp:ssl-force true; set ftp:ssl-protect-data true; '
                          'set ssl:verify-certificate false; set ftp:passive-mode true; '
                          'set ftp:prefer-epsv %s; set net:max-retries 1; '
                          'set net:timeout 20; set xfer:clobber on; '
                          'open ftp://anonymous:@%s:%d && get %s -o %s && '
                          'put %s -o up/lftp%d.bin && get %s -o %s'
                          % ('true' if i else 'false', PROXY_IP, g.port, SMALL[i][0],
                             outs[0], UP_MID, i, SMALL[2][0], outs[1]))
                want[outs[0]] = SMALL[i][1]
                want[outs[1]] = SMALL[2][1]
                want[os.path.join(VS.up, 'lftp%d.bin' % i)] = UP_MID_SHA
                down_total += SMALL[i][2] + SMALL[2][2]
                up_total += os.path.getsize(UP_MID)
                argv, env = lftp_cmd(script)
                procs.append(('lftp %d' % i, subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=env), None))
        failed = []
        for what, p, _ in procs:
            try:
                out, err = p.communicate(timeout=CMD_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                failed.append('%s timed out' % what)
                continue
            err = err.decode('utf-8', 'replace')
            if what.startswith('lftp'):
                # lftp -d: keep its complaints, not the whole dialog
                err = '\n'.join(ln for ln in err.splitlines()
                                if re.search(r'(?i)error|unexpected|fatal|closed', ln))
            if p.returncode != 0:
                failed.append('%s exit %d: %s' % (what, p.returncode, err[-1500:]))
            elif what.startswith('lftp') and err:
                T.diag('%s: %s' % (what, err[-800:]))
        procs = []
        bad = []
        for path, sha in sorted(want.items()):
            got = T.sha256_file(path) if os.path.exists(path) else 'missing'
            if got != sha:
                bad.append('%s: %s' % (os.path.basename(path), got[:16]))
        assert not failed and not bad, 'concurrent sessions failed:\n%s\nbad files: %s' % (
            '\n'.join(failed), bad)
        n = 8 + (2 if LFTP else 0)
        deadline = time.monotonic() + 10
        while True:
            ends = [m.groupdict() for m in re.finditer(END_RE, g.log_since(mark))]
            if len(ends) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(ends) == n, '%d session end lines, want %d' % (len(ends), n)
        down = sum(int(e['down']) for e in ends)
        up = sum(int(e['up']) for e in ends)
        # LIST-free sessions: down is the files plus nothing else (TLS
        # record overhead adds a little; never less)
        assert down >= down_total and up >= up_total, \
            'end lines count down %d up %d, the files are %d / %d' % (
                down, up, down_total, up_total)
        for e in ends:
            assert e['why'] in ('control relay ended: closed by both sides',
                                'client closed the connection'), e
    finally:
        for _, p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        g.stop()


PT_WINDOW_S = 5     # the proxy's window after backend->client control traffic


def tls_session(port, source=None):
    """ftplib FTP_TLS (session reuse) logged in through the proxy, PROT P:
    after its AUTH the proxy relays the session blindly."""
    f = T.ReuseFTP_TLS(context=no_verify_ctx(), timeout=20)
    f.connect(PROXY_IP, port, timeout=20, source_address=(source or BACK_IP, 0))
    f.login('anonymous', '')
    f.prot_p()
    return f


def stolen(port, source=STRANGER_IP, wait=1.0):
    """Connect to a forwarded port from source; the bytes it got before the
    proxy or the backend closed it (b'' = refused or nothing sent)."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    try:
        s.connect((PROXY_IP, port))
        data, _ = T.recv_until_closed(s, wait)
        return data
    finally:
        s.close()


def case_gate_ports():
    """Issue 10.1: a connection to a forwarded port needs the session that
    was told that port (before AUTH), or a blind session of that address
    with backend->client control traffic in the last few seconds."""
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        # an attacker with a live session that never logs in, on 127.0.0.3
        with T.RawCtl(PROXY_IP, g.port, timeout=10, source=STRANGER_IP) as a, \
                T.RawCtl(PROXY_IP, g.port, timeout=10, source=BACK_IP) as v:
            assert a.reply().startswith(b'220') and v.reply().startswith(b'220')
            assert v.cmd('USER anonymous').startswith(b'230')
            assert v.cmd('TYPE I').startswith(b'200')
            ip, port = parse_227(v.cmd('PASV').decode('latin-1'))
            # the attacker takes the victim's port before it connects
            a_sock = socket.socket()
            a_sock.bind((STRANGER_IP, 0))
            a_sock.settimeout(5)
            a_sock.connect((PROXY_IP, port))
            # the victim connects and asks for the file
            d = socket.socket()
            d.bind((BACK_IP, 0))
            d.settimeout(10)
            d.connect((PROXY_IP, port))
            r = v.cmd('RETR mid.bin')
            got_a, _ = T.recv_until_closed(a_sock, 3.0)
            a_sock.close()
            assert got_a == b'', 'the attacker (no login, other address) read %d bytes of ' \
                'the victim\'s plain download' % len(got_a)
            assert r.startswith(b'150'), 'RETR: %r' % r
            data, how = T.recv_until_closed(d, 20)
            d.close()
            assert T.sha256_bytes(data) == MID_SHA, 'victim got %d bytes, bad sha' % len(data)
            assert v.reply(20).startswith(b'226')
            # a port nobody was told, from the victim's own address, before AUTH
            other = R_EX[0] if port != R_EX[0] else R_EX[0] + 1
            assert stolen(other, BACK_IP) == b''
        assert g.wait_log(r'refused data connection from %s\S* to port %d'
                          % (re.escape(STRANGER_IP), port), mark, 5), \
            'no refusal logged for the attacker:\n%s' % g.log_since(mark)[-3000:]
        # after AUTH: a blind attacker session whose window has passed
        a = tls_session(g.port, STRANGER_IP)
        try:
            v = tls_session(g.port, BACK_IP)
            try:
                time.sleep(PT_WINDOW_S + 1.0)
                v.voidcmd('TYPE I')
                host, port = ftplib.parse227(v.sendcmd('PASV'))
                m2 = g.log_mark()
                got = stolen(port)
                assert got == b'', 'a blind session idle for %d s took a data port and ' \
                    'read %d bytes' % (PT_WINDOW_S + 1, len(got))
                assert g.wait_log(r'refused data connection from %s\S* to port %d'
                                  % (re.escape(STRANGER_IP), port), m2, 5), \
                    'a blind session idle for %d s was forwarded:\n%s' % (
                        PT_WINDOW_S + 1, g.log_since(m2)[-2000:])
                # the victim's own transfer still works
                data = T.retr_bytes(v, 'mid.bin')
                assert T.sha256_bytes(data) == MID_SHA, 'victim after the attempt: bad sha'
                v.quit()
            finally:
                v.close()
        finally:
            a.close()
    finally:
        g.stop()


def case_shared_address():
    """Issue 10.1/16.4: two sessions from one address; the one that started
    last ends while the other one's download runs: the download completes."""
    g = pt_gate(VS, R_EX)
    try:
        x = tls_session(g.port)
        y = tls_session(g.port)          # newest session from 127.0.0.1
        try:
            x.voidcmd('TYPE I')
            conn = x.transfercmd('RETR big.bin')
            h = hashlib.sha256()
            n = 0
            while n < 2 * MiB:
                b = conn.recv(65536)
                assert b, 'download ended after %d bytes' % n
                h.update(b)
                n += len(b)
            y.quit()                     # the other session ends
            y.close()
            time.sleep(0.5)
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                h.update(b)
                n += len(b)
            try:
                conn.unwrap()
            except (OSError, ValueError):
                pass
            conn.close()
            r = x.voidresp()
            assert h.hexdigest() == BIG_SHA, 'download cut by the other session\'s end: ' \
                '%d of %d bytes' % (n, BIG_MIB * MiB)
            assert r.startswith('226'), r
            x.quit()
        finally:
            x.close()
            y.close()
    finally:
        g.stop()


def case_ban():
    """Issue 10.1: failed forwards from one address are rate-limited, then
    the address is banned for a while; another address is not affected."""
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        a = tls_session(g.port, STRANGER_IP)
        try:
            banned = None
            for i in range(40):
                a.voidcmd('NOOP')        # keep the window open
                stolen(R_EX[0] + i % (R_EX[1] - R_EX[0] + 1), wait=0.5)
                if g.wait_log(r'banned %s' % re.escape(STRANGER_IP), mark, 0.05):
                    banned = i + 1
                    break
            assert banned, 'no ban after 40 failed forwards:\n%s' % g.log_since(mark)[-3000:]
            T.diag('banned after %d failed forwards' % banned)
            time.sleep(1.1)              # refusal lines are rate-limited (1/s)
            m2 = g.log_mark()
            a.voidcmd('NOOP')
            assert stolen(R_EX[0]) == b''
            assert g.wait_log(r'refused data connection from %s\S* to port %d: banned'
                              % (re.escape(STRANGER_IP), R_EX[0]), m2, 5), \
                g.log_since(m2)[-2000:]
            assert 'forwarded' not in g.log_since(m2), 'a banned address was forwarded'
        finally:
            a.close()
        # another address is not affected
        v = tls_session(g.port, BACK_IP)
        try:
            assert T.sha256_bytes(T.retr_bytes(v, 'mid.bin')) == MID_SHA
            v.quit()
        finally:
            v.close()
    finally:
        g.stop()


def case_require_tls():
    """Issue 10.5: require_tls and require_data_tls on a passthrough site."""
    g = pt_gate(VS, R_EX, require_tls='yes', require_data_tls='yes')
    try:
        with T.RawCtl(PROXY_IP, g.port, timeout=10) as c:
            assert c.reply().startswith(b'220')
            r = c.cmd('USER anonymous')
            assert r.startswith(b'530'), 'USER before AUTH with require_tls: %r' % r
            r = c.cmd('PASS x')
            assert r.startswith(b'530'), 'PASS before AUTH with require_tls: %r' % r
        # TLS works as usual
        out = L('mid.reqtls')
        T.curl(SSL + [pt_url(g, 'mid.bin'), '-o', out])
        assert T.sha256_file(out) == MID_SHA
        # plain curl is refused at login
        r = subprocess.run([T.CURL, '-sS', '--max-time', '20', pt_url(g, 'mid.bin'),
                            '-o', L('mid.reqtls.plain')], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        assert r.returncode != 0, 'plain curl passed with require_tls'
    finally:
        g.stop()
    g = pt_gate(VS, R_EX, require_data_tls='yes')
    try:
        with T.RawCtl(PROXY_IP, g.port, timeout=10) as c:
            assert c.reply().startswith(b'220')
            assert c.cmd('USER anonymous').startswith(b'230')
            r = c.cmd('PROT C')
            assert r.startswith(b'534'), 'PROT C with require_data_tls: %r' % r
            ip, port = parse_227(c.cmd('PASV').decode('latin-1'))
            d = socket.socket()
            d.bind((BACK_IP, 0))
            d.settimeout(10)
            d.connect((PROXY_IP, port))
            for cmd in ('RETR mid.bin', 'LIST', 'STOR up/x.bin'):
                r = c.cmd(cmd)
                assert r.startswith(b'521'), '%s in clear with require_data_tls: %r' % (cmd, r)
            data, _ = T.recv_until_closed(d, 1.0)
            d.close()
            assert data == b'', 'clear data sent: %d bytes' % len(data)
            assert c.cmd('QUIT').startswith(b'221')
        out = L('mid.reqdtls')
        T.curl(SSL + [pt_url(g, 'mid.bin'), '-o', out])
        assert T.sha256_file(out) == MID_SHA
    finally:
        g.stop()


def rewrite_and_reload(g, **change):
    """Write g's config again with site keys changed; SIGHUP; wait for it."""
    cfg = T.gate_config(VS.addr(), listen_port=g.port, listen_host=PROXY_IP,
                        passive_ports=g.pt_range, tls='passthrough', **change)
    tmp = g.conf + '.new'
    with open(tmp, 'w') as f:
        f.write(T.render_config(cfg))
    os.replace(tmp, g.conf)
    mark = g.log_mark()
    os.kill(g.proc.pid, signal.SIGHUP)
    assert g.wait_log(r'reloaded ', mark, 10), 'no reload:\n%s' % g.log_since(mark)[-2000:]


def case_reload_session():
    """Issue 10.6: a blind session that started before a reload still gets
    its data connections (the port listeners moved to the new site)."""
    g = pt_gate(VS, R_EX)
    try:
        v = tls_session(g.port)
        try:
            rewrite_and_reload(g, idle_timeout=400)
            got = T.sha256_bytes(T.retr_bytes(v, 'mid.bin'))
            assert got == MID_SHA, 'RETR after the reload: bad sha'
            v.quit()
        finally:
            v.close()
        # and a session started after the reload
        out = L('mid.after-reload')
        T.curl(SSL + [pt_url(g, 'mid.bin'), '-o', out])
        assert T.sha256_file(out) == MID_SHA
    finally:
        g.stop()



def case_reload_emfile():
    """Issue 10.6: the forwarded-port listeners are paused by EMFILE when a
    reload takes them over; they must be resumed."""
    port = T.free_port(PROXY_IP)
    cfg = T.gate_config(VS.addr(), listen_port=port, listen_host=PROXY_IP,
                        passive_ports=R_EX, tls='passthrough')
    probe = T.Ftpgate(cfg)
    base = T.open_fds(probe.proc.pid)
    probe.stop()
    g = None
    # room for one blind session with a forward afterwards: two sockets and
    # two pipes (the relay), two sockets and a pipe (the forward)
    for lim in (base + 12, base + 13):
        g = T.LowFdGate(cfg, 16, lim)
        g.pt_range = R_EX
        left = lim - T.open_fds(g.proc.pid)
        if left % 2 == 0 and left > 0:
            break
        g.stop()
        g = None
    assert g, 'could not get an even number of free descriptors'
    fill = []
    try:
        for i in range(left // 2):
            c = T.RawCtl(PROXY_IP, g.port, timeout=5)
            assert c.reply(5).startswith(b'220')
            fill.append(c)
        mark = g.log_mark()
        trigger = socket.socket()
        trigger.bind((BACK_IP, 0))
        trigger.settimeout(5)
        trigger.connect((PROXY_IP, R_EX[0]))
        assert g.wait_log(r'accept on passthrough data port \d+: Too many open files; '
                          r'pausing', mark, 5), g.log_since(mark)[-2000:]
        for c in fill:
            c.close()
        fill = []
        trigger.close()
        assert g.wait_log(r'(?s)(end: .*){%d}' % (left // 2), mark, 5), g.log_since(mark)
        rewrite_and_reload(g, idle_timeout=400)
        time.sleep(1.5)       # past the pause of the old site
        out = L('mid.emfile')
        r = subprocess.run([T.CURL, '-sS', '--max-time', '15'] + SSL +
                           [pt_url(g, 'mid.bin'), '-o', out], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        assert r.returncode == 0, 'download after EMFILE + reload: curl exit %d: %s' % (
            r.returncode, r.stderr.decode('utf-8', 'replace')[-500:])
        assert T.sha256_file(out) == MID_SHA
    finally:
        for c in fill:
            c.close()
        g.stop()


def case_log_limit():
    """Issue 10.12: strangers hitting forwarded ports: refusal log lines are
    rate-limited (a disk filler with log = FILE), with a count of the ones
    left out."""
    g = pt_gate(VS, R_EX)
    try:
        mark = g.log_mark()
        for i in range(300):
            s = socket.socket()
            s.bind((STRANGER_IP, 0))
            s.settimeout(5)
            try:
                s.connect((PROXY_IP, R_EX[0] + i % 5))
                s.recv(1)
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(1.2)
        # one more after the second: it carries the count of suppressed lines
        stolen(R_EX[0], wait=0.3)
        m = g.wait_log(r'refused data connection from .* \((\d+) more suppressed', mark, 5)
        log = g.log_since(mark)
        n = len(re.findall(r'refused data connection from', log))
        T.diag('%d refusal lines for 301 strangers' % n)
        assert n <= 10, '%d refusal lines for 301 strangers:\n%s' % (n, log[-1500:])
        assert m and int(m.group(1)) >= 250, 'no count of suppressed lines:\n%s' % log[-1500:]
    finally:
        g.stop()


# --------------------------------------------------------------------------

CASES = [
    ('vsftpd explicit passthrough: curl --ssl-reqd LIST, 64 MiB down/up, PASV and EPSV',
     with_logs(case_vsftpd_curl, VS), 60),
    ('ftplib FTP_TLS prot_p (session reuse) through passthrough to vsftpd',
     with_logs(case_ftplib_vsftpd, VS), 30),
    ('ftplib FTP_TLS prot_p (stock) through passthrough to pyftpdlib TLS',
     with_logs(case_ftplib_pyftpdlib, PY), 30),
    ('no AUTH on a passthrough site: plain curl download/upload',
     with_logs(case_plain_no_auth, VS), 30),
    ('data connection from an address without a control session is refused and logged',
     with_logs(case_stranger, VS), 30),
    ('PORT/EPRT before AUTH: 502 and a log line', with_logs(case_port_refused, VS), 20),
    ('overlapping passive_ports with a passthrough site: ftpgate -t exits 1', case_overlap, 20),
    ('passthrough_implicit to vsftpd implicit_ssl: curl ftps:// download',
     with_logs(case_implicit, VSI), 30),
    ('8 curl + 2 lftp sessions at once from one address, explicit FTPS to vsftpd: '
     'every file intact', with_logs(case_many_sessions, VS), 120),
    ('forwarded ports: only the session told the port before AUTH, blind sessions only '
     'within the window', with_logs(case_gate_ports, VS), 60),
    ('two sessions from one address: the end of one does not cut the other\'s download',
     with_logs(case_shared_address, VS), 60),
    ('failed forwards from one address: rate-limited, then banned; others unaffected',
     with_logs(case_ban, VS), 60),
    ('require_tls (530) and require_data_tls (534, 521) before AUTH on a passthrough site',
     with_logs(case_require_tls, VS), 60),
    ('SIGHUP: a blind session from before the reload keeps its data connections',
     with_logs(case_reload_session, VS), 60),
    ('SIGHUP while the forwarded ports are paused by EMFILE: they resume',
     with_logs(case_reload_emfile, VS), 60),
    ('300 strangers on forwarded ports: a few refusal lines with a suppressed count',
     with_logs(case_log_limit, VS), 60),
    ('idle_timeout=2: an idle blind TLS session is closed within ~6 s',
     with_logs(case_idle, VS), 20),
]

try:
    for name, fn, tmo in CASES:
        if 'pyftpdlib' in name and PY is None:
            t.skip(name, PY_WHY)
            continue
        t.case(name, fn, timeout=tmo)
    NS_NAME = 'netns: client 203.0.113.2 | gateway | vsftpd 198.51.100.2: curl --ssl-reqd ' \
              'through passthrough, no direct route'
    try:
        why = make_topology()
    except Exception as e:  # noqa
        why = 'namespace set-up failed: %s' % str(e).replace('\n', ' | ')[:500]
    if why:
        T.diag('netns case skipped: %s' % why)
        t.skip(NS_NAME, why)
    else:
        t.case(NS_NAME, case_netns, timeout=40)
finally:
    _cleanup()
t.done()
