#!/usr/bin/python3
"""ftpgate FTPS: TLS toward clients (explicit AUTH TLS, implicit), TLS toward
the backend (pyftpdlib TLS_FTPHandler, vsftpd with require_ssl_reuse), both
at once, active and passive data connections, session reuse, require_tls /
require_data_tls, STARTTLS injection, bad certificates.  Real clients: curl,
lftp, Python's ftplib.  Loopback only.  TAP output.

Needs /usr/bin/python3 with pyftpdlib and python3-openssl for the TLS
backend, the openssl CLI, curl; lftp and vsftpd are optional (their cases
are skipped without them)."""

import ftplib
import io
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
BIG_MIB = 64
MID_MIB = 4
LFTP = shutil.which('lftp')

t = T.start_tap(('curl', T.CURL), ('openssl CLI', T.OPENSSL))

# A private copy of the binary: src/ftpgate may be rebuilt while this runs.
_bindir = T.tmpdir('ftpgate-bin-')
shutil.copy2(T.FTPGATE, os.path.join(_bindir, 'ftpgate'))
T.FTPGATE = os.path.join(_bindir, 'ftpgate')

# --------------------------------------------------------------------------
# fixture: certificates, files, backends

try:
    C = T.make_tls_certs(T.tmpdir('tls-certs-'))
except Exception as e:  # noqa
    t.bail('cannot make test certificates: %s' % str(e).replace('\n', ' | ')[:1000])
CTX = T.tls_client_context(C['ca'])     # verifies the proxy's chain for 127.0.0.1

ROOT = T.tmpdir('ftproot-')
os.chmod(ROOT, 0o755)
LOCAL = T.tmpdir('ftplocal-')
os.makedirs(os.path.join(ROOT, 'up'))
BIG = os.path.join(ROOT, 'big.bin')
MID = os.path.join(ROOT, 'mid.bin')
BIG_SHA = T.make_random_file(BIG, BIG_MIB)
MID_SHA = T.make_random_file(MID, MID_MIB)
for _p in (BIG, MID):
    os.chmod(_p, 0o644)

# two passive-port blocks shared by the (sequential) gates of the cases
GP = [T.port_range(100), T.port_range(100)]

TLS_WHY = T.pyftpdlib_tls_available()
VS_WHY = T.vsftpd_unavailable()
SRV = TSRV = VS = None
try:
    SRV = T.PyftpdServer(ROOT)
    if not TLS_WHY:
        TSRV = T.PyftpdTLSServer(ROOT, C['cert'], C['key'])
    if not VS_WHY:
        VS = T.VsftpdServer(C['cert'], C['key'])
        for _p in (BIG, MID):
            _q = os.path.join(VS.root, os.path.basename(_p))
            try:
                os.link(_p, _q)
            except OSError:
                shutil.copy2(_p, _q)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])


def L(name):
    return os.path.join(LOCAL, name)


def gate(backend, slot=0, **site):
    if not isinstance(backend, str):
        backend = backend.addr()
    return T.Ftpgate(T.gate_config(backend, passive_ports=GP[slot], **site))


def tls_site(**kw):
    d = dict(tls='terminate', tls_cert=C['chain'], tls_key=C['key'])
    d.update(kw)
    return d


def btls_site(**kw):
    d = dict(backend_tls='on', backend_ca=C['ca'])
    d.update(kw)
    return d


class Backend:
    """How to log in to a backend and where its files are."""

    def __init__(self, name, srv, user, passwd, root):
        self.name, self.srv, self.user, self.passwd, self.root = name, srv, user, passwd, root

    def userinfo(self):
        return '%s:%s@' % (self.user, self.passwd) if self.user != 'anonymous' else ''


BK_PY = Backend('pyftpdlib-TLS', TSRV, 'u', 'p', ROOT)
BK_VS = Backend('vsftpd', VS, 'anonymous', 'a@b', VS.root if VS else None)


def url(g, path, user='u:p@', scheme='ftp'):
    return '%s://%s127.0.0.1:%d/%s' % (scheme, user, g.port, path)


FTPS = ['--ssl-reqd', '--cacert', C['ca']]


def tls_login(port, cls=T.ReuseFTP_TLS, user='u', passwd='p', ctx=None, prot=True):
    f = cls(context=ctx or CTX)
    f.connect('127.0.0.1', port, timeout=20)
    f.login(user, passwd)
    if prot:
        assert f.prot_p().startswith('200'), f.replies[-1]
    return f


