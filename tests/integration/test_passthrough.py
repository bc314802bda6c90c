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
import os
import re
import socket
import ssl
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
    for _p in (BIG, MID):
        os.chmod(_p, 0o644)
    # one passive range per passthrough backend (== the proxy site's range)
    R_EX, R_IMP, R_PY, R_IDLE = (T.port_range(20) for _ in range(4))
    VS = Vsftpd(CERT, KEY, R_EX, PROXY_IP)
    VS.put(BIG)
    VS.put(MID)
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