class EpsvFTP_TLS(T.ReuseFTP_TLS):
    """Uses EPSV (ftplib uses it only on IPv6)."""

    def makepasv(self):
        return ftplib.parse229(self.sendcmd('EPSV'), self.sock.getpeername())


def expect_fail_reply(fn, what):
    try:
        r = fn()
    except (ftplib.error_temp, ftplib.error_perm) as e:
        return str(e)
    raise AssertionError('%s: expected a 4xx/5xx reply, got %r' % (what, r))


def curl_get(args, out, want_sha):
    r = T.curl(['-v'] + args + ['-o', out])
    got = T.sha256_file(out)
    os.unlink(out)
    assert got == want_sha, 'download: sha256 mismatch'
    return r.stderr.decode('utf-8', 'replace')


def curl_put(args, dest_path, mib):
    src = L('up-%s.bin' % os.urandom(3).hex())
    sha = T.make_random_file(src, mib)
    try:
        r = T.curl(['-v', '-T', src] + args)
    finally:
        os.unlink(src)
    assert os.path.getsize(dest_path) == int(mib * MiB), \
        'uploaded size %d, want %d' % (os.path.getsize(dest_path), int(mib * MiB))
    got = T.sha256_file(dest_path)
    os.unlink(dest_path)
    assert got == sha, 'upload: sha256 mismatch'
    return r.stderr.decode('utf-8', 'replace')


def lftp(script, timeout=40):
    home = T.tmpdir('lftp-home-')
    env = dict(os.environ, HOME=home, LFTP_HOME=home)
    return subprocess.run([LFTP, '-d', '-c', script], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, env=env)


def lftp_get(port, name, want_sha, passive=True, user='u,p'):
    out = L('lftp-%s' % os.urandom(3).hex())
    script = ('set ftp:ssl-force true; set ftp:ssl-protect-data true; '
              'set ssl:ca-file %s; set ssl:verify-certificate true; '
              'set ftp:passive-mode %s; set ftp:fix-pasv-address false; '
              'set net:max-retries 1; set net:timeout 10; set net:reconnect-interval-base 1; '
              'set xfer:clobber on; open -u %s ftp://127.0.0.1:%d; get %s -o %s'
              % (C['ca'], 'true' if passive else 'false', user, port, name, out))
    r = lftp(script)
    err = r.stderr.decode('utf-8', 'replace')
    assert r.returncode == 0, 'lftp exit %d\n%s' % (r.returncode, err[-4000:])
    got = T.sha256_file(out)
    os.unlink(out)
    assert got == want_sha, 'lftp download: sha256 mismatch'
    return err


def need(*what):
    for w in what:
        if w == 'tsrv' and not TSRV:
            raise AssertionError('pyftpdlib TLS backend missing: ' + TLS_WHY)
        if w == 'vs' and not VS:
            raise AssertionError('vsftpd missing: ' + VS_WHY)


def mlog(srv, since):
    """A backend's log text after character offset `since`."""
    return srv.log()[since:]


# --------------------------------------------------------------------------
# cases

def c01_offload():
    with gate(SRV, **tls_site()) as g:
        err = curl_get(FTPS + ['--disable-epsv', url(g, 'big.bin')], L('c01.bin'), BIG_SHA)
        for pat in (r'^> AUTH (SSL|TLS)', r'^< 234 ', r'^> PBSZ 0', r'^< 200 PBSZ=0',
                    r'^> PROT P', r'^< 200 Protection level set to Private', r'^> PASV',
                    r'^< 227 ', r'^< 226 '):
            assert re.search(pat, err, re.M), 'curl dialog lacks %r:\n%s' % (pat, err[-3000:])
        err = curl_put(FTPS + [url(g, 'up/c01.bin')], os.path.join(ROOT, 'up', 'c01.bin'),
                       BIG_MIB)
        assert re.search(r'^> EPSV', err, re.M) and re.search(r'^< 229 ', err, re.M), err[-3000:]
        # ftplib, data connections resuming the control session: PASV and EPSV
        for cls, verb in ((T.ReuseFTP_TLS, 'PASV'), (EpsvFTP_TLS, 'EPSV')):
            f = tls_login(g.port, cls=cls)
            assert f.sock.version() in ('TLSv1.2', 'TLSv1.3'), f.sock.version()
            sha, n = T.sha_retr(f, 'mid.bin')
            assert (sha, n) == (MID_SHA, MID_MIB * MiB), '%s: RETR differs (%d bytes)' % (verb, n)
            data = os.urandom(MiB + 3)
            assert f.storbinary('STOR up/c01f.bin', io.BytesIO(data)).startswith('226')
            with open(os.path.join(ROOT, 'up', 'c01f.bin'), 'rb') as fh:
                assert fh.read() == data, '%s: STOR content differs' % verb
            names = f.nlst('up')
            assert any(n.endswith('c01f.bin') for n in names), names
            assert verb in f.sent, f.sent
            assert f.sendcmd('NOOP').startswith('200')
            f.quit()
        if LFTP:
            lftp_get(g.port, 'mid.bin', MID_SHA)
        else:
            T.diag('lftp not installed: lftp part skipped')


def c02_implicit():
    with gate(SRV, **tls_site(tls='implicit')) as g:
        err = curl_get(['--cacert', C['ca'], url(g, 'mid.bin', scheme='ftps')], L('c02.bin'),
                       MID_SHA)
        assert 'SSL connection using' in err, err[-2000:]
        assert not re.search(r'^> AUTH', err, re.M), 'curl sent AUTH on implicit'
        f = T.ImplicitFTP_TLS(context=CTX)
        w = f.connect('127.0.0.1', g.port, timeout=20)
        assert w.startswith('220'), w
        feat = f.sendcmd('FEAT')
        assert re.search(r'(?m)^ PBSZ\r?$', feat) and re.search(r'(?m)^ PROT\r?$', feat), feat
        assert 'AUTH TLS' not in feat, 'implicit FEAT offers AUTH TLS:\n' + feat
        r = expect_fail_reply(lambda: f.sendcmd('AUTH TLS'), 'AUTH on implicit')
        assert r.startswith('503'), r
        f.login('u', 'p')
        f.prot_p()
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA, 'implicit ftplib download differs'
        f.quit()


def c03_plain_client_tls_backend(b):
    def fn():
        mark = len(b.srv.log())
        with gate(b.srv, **btls_site()) as g:
            f = T.ftp_login(g.port, user=b.user, passwd=b.passwd)
            assert f.welcome.startswith('220'), f.welcome
            f.quit()
            curl_get([url(g, 'big.bin', user=b.userinfo())], L('c03.bin'), BIG_SHA)
            curl_put([url(g, 'up/c03.bin', user=b.userinfo())],
                     os.path.join(b.root, 'up', 'c03.bin'), BIG_MIB)
            blog = mlog(b.srv, mark)
            if b.srv is VS:
                check_vsftpd_data_tls(blog, 2)
            glog = g.log()
            assert re.search(r'(?i)backend TLS', glog), glog[-2000:]
    return fn


def check_vsftpd_data_tls(blog, n):
    """vsftpd's debug_ssl log: n protected data connections, all resumed."""
    data = re.findall(r'\[anonymous\] DEBUG: Client "[^"]*", "SSL version: (TLSv[\d.]+), '
                      r'[^"]*?(not reused|reused)', blog)
    T.diag('vsftpd data connections: %s' % data)
    assert len(data) >= n, 'vsftpd saw %d protected data connections, want %d' % (len(data), n)
    assert all(x[1] == 'reused' for x in data), data
    assert 'No SSL session reuse' not in blog, 'vsftpd: data connection without session reuse'


def c04_both_vsftpd():
    need('vs')
    with gate(VS, **tls_site(**btls_site())) as g:
        curl_get(FTPS + [url(g, 'big.bin', user='')], L('c04.bin'), BIG_SHA)
        curl_put(FTPS + [url(g, 'up/c04.bin', user='')], os.path.join(VS.up, 'c04.bin'), BIG_MIB)
        if LFTP:
            mark = g.log_mark()
            err = lftp_get(g.port, 'mid.bin', MID_SHA, passive=False, user='anonymous,a@b')
            cmds = re.findall(r'^---> (PORT|EPRT|PASV|EPSV)\b', err, re.M)
            assert cmds and set(cmds) <= {'PORT', 'EPRT'}, 'lftp data commands: %s' % cmds
            glog = g.log_since(mark)
            assert re.search(r'transfer RETR mid\.bin: 226', glog), glog[-2000:]
            T.diag('lftp active mode: data commands %s' % cmds)
        else:
            T.diag('lftp not installed: lftp part skipped')
        # one transfer per session here (several per session: a case of its own)
        f = tls_login(g.port, user='anonymous', passwd='a@b')
        f.set_pasv(False)
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA, 'ftplib active download differs (%d bytes)' % n
        assert 'PORT' in ' '.join(f.sent), f.sent
        assert f.sendcmd('NOOP').startswith('200')
        f.quit()
        f = tls_login(g.port, user='anonymous', passwd='a@b')
        f.set_pasv(False)
        data = os.urandom(2 * MiB + 1)
        assert f.storbinary('STOR up/c04f.bin', io.BytesIO(data)).startswith('226')
        with open(os.path.join(VS.up, 'c04f.bin'), 'rb') as fh:
            assert fh.read() == data, 'ftplib active upload differs'
        os.unlink(os.path.join(VS.up, 'c04f.bin'))
        f.quit()


def c04b_many_per_session():
    """Several protected data connections in one session: each must resume
    the backend control session (vsftpd require_ssl_reuse=YES), with a plain
    and with a TLS client, client passive and active."""
    need('vs')
    mark = len(VS.log())
    problems = []
    with gate(VS, **tls_site(**btls_site())) as g:
        for kind in ('plain client, PASV', 'TLS client, PASV', 'TLS client, PORT'):
            done = []
            f = None
            try:
                if kind.startswith('plain'):
                    f = T.ftp_login(g.port, user='anonymous', passwd='a@b')
                else:
                    f = tls_login(g.port, user='anonymous', passwd='a@b')
                f.set_pasv(kind.endswith('PASV'))
                for i in range(3):
                    sha, n = T.sha_retr(f, 'mid.bin')
                    assert sha == MID_SHA, 'RETR %d differs' % (i + 1)
                    done.append('RETR')
                data = os.urandom(MiB)
                assert f.storbinary('STOR up/c04b.bin', io.BytesIO(data)).startswith('226')
                done.append('STOR')
                with open(os.path.join(VS.up, 'c04b.bin'), 'rb') as fh:
                    assert fh.read() == data, 'STOR content differs'
                os.unlink(os.path.join(VS.up, 'c04b.bin'))
                assert f.sendcmd('NOOP').startswith('200')
                f.quit()
            except Exception as e:  # noqa
                problems.append('%s: transfers done before the failure: %s; failure: %r;'
                                ' last replies: %s' % (kind, done, e, f.replies[-2:] if f else []))
                if f:
                    f.close()
    assert not problems, '\n'.join(problems)
    check_vsftpd_data_tls(mlog(VS, mark), 12)


def c05_backend_active(b):
    def fn():
        mark = len(b.srv.log())
        with gate(b.srv, **tls_site(**btls_site(backend_data_mode='active'))) as g:
            for client_pasv in (True, False):   # one transfer per session
                f = tls_login(g.port, user=b.user, passwd=b.passwd)
                f.set_pasv(client_pasv)
                sha, n = T.sha_retr(f, 'mid.bin')
                assert sha == MID_SHA, 'client %s: download differs (%d bytes)' % (
                    'PASV' if client_pasv else 'PORT', n)
                assert f.sendcmd('NOOP').startswith('200')
                f.quit()
        blog = mlog(b.srv, mark)
        cmd = r'(?:<- |FTP command: Client "[^"]*", ")'   # pyftpdlib / vsftpd logs
        assert re.search(cmd + r'(PORT|EPRT) ', blog), 'backend saw no PORT/EPRT:\n' + blog[-2000:]
        assert not re.search(cmd + r'(PASV|EPSV)\b', blog), \
            'backend saw PASV/EPSV with backend_data_mode=active'
    return fn


def c06_backend_verify():
    need('tsrv')
    with gate(TSRV, **btls_site(backend_ca=C['other_ca'])) as g:
        mark = g.log_mark()
        with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
            data, how = T.recv_until_closed(s, 15)
        text = data.decode('utf-8', 'replace')
        assert text.startswith('421'), 'expected 421, got %r' % text
        assert how in ('eof', 'reset'), 'not closed after 421 (%s)' % how
        m = g.wait_log(r'(?i)certificate verify failed', mark)
        assert m, 'log does not mention the verify failure:\n' + g.log_since(mark)[-2000:]
        assert g.alive()
    with gate(TSRV, **btls_site(backend_ca=C['other_ca'], backend_tls_verify='no')) as g:
        f = T.ftp_login(g.port)
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA
        f.quit()


def wrap(ctl):
    assert not ctl.buf, 'bytes after 234 before the handshake: %r' % bytes(ctl.buf)
    ctl.sock = CTX.wrap_socket(ctl.sock, server_hostname='127.0.0.1')


def c07_require_tls():
    mark = len(SRV.log())
    with gate(SRV, **tls_site(require_tls='yes')) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply().startswith(b'220')
            r = c.cmd('USER x7')
            assert r.startswith(b'530 TLS required: use AUTH TLS first.'), r
            r = c.cmd('PASS y7')
            assert r.startswith(b'530'), r
            assert c.cmd('AUTH TLS').startswith(b'234 AUTH TLS successful.')
            wrap(c)
            r = c.cmd('USER u')
            assert r.startswith(b'331'), r
            r = c.cmd('PASS p')
            assert r.startswith(b'230'), r
            assert c.cmd('QUIT').startswith(b'221')
    assert 'x7' not in mlog(SRV, mark), 'USER before AUTH reached the backend'


def c08_injection():
    mark_b = len(SRV.log())
    with gate(SRV, **tls_site()) as g:
        mark = g.log_mark()
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply().startswith(b'220')
            c.send(b'AUTH TLS\r\nUSER injected\r\n')
            r = c.reply()
            assert r.startswith(b'234'), r
            extra = c.pending(0.3)
            assert extra == b'', 'plaintext after 234: %r' % extra
            wrap(c)
            r = c.cmd('NOOP')
            assert r.startswith(b'200'), 'first reply inside TLS: %r (injected USER answered?)' % r
            extra = c.pending(0.5)
            assert extra == b'', 'extra replies inside TLS: %r' % extra
            assert c.cmd('USER u').startswith(b'331')
            assert c.cmd('PASS p').startswith(b'230')
            assert c.cmd('PWD').startswith(b'257')
        m = g.wait_log(r'dropped (\d+) bytes of plaintext sent after AUTH', mark)
        assert m, 'no "dropped plaintext" log line:\n' + g.log_since(mark)[-2000:]
        assert int(m.group(1)) == len(b'USER injected\r\n'), m.group(0)
    assert 'injected' not in mlog(SRV, mark_b), 'the injected USER reached the backend'


def stock_attempt(port):
    """Stock FTP_TLS (no session resumption on data): (ftp, bytes, outcome)."""
    f = tls_login(port, cls=T.RecordingFTP_TLS)
    buf = bytearray()
    try:
        f.retrbinary('RETR mid.bin', buf.extend)
        outcome = ('ok', f.replies[-1])
    except (ftplib.error_temp, ftplib.error_perm) as e:
        outcome = ('reply', str(e))
    except (ssl.SSLError, OSError, EOFError) as e:
        outcome = ('tls', repr(e))
    return f, bytes(buf), outcome


def c09_session_reuse():
    with gate(SRV, **tls_site()) as g:
        mark = g.log_mark()
        f, data, outcome = stock_attempt(g.port)
        T.diag('stock FTP_TLS, reuse required: %s, %d bytes' % (outcome, len(data)))
        assert outcome[0] != 'ok', 'transfer without session reuse succeeded: %r' % (outcome,)
        assert len(data) < MID_MIB * MiB, 'all data delivered without session reuse'
        if outcome[0] == 'tls':
            f.sock.settimeout(10)
            final = f.getmultiline()
            T.diag('final reply after the TLS failure: %r' % final)
            assert final[:3] == '522', 'transfer reply %r, want 522' % final
        else:
            assert outcome[1][:3] == '522', outcome
        r = f.sendcmd('NOOP')
        assert r.startswith('200'), 'control connection out of step: NOOP -> %r' % r
        f.quit()
        assert g.wait_log(r'(?i)did not resume', mark), g.log_since(mark)[-2000:]
        f = tls_login(g.port)
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA, 'reuse subclass download differs'
        f.quit()
    with gate(SRV, **tls_site(tls_require_session_reuse='no')) as g:
        f, data, outcome = stock_attempt(g.port)
        assert outcome[0] == 'ok' and T.sha256_bytes(data) == MID_SHA, \
            'stock FTP_TLS with tls_require_session_reuse=no: %r, %d bytes' % (outcome, len(data))
        f.quit()


def c10_require_data_tls():
    with gate(SRV, **tls_site(require_data_tls='yes')) as g:
        f = tls_login(g.port, prot=False)
        assert f.sendcmd('PBSZ 0').startswith('200')
        r = expect_fail_reply(lambda: f.sendcmd('PROT C'), 'PROT C')
        assert r.startswith('534'), r
        r = expect_fail_reply(lambda: f.retrbinary('RETR mid.bin', lambda b: None),
                              'RETR without PROT P')
        assert r.startswith('521 Data connections must be protected: use PROT P.'), r
        assert f.sendcmd('NOOP').startswith('200'), f.replies[-1]
        assert f.prot_p().startswith('200 Protection level set to Private.')
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA
        f.quit()
        # a plaintext client cannot transfer at all
        p = T.ftp_login(g.port)
        r = expect_fail_reply(lambda: p.retrbinary('RETR mid.bin', lambda b: None),
                              'plaintext RETR')
        assert r.startswith('521'), r
        assert p.sendcmd('NOOP').startswith('200')
        p.quit()


def c10b_prot_after_pasv():
    """PASV before PBSZ/PROT P: the data pair prepared in clear must not
    carry the file in clear once PROT P is in force (issue 10.3)."""
    with gate(SRV, **tls_site(require_data_tls='yes')) as g:
        f = tls_login(g.port, prot=False)
        assert f.sendcmd('TYPE I').startswith('200'), f.replies[-1]
        _, port = ftplib.parse227(f.sendcmd('PASV'))
        d = socket.create_connection(('127.0.0.1', port), timeout=10)
        assert f.sendcmd('PBSZ 0').startswith('200'), f.replies[-1]
        assert f.sendcmd('PROT P').startswith('200'), f.replies[-1]
        f.putcmd('RETR mid.bin')
        # A protected data connection waits for the client's ClientHello;
        # a clear one starts sending the file at once.
        d.settimeout(3)
        try:
            early = d.recv(65536)
        except socket.timeout:
            early = b''
        assert not early, 'the proxy sent %d bytes in clear after PROT P: %r' % (
            len(early), early[:16])
        d.settimeout(20)
        s = CTX.wrap_socket(d, server_hostname='127.0.0.1', session=f.sock.session)
        r = f.getresp()
        assert r.startswith('1'), r
        data = bytearray()
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            data += b
        s.close()
        assert T.sha256_bytes(bytes(data)) == MID_SHA, '%d bytes' % len(data)
        assert f.voidresp().startswith('226'), f.replies[-1]
        f.quit()


def c11_feat_ccc():
    with gate(SRV, **tls_site()) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply().startswith(b'220')
            feat = c.cmd('FEAT').decode('latin-1')
            for item in (' AUTH TLS', ' PBSZ', ' PROT'):
                assert re.search(r'(?m)^%s\r?$' % item, feat), 'FEAT lacks %r:\n%s' % (item, feat)
            r = c.cmd('PBSZ 0')
            assert r.startswith(b'503'), 'PBSZ before AUTH: %r' % r
            assert c.cmd('AUTH TLS').startswith(b'234')
            wrap(c)
            r = c.cmd('CCC')
            assert r.startswith(b'534'), r
            assert c.cmd('NOOP').startswith(b'200'), 'control connection unusable after CCC'
            assert c.cmd('PBSZ 0') == b'200 PBSZ=0\r\n'
            assert c.cmd('PROT P') == b'200 Protection level set to Private.\r\n'
            r = c.cmd('AUTH TLS')
            assert r.startswith(b'503'), 'second AUTH: %r' % r
            assert c.cmd('USER u').startswith(b'331')
            assert c.cmd('PASS p').startswith(b'230')
            assert c.cmd('QUIT').startswith(b'221')
    # tls = off: a TLS-capable backend's AUTH/PBSZ/PROT are not advertised
    if not TSRV:
        T.diag('tls=off part skipped: ' + TLS_WHY)
        return
    with gate(TSRV) as g:
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply().startswith(b'220')
            feat = c.cmd('FEAT').decode('latin-1')
            assert feat.startswith('211'), feat
            assert not re.search(r'(?m)^ (AUTH|PBSZ|PROT)', feat), 'tls=off FEAT:\n' + feat
            r = c.cmd('AUTH TLS')
            assert r.startswith(b'502'), r
            assert c.cmd('NOOP').startswith(b'200')


def c12_bad_config():
    d = T.tmpdir('tls-badconf-')
    port = T.free_port()
    cases = [
        ('good', C['chain'], C['key'], None),
        ('missing cert', os.path.join(d, 'no-such-cert.pem'), C['key'],
         r'tls_cert: .*no-such-cert\.pem'),
        ('garbage cert', C['garbage'], C['key'], r'tls_cert: .*garbage\.pem'),
        ('missing key', C['cert'], os.path.join(d, 'no-such-key.pem'),
         r'tls_key: .*no-such-key\.pem'),
        ('garbage key', C['cert'], C['garbage'], r'tls_key: .*garbage\.pem'),
        ('key not matching', C['cert'], C['other_key'],
         r'tls_key: the key does not match the certificate'),
    ]
    problems = []
    for i, (what, cert, key, pat) in enumerate(cases):
        path = os.path.join(d, 'c%d.ini' % i)
        lines = ['[global]', 'log_level = info', '', '[site:t]',
                 'listen = 127.0.0.1:%d' % port, 'backend = %s' % SRV.addr(),
                 'tls = terminate', 'tls_cert = %s' % cert, 'tls_key = %s' % key]
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        r = T.run_ftpgate(['-t', '-c', path])
        out = r.stdout + r.stderr
        if pat is None:
            if r.returncode != 0:
                problems.append('%s: exit %d: %s' % (what, r.returncode, out.strip()))
            continue
        line = 8 if pat.startswith('tls_cert') else 9
        full = re.escape('%s:%d: ' % (path, line)) + pat
        if r.returncode != 1 or not re.search(full, out):
            problems.append('%s: exit %d, want 1 and /%s/; output: %s'
                            % (what, r.returncode, full, out.strip()))
        else:
            T.diag('%s: %s' % (what, out.strip().splitlines()[-1]))
    assert not problems, '\n'.join(problems)


def c13_tls13():
    if VS:
        b, note = VS, 'vsftpd'
    else:
        need('tsrv')
        b, note = None, 'pyftpdlib (TLS 1.3 only)'
    own = None
    if b is None:
        own = b = T.PyftpdTLSServer(ROOT, C['cert'], C['key'], tls13_only=True)
    try:
        mark = len(b.log())
        user = '' if b is VS else 'u:p@'
        root = VS.root if b is VS else ROOT
        with gate(b, **tls_site(tls_min_version='1.3', **btls_site())) as g:
            # a client limited to TLS 1.2 is refused
            f = T.RecordingFTP_TLS(context=T.tls_client_context(
                C['ca'], max_version=ssl.TLSVersion.TLSv1_2))
            f.connect('127.0.0.1', g.port, timeout=20)
            try:
                f.auth()
                raise AssertionError('TLS 1.2 client accepted with tls_min_version=1.3 (%s)'
                                     % f.sock.version())
            except (ssl.SSLError, OSError):
                pass
            f.close()
            err = curl_put(FTPS + ['--tlsv1.3', url(g, 'up/c13.bin', user=user)],
                           os.path.join(root, 'up', 'c13.bin'), BIG_MIB)
            assert 'SSL connection using TLSv1.3' in err, err[-2000:]
            f = tls_login(g.port, user='anonymous' if b is VS else 'u',
                          passwd='a@b' if b is VS else 'p')
            assert f.sock.version() == 'TLSv1.3', f.sock.version()
            f.quit()
            blog = b.log()[mark:]
            if b is VS:
                vers = set(re.findall(r'SSL version: (TLSv[\d.]+)', blog))
                assert vers == {'TLSv1.3'}, 'backend leg versions: %s' % vers
            glog = g.log()
            bl = set(re.findall(r'backend TLS: (TLSv[\d.]+)', glog))
            cl = set(re.findall(r'client TLS: (TLSv[\d.]+)', glog))
            T.diag('%s: proxy log: client TLS %s, backend TLS %s' % (note, cl, bl))
            if bl:
                assert bl == {'TLSv1.3'}, bl
            if cl:
                assert cl == {'TLSv1.3'}, cl
    finally:
        if own:
            own.stop()


def c14_bad_handshake():
    with gate(SRV, **tls_site(tls='implicit')) as g:
        a = T.ImplicitFTP_TLS(context=CTX)
        a.connect('127.0.0.1', g.port, timeout=20)
        a.login('u', 'p')
        a.prot_p()
        mark = g.log_mark()
        with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
            port = s.getsockname()[1]
            s.sendall(b'GET / HTTP/1.0\r\nHost: x\r\n\r\n')
            data, how = T.recv_until_closed(s, 10)
        assert how in ('eof', 'reset'), 'garbage client not disconnected (%s)' % how
        assert not data.startswith(b'220'), 'plaintext greeting on implicit port: %r' % data
        m = g.wait_log(r'[^\n]*127\.0\.0\.1:%d\b[^\n]*' % port
                       + r'(?:wrong version|http request|unknown protocol|packet length|'
                         r'record layer|unsupported protocol)[^\n]*', mark)
        assert m, 'no OpenSSL reason with the client address in the log:\n' \
            + g.log_since(mark)[-2000:]
        T.diag('log: %s' % m.group(0).strip())
        assert g.alive(), 'ftpgate died'
        # the established session and a new one still work
        assert a.sendcmd('NOOP').startswith('200')
        sha, n = T.sha_retr(a, 'mid.bin')
        assert sha == MID_SHA
        a.quit()
        curl_get(['--cacert', C['ca'], url(g, 'mid.bin', scheme='ftps')], L('c14.bin'), MID_SHA)


def c15_226_before_close():
    """Issue 17.6 with TLS: a client that reads the whole download (up to
    the proxy's close_notify) and waits for 226 before it closes its data
    connection gets the 226; offload and (with vsftpd) both legs."""
    sites = [('offload', SRV, 'u', 'p', tls_site())]
    if VS:
        sites.append(('both legs', VS, 'anonymous', 'a@b', tls_site(**btls_site())))
    for name, srv, user, passwd, site in sites:
        with gate(srv, **site) as g:
            f = tls_login(g.port, user=user, passwd=passwd)
            assert f.sendcmd('TYPE I').startswith('200')
            for _ in range(2):
                conn = f.transfercmd('RETR mid.bin')
                try:
                    data, how = T.recv_until_closed(conn, 20)
                    assert how == 'eof', '%s: data ended by %s after %d bytes' % (
                        name, how, len(data))
                    f.sock.settimeout(10)
                    r = f.voidresp()   # the data connection is still open
                    assert r.startswith('226'), '%s: %r' % (name, r)
                finally:
                    conn.close()
                assert T.sha256_bytes(data) == MID_SHA, '%s: data differs (%d bytes)' % (
                    name, len(data))
            assert f.sendcmd('NOOP').startswith('200')
            f.quit()


# --------------------------------------------------------------------------

def maybe(name, fn, timeout, *req):
    for r in req:
        if r == 'tsrv' and not TSRV:
            return t.skip(name, TLS_WHY)
        if r == 'vs' and not VS:
            return t.skip(name, VS_WHY)
        if r == 'lftp' and not LFTP:
            return t.skip(name, 'lftp not installed')
    t.case(name, fn, timeout)


T0 = time.monotonic()
maybe('TLS offload (tls=terminate, plain backend): curl 64 MiB down/up, ftplib PASV/EPSV, lftp',
      c01_offload, 60)
maybe('tls=implicit: curl ftps:// and ftplib; FEAT has PBSZ/PROT', c02_implicit, 30)
maybe('plain client, backend_tls=on (verified) to pyftpdlib TLS: curl 64 MiB down/up',
      c03_plain_client_tls_backend(BK_PY), 60, 'tsrv')
maybe('plain client, backend_tls=on (verified) to vsftpd require_ssl_reuse: curl 64 MiB down/up',
      c03_plain_client_tls_backend(BK_VS), 60, 'vs')
maybe('TLS both sides with vsftpd: curl 64 MiB down/up, lftp and ftplib active mode',
      c04_both_vsftpd, 60, 'vs')
maybe('several protected data connections per session against vsftpd (require_ssl_reuse)',
      c04b_many_per_session, 30, 'vs')
maybe('backend_data_mode=active, TLS both sides, pyftpdlib TLS',
      c05_backend_active(BK_PY), 30, 'tsrv')
maybe('backend_data_mode=active, TLS both sides, vsftpd',
      c05_backend_active(BK_VS), 30, 'vs')
maybe('backend verification: wrong CA -> 421 + log; backend_tls_verify=no works',
      c06_backend_verify, 30, 'tsrv')
maybe('require_tls: USER before AUTH -> 530, after AUTH TLS login works', c07_require_tls, 20)
maybe('STARTTLS injection: plaintext after AUTH TLS dropped, not executed', c08_injection, 20)
maybe('tls_require_session_reuse: stock FTP_TLS fails, resuming client works; =no allows',
      c09_session_reuse, 30)
maybe('require_data_tls: PROT C -> 534, transfer without PROT P -> 521', c10_require_data_tls, 20)
maybe('PASV before PROT P: the prepared data connection is protected too (no clear file)',
      c10b_prot_after_pasv, 30)
maybe('FEAT lists AUTH TLS/PBSZ/PROT, CCC -> 534; tls=off: not advertised, AUTH -> 502',
      c11_feat_ccc, 20)
maybe('bad tls_cert/tls_key: ftpgate -t exits 1 with FILE:LINE: key: reason', c12_bad_config, 30)
maybe('tls_min_version=1.3 both legs: curl 64 MiB upload sha256; TLS 1.2 client refused',
      c13_tls13, 60)
maybe('failed handshake on the implicit port ends only that session, logged', c14_bad_handshake, 30)
maybe('client waits for 226 before closing its TLS data connection (offload, both legs)',
      c15_226_before_close, 60)
T.diag('total %.1f s' % (time.monotonic() - T0))
for _s in (VS, TSRV, SRV):
    if _s:
        _s.stop()
t.done()
