#!/usr/bin/python3
"""ftpgate active mode (PORT/EPRT from the client, backend_data_mode
passive|active|client toward the backend), bounce and privileged-port
checks, EPSV ALL, FEAT rewriting; real clients (curl, ftplib, lftp) against
a pyftpdlib backend, loopback only.  TAP output."""

import ftplib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
FILE_MIB = 4
MODES = ('passive', 'active', 'client')
CLIENT_MODES = ('PASV', 'EPSV', 'PORT', 'EPRT')
LFTP = shutil.which('lftp') or '/usr/bin/lftp'

t = T.start_tap(('curl', T.CURL))

# --------------------------------------------------------------------------
# fixture: backend root, pyftpdlib, one ftpgate per backend_data_mode

ROOT, LOCAL, LISTDIR = T.backend_tree((('a.txt', 10), ('b.bin', 4096), ('c d.txt', 7)))
FILE = os.path.join(ROOT, 'file4.bin')
FILE_SHA = T.make_random_file(FILE, FILE_MIB)
UP_SRC = os.path.join(LOCAL, 'up-src.bin')
UP_SHA = T.make_random_file(UP_SRC, FILE_MIB)
with open(UP_SRC, 'rb') as _f:
    UP_DATA = _f.read()

try:
    SRV = T.PyftpdServer(ROOT)
    GATES = {m: T.Ftpgate(T.gate_config(SRV, backend_data_mode=m)) for m in MODES}
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])

G = GATES['client']


def url(path, gate=None, host='127.0.0.1'):
    return 'ftp://u:p@%s:%d/%s' % (host, (gate or G).port, path)


class ModeFTP(T.RecordingFTP):
    """ftplib client forced to one data mode: PASV, EPSV, PORT or EPRT
    (whatever the address family).  Data listeners bind to the control
    connection's local address (loopback), never to the wildcard.
    .data_peers: peer address of every data connection."""

    def __init__(self, mode, *a, **kw):
        self.mode = mode
        self.data_peers = []
        super().__init__(*a, **kw)
        self.set_pasv(mode in ('PASV', 'EPSV'))

    def makepasv(self):
        if self.mode == 'PASV':
            _untrusted, port = ftplib.parse227(self.sendcmd('PASV'))
            return self.sock.getpeername()[0], port
        return ftplib.parse229(self.sendcmd('EPSV'), self.sock.getpeername())

    def makeport(self):
        host = self.sock.getsockname()[0]
        sock = socket.create_server((host, 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        if self.mode == 'PORT':
            self.sendport(host, port)
        else:
            self.sendeprt(host, port)
        sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else 20)
        return sock

    def ntransfercmd(self, cmd, rest=None):
        conn, size = super().ntransfercmd(cmd, rest)
        self.data_peers.append(conn.getpeername()[0])
        return conn, size


def mode_login(mode, gate=None, host='127.0.0.1', source=None):
    f = ModeFTP(mode)
    f.connect(host, (gate or G).port, timeout=20,
              source_address=(source, 0) if source else None)
    f.login('u', 'p')
    return f


def rr(ftp, line):
    """Send a command, return the reply text whatever its code."""
    ftp.putcmd(line)
    return ftp.getmultiline()


def srv_mark(srv=None):
    return os.path.getsize((srv or SRV).log_path)


def srv_log_since(mark, srv=None):
    time.sleep(0.2)   # let pyftpdlib write its last lines
    with open((srv or SRV).log_path, 'rb') as f:
        f.seek(mark)
        return f.read().decode('utf-8', 'replace')


def backend_cmds(blog):
    """How often the backend received each data-setup command."""
    return {c: len(re.findall(r'<- %s\b' % c, blog)) for c in ('PORT', 'EPRT', 'PASV', 'EPSV')}


def check_backend_mode(blog, glog, active, min_setups, family='PORT'):
    n = backend_cmds(blog)
    T.diag('backend saw %s' % n)
    if active:
        assert n[family] >= min_setups and n['PASV'] == 0 and n['EPSV'] == 0, \
            'backend should have been sent %s only: %s\n%s' % (family, n, blog[-3000:])
        assert 'data: backend port' not in glog, \
            'proxy connected to a backend passive port in active mode'
        # the backend really connected (pyftpdlib's own words)
        assert len(re.findall(r'-> 200 Active data connection established', blog)) >= min_setups, \
            blog[-3000:]
    else:
        assert n['PORT'] == 0 and n['EPRT'] == 0 and n['EPSV'] + n['PASV'] >= min_setups, \
            'backend should have been asked for passive mode only: %s' % n
        assert len(re.findall(r'data: backend port \d+', glog)) >= min_setups, \
            'no "data: backend port" in the ftpgate log'


CURL_ARGS = {
    'PASV': ['--disable-epsv', '--no-ftp-skip-pasv-ip'],
    'EPSV': [],
    'PORT': ['--ftp-port', '127.0.0.1', '--disable-eprt'],
    'EPRT': ['--ftp-port', '127.0.0.1'],
}
CURL_REPLY = {'PASV': r'227 ', 'EPSV': r'229 ',
              'PORT': r'200 PORT command successful\.', 'EPRT': r'200 EPRT command successful\.'}


def curl_v(args):
    r = T.curl(['-v'] + args, timeout=60)
    return r.stderr.decode('utf-8', 'replace')


def check_curl_dialog(err, cmode):
    assert re.search(r'^> %s\b' % cmode, err, re.M), 'curl did not send %s:\n%s' % (cmode, err)
    assert re.search(r'^< %s' % CURL_REPLY[cmode], err, re.M), \
        'no expected reply to %s:\n%s' % (cmode, err)


# --------------------------------------------------------------------------
# 1. every backend_data_mode x client data mode

def combo(bdm, cmode):
    def fn():
        g = GATES[bdm]
        gmark = g.log_mark()
        smark = srv_mark()
        tag = '%s-%s' % (bdm, cmode)
        # curl download + upload
        out = os.path.join(LOCAL, tag + '.bin')
        err = curl_v(CURL_ARGS[cmode] + ['-o', out, url('file4.bin', g)])
        check_curl_dialog(err, cmode)
        assert T.sha256_file(out) == FILE_SHA, 'curl download: sha256 mismatch'
        os.unlink(out)
        dst = os.path.join(ROOT, 'up', tag + '.bin')
        err = curl_v(CURL_ARGS[cmode] + ['-T', UP_SRC, url('up/%s.bin' % tag, g)])
        check_curl_dialog(err, cmode)
        assert T.sha256_file(dst) == UP_SHA, 'curl upload: sha256 mismatch'
        os.unlink(dst)
        # ftplib download, upload, LIST
        f = mode_login(cmode, g)
        sha, n = T.sha_retr(f, 'file4.bin')
        assert n == FILE_MIB * MiB and sha == FILE_SHA, 'ftplib RETR: %d bytes, sha mismatch' % n
        r = f.storbinary('STOR up/%s-f.bin' % tag, io.BytesIO(UP_DATA))
        assert r.startswith('226'), r
        with open(os.path.join(ROOT, 'up', tag + '-f.bin'), 'rb') as fh:
            assert fh.read() == UP_DATA, 'ftplib STOR: content differs'
        os.unlink(os.path.join(ROOT, 'up', tag + '-f.bin'))
        lines = []
        f.retrlines('LIST list', lines.append)
        list_bytes = sum(len(l) + 2 for l in lines)
        names = sorted(l.split(None, 8)[8] for l in lines)
        assert names == sorted(os.listdir(LISTDIR)), lines
        if cmode in ('PORT', 'EPRT'):
            setup = [c for c in f.sent if c.startswith(cmode + ' ')]
            assert len(setup) == 3, f.sent
            for c in setup:
                r = f.reply_to(c)
                assert r == '200 %s command successful.' % cmode, (c, r)
            # the proxy connects from the address the client connected to
            assert f.data_peers == ['127.0.0.1'] * 3, f.data_peers
        assert f.sendcmd('NOOP').startswith('200')
        f.quit()
        # what the backend was asked (the end: line comes once the proxy saw the QUIT)
        end_pat = (r'end: client 127\.0\.0\.1:\d+ backend 127\.0\.0\.1:%d user "u" '
                   r'data up %d down %d bytes' % (SRV.port, FILE_MIB * MiB,
                                                  FILE_MIB * MiB + list_bytes))
        g.wait_log(end_pat, gmark, 5)
        glog = g.log_since(gmark)
        blog = srv_log_since(smark)
        active = bdm == 'active' or (bdm == 'client' and cmode in ('PORT', 'EPRT'))
        check_backend_mode(blog, glog, active, 5)
        for pat in (r'transfer RETR file4\.bin: 226, [\d.]+ s, data up 0 down %d' % (FILE_MIB * MiB),
                    r'transfer STOR (?:up/)?%s\.bin: 226, [\d.]+ s, data up %d down 0'
                    % (re.escape(tag), FILE_MIB * MiB),
                    r'transfer LIST list: 226, '):
            assert re.search(pat, glog), 'no log line matching %r' % pat
        assert re.search(end_pat, glog), 'no end: line with the byte counts:\n' + glog[-3000:]
    return fn


def c_source_address():
    """PORT to a proxy listening on 127.0.0.5: the proxy's data connection
    comes from 127.0.0.5, the address the client connected to."""
    g = T.Ftpgate(T.gate_config(SRV, listen_host='127.0.0.5', backend_data_mode='client'))
    try:
        for cmode in ('PORT', 'EPRT'):
            f = mode_login(cmode, g, host='127.0.0.5', source='127.0.0.1')
            sha, n = T.sha_retr(f, 'file4.bin')
            assert sha == FILE_SHA, 'sha256 mismatch'
            assert f.data_peers == ['127.0.0.5'], \
                '%s: data connection came from %s, want 127.0.0.5' % (cmode, f.data_peers)
            f.quit()
    finally:
        g.stop()


def c_port_closed():
    """PORT to a port where nothing listens: the client gets a final 4xx
    within data_timeout (+ slack), and the session goes on.  Whether the
    backend already holds the transfer command when the proxy's connect to
    the client fails is a race, so each mode is tried up to 4 times; all
    modes are tried and every failure is reported."""
    problems = []
    for bdm in MODES:
        g = T.Ftpgate(T.gate_config(SRV, backend_data_mode=bdm, data_timeout=3))
        try:
            f = mode_login('PORT', g)
            for attempt in range(4):
                mark = g.log_mark()
                p = T.closed_port()
                f.sock.settimeout(20)
                r = rr(f, 'PORT 127,0,0,1,%d,%d' % (p >> 8, p & 255))
                assert r == '200 PORT command successful.', r
                assert f.sendcmd('TYPE I').startswith('200')
                t0 = time.monotonic()
                f.sock.settimeout(10)
                replies = []
                try:
                    replies.append(rr(f, 'RETR file4.bin'))
                    if replies[0][:1] == '1':
                        replies.append(f.getmultiline())
                except (socket.timeout, OSError, EOFError) as e:
                    replies.append('<no reply within %.1f s: %r>' % (time.monotonic() - t0, e))
                T.diag('%s #%d: PORT to a closed port, RETR -> %r' % (bdm, attempt, replies))
                if replies[-1][:1] != '4':
                    lines = [l for l in g.log_since(mark).splitlines()][-6:]
                    problems.append('backend_data_mode=%s (attempt %d): RETR -> %r, want a '
                                    'final 4xx within data_timeout=3 s; ftpgate log:\n  %s'
                                    % (bdm, attempt, replies, '\n  '.join(lines)))
                    break
                f.sock.settimeout(20)
                assert f.sendcmd('NOOP').startswith('200'), 'out of step: %r' % f.replies[-1]
            else:
                sha, n = T.sha_retr(f, 'file4.bin')
                assert sha == FILE_SHA
                f.quit()
            f.close()
        finally:
            g.stop()
    assert not problems, '\n'.join(problems)


def holding_backend():
    """Fake backend that, like pyftpdlib, answers RETR with 150 and then
    waits for a usable data connection: if the one it has was closed before
    the transfer, it stays silent until ABOR (426 for RETR, then 226)."""
    payload = os.urandom(50000)

    def handler(c, fb):
        data = None
        c.send('220 holding fake ready\r\n')
        while True:
            line = c.readline()
            if line is None:
                return
            verb = line.split(' ')[0].upper()
            if verb in ('PORT', 'EPRT'):
                if verb == 'PORT':
                    n = [int(x) for x in line.split(' ', 1)[1].split(',')]
                    addr = ('%d.%d.%d.%d' % tuple(n[:4]), n[4] * 256 + n[5])
                else:
                    f = line.split(' ', 1)[1].split('|')
                    addr = (f[2], int(f[3]))
                data = socket.create_connection(addr, timeout=5)
                c.send('200 %s ok, connected\r\n' % verb)
            elif verb == 'RETR':
                c.send('150 Opening data connection.\r\n')
                closed = False
                if data is not None:
                    data.settimeout(1.0)
                    try:
                        closed = data.recv(1) == b''
                    except socket.timeout:
                        closed = False
                    except OSError:
                        closed = True
                if data is None or closed:
                    fb.events.append('retr-without-data')
                    continue        # wait for ABOR (or forever)
                data.sendall(payload)
                data.close()
                data = None
                c.send('226 Transfer complete.\r\n')
            elif verb == 'ABOR':
                fb.events.append('abor')
                c.send('426 Transfer aborted.\r\n226 ABOR successful.\r\n')
                if data is not None:
                    data.close()
                    data = None
            elif verb == 'USER':
                c.send('331 pass\r\n')
            elif verb == 'PASS':
                c.send('230 in\r\n')
            elif verb == 'QUIT':
                c.send('221 bye\r\n')
                return
            else:
                c.send('200 fake ok\r\n')
    fb = T.FakeBackend(handler)
    fb.payload = payload
    return fb


def c_port_closed_holding():
    """Deterministic form of the case above: backend_data_mode = active, so
    the transfer command always reaches the backend before the proxy's
    connect to the client's closed port fails; the backend then holds the
    RETR.  The client must still get a final 4xx (within data_timeout + 5 s)
    and the reply stream must stay in step."""
    fb = holding_backend()
    g = T.Ftpgate(T.gate_config(fb.addr(), backend_data_mode='active', data_timeout=3))
    f = None
    try:
        f = mode_login('PORT', g)
        p = T.closed_port()
        r = rr(f, 'PORT 127,0,0,1,%d,%d' % (p >> 8, p & 255))
        assert r == '200 PORT command successful.', r
        t0 = time.monotonic()
        f.sock.settimeout(8)
        replies = []
        try:
            replies.append(rr(f, 'RETR x'))
            if replies[0][:1] == '1':
                replies.append(f.getmultiline())
        except (socket.timeout, OSError, EOFError) as e:
            replies.append('<no reply within %.1f s: %r>' % (time.monotonic() - t0, e))
        T.diag('RETR -> %r; backend events %r' % (replies, fb.events))
        assert replies[-1][:1] == '4', \
            'want a final 4xx within data_timeout=3 s + 5 s, got %r' % replies
        f.sock.settimeout(10)
        r = f.sendcmd('NOOP')
        assert r == '200 fake ok', 'reply stream out of step: NOOP -> %r' % r
        # and a working transfer afterwards
        buf = bytearray()
        f.retrbinary('RETR y', buf.extend)
        assert bytes(buf) == fb.payload, 'transfer after the failure differs'
        f.quit()
    finally:
        if f is not None:
            f.close()
        g.stop()
        fb.stop()


# --------------------------------------------------------------------------
# 2. lftp

def lftp(script, timeout=60):
    home = T.tmpdir('lftp-home-')
    env = dict(os.environ, HOME=home, LFTP_HOME=home)
    r = subprocess.run([LFTP, '-d', '-c', script], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, env=env)
    return r


def lftp_case(passive):
    def fn():
        g = G
        out = os.path.join(LOCAL, 'lftp-%s.bin' % passive)
        mark = g.log_mark()
        sets = ('set ftp:passive-mode true; set ftp:fix-pasv-address false'
                if passive else 'set ftp:passive-mode false')
        script = ('%s; set net:max-retries 1; set net:timeout 10; '
                  'set net:reconnect-interval-base 1; set xfer:clobber on; '
                  'open -u u,p ftp://127.0.0.1:%d; get file4.bin -o %s' % (sets, g.port, out))
        r = lftp(script)
        err = r.stderr.decode('utf-8', 'replace')
        assert r.returncode == 0, 'lftp exit %d\n%s' % (r.returncode, err[-4000:])
        assert T.sha256_file(out) == FILE_SHA, 'lftp download: sha256 mismatch'
        os.unlink(out)
        glog = g.log_since(mark)
        cmds = re.findall(r'command (PASV|EPSV|PORT|EPRT)\b', glog)
        T.diag('lftp data commands seen by the proxy: %s' % cmds)
        if passive:
            assert cmds and set(cmds) <= {'PASV', 'EPSV'}, cmds
        else:
            assert cmds and set(cmds) <= {'PORT', 'EPRT'}, cmds
            assert re.search(r'<--- 200 (PORT|EPRT) command successful', err), err[-3000:]
        assert re.search(r'transfer RETR file4\.bin: 226', glog), glog[-3000:]
    return fn


# --------------------------------------------------------------------------
# 3. IPv6

def c_ipv6_client():
    for bdm in ('passive', 'active'):
        g = T.Ftpgate(T.gate_config(SRV, listen_host='::1', backend_data_mode=bdm))
        try:
            smark = srv_mark()
            gmark = g.log_mark()
            f = mode_login('EPRT', g, host='::1')
            sha, n = T.sha_retr(f, 'file4.bin')
            assert sha == FILE_SHA, 'EPRT download over IPv6: sha mismatch'
            eprt = [c for c in f.sent if c.startswith('EPRT ')]
            assert eprt and eprt[0].startswith('EPRT |2|::1|'), f.sent
            assert f.reply_to(eprt[0]) == '200 EPRT command successful.', f.replies
            assert f.data_peers == ['::1'], f.data_peers
            r = f.storbinary('STOR up/v6.bin', io.BytesIO(UP_DATA))
            assert r.startswith('226'), r
            with open(os.path.join(ROOT, 'up', 'v6.bin'), 'rb') as fh:
                assert fh.read() == UP_DATA, 'EPRT upload over IPv6 differs'
            os.unlink(os.path.join(ROOT, 'up', 'v6.bin'))
            # refused forms on an IPv6 control connection
            r = rr(f, 'PASV')
            assert r == '425 PASV is IPv4 only on this connection; use EPSV.', r
            r = rr(f, 'EPSV 1')
            assert r.startswith('522'), r
            r = rr(f, 'EPRT |1|127.0.0.1|40000|')
            assert r == '504 EPRT refused: the address must be your own.', r
            r = rr(f, 'PORT 127,0,0,1,156,64')
            assert r[:1] == '5', 'PORT with an IPv4 address from an IPv6 client: %r' % r
            r = rr(f, 'EPRT |2|::1|21|')
            assert r == '504 EPRT refused: ports below 1024 are not allowed.', r
            assert f.sendcmd('NOOP').startswith('200')
            f.quit()
            f = mode_login('EPSV', g, host='::1')
            r = rr(f, 'EPSV 2')
            assert r.startswith('229 '), r
            sha, n = T.sha_retr(f, 'file4.bin')
            assert sha == FILE_SHA, 'EPSV download over IPv6: sha mismatch'
            f.quit()
            blog = srv_log_since(smark)
            check_backend_mode(blog, g.log_since(gmark), bdm == 'active', 3)
        finally:
            g.stop()


def c_ipv6_backend():
    srv6 = T.PyftpdServer(ROOT, ipv6=True)
    try:
        for bdm in ('passive', 'active'):
            g = T.Ftpgate(T.gate_config(srv6, backend_data_mode=bdm))
            try:
                smark = srv_mark(srv6)
                gmark = g.log_mark()
                for cmode in ('PASV', 'PORT'):
                    f = mode_login(cmode, g)
                    sha, n = T.sha_retr(f, 'file4.bin')
                    assert sha == FILE_SHA, '%s/%s: sha mismatch' % (bdm, cmode)
                    r = f.storbinary('STOR up/v6b.bin', io.BytesIO(UP_DATA))
                    assert r.startswith('226'), r
                    with open(os.path.join(ROOT, 'up', 'v6b.bin'), 'rb') as fh:
                        assert fh.read() == UP_DATA, 'upload to the IPv6 backend differs'
                    os.unlink(os.path.join(ROOT, 'up', 'v6b.bin'))
                    f.quit()
                blog = srv_log_since(smark, srv6)
                check_backend_mode(blog, g.log_since(gmark), bdm == 'active', 4, family='EPRT')
                if bdm == 'active':
                    assert re.search(r'<- EPRT \|2\|::1\|\d+\|', blog), blog[-2000:]
            finally:
                g.stop()
    finally:
        srv6.stop()


# --------------------------------------------------------------------------
# 4. bounce

def c_bounce_refused():
    mark = G.log_mark()
    f = mode_login('PORT', G)
    r = rr(f, 'PORT 127,0,0,2,200,10')
    assert r == '504 PORT refused: the address must be your own.', r
    assert G.wait_log(r'refused PORT to 127\.0\.0\.2:51210\b', mark), \
        'no log line for the refused PORT:\n' + G.log_since(mark)
    r = rr(f, 'EPRT |1|127.0.0.2|51210|')
    assert r == '504 EPRT refused: the address must be your own.', r
    assert G.wait_log(r'refused EPRT to 127\.0\.0\.2:51210\b', mark), G.log_since(mark)
    # a refused PORT leaves no data connection behind
    r = rr(f, 'RETR file4.bin')
    assert r[:1] in '45', 'RETR after a refused PORT: %r' % r
    assert f.sendcmd('NOOP').startswith('200')
    sha, n = T.sha_retr(f, 'file4.bin')   # a proper PORT works
    assert sha == FILE_SHA
    f.quit()


def c_bounce_allowed():
    g = T.Ftpgate(T.gate_config(SRV, backend_data_mode='client', allow_foreign_address='yes'))
    lst = socket.socket()
    try:
        lst.bind(('127.0.0.2', 0))
        lst.listen(1)
        lst.settimeout(15)
        p = lst.getsockname()[1]
        f = mode_login('PORT', g)
        r = rr(f, 'PORT 127,0,0,2,%d,%d' % (p >> 8, p & 255))
        assert r == '200 PORT command successful.', r
        assert f.sendcmd('TYPE I').startswith('200')
        r = rr(f, 'RETR file4.bin')
        assert r[:1] == '1', r
        conn, peer = lst.accept()
        with conn:
            assert peer[0] == '127.0.0.1', 'proxy connected from %s' % (peer,)
            data, how = T.recv_until_closed(conn, 20)
        assert how == 'eof', how
        assert T.sha256_bytes(data) == FILE_SHA, 'data at 127.0.0.2 differs (%d bytes)' % len(data)
        r = f.getmultiline()
        assert r.startswith('226'), r
        # EPRT to a foreign address is accepted too
        r = rr(f, 'EPRT |1|127.0.0.2|%d|' % p)
        assert r == '200 EPRT command successful.', r
        r = rr(f, 'NLST list')
        assert r[:1] == '1', r
        conn, peer = lst.accept()
        with conn:
            data, how = T.recv_until_closed(conn, 20)
        assert sorted(os.path.basename(x) for x in data.decode().split('\r\n') if x) == \
            sorted(os.listdir(LISTDIR)), data
        assert f.getmultiline().startswith('226')
        # privileged ports stay refused
        r = rr(f, 'PORT 127,0,0,2,0,25')
        assert r == '504 PORT refused: ports below 1024 are not allowed.', r
        f.quit()
    finally:
        lst.close()
        g.stop()


# --------------------------------------------------------------------------
# 5. refused and malformed arguments, EPSV ALL

def c_bounce_never():
    """allow_foreign_address = yes still refuses 0.0.0.0, multicast, the
    backend's address and the proxy's own (issue 10.12).  The backend on
    127.0.0.3, the proxy on 127.0.0.4, the client from 127.0.0.1; loopback
    targets are allowed here only because the client is on loopback itself
    (the unit test covers a remote client)."""
    srv = T.PyftpdServer(ROOT, host='127.0.0.3')
    g = T.Ftpgate(T.gate_config(srv, listen_host='127.0.0.4', backend_data_mode='client',
                                allow_foreign_address='yes'))
    try:
        mark = g.log_mark()
        f = ModeFTP('PORT')
        f.connect('127.0.0.4', g.port, timeout=20, source_address=('127.0.0.1', 0))
        f.login('u', 'p')
        for cmd, why in (('PORT 0,0,0,0,200,1', 'the unspecified address'),
                         ('EPRT |1|0.0.0.0|51201|', 'the unspecified address'),
                         ('PORT 224,0,0,1,200,1', 'a multicast or broadcast address'),
                         ('PORT 255,255,255,255,200,1', 'a multicast or broadcast address'),
                         ('PORT 127,0,0,3,200,1', "the backend's address"),
                         ('EPRT |1|127.0.0.3|51201|', "the backend's address"),
                         ('PORT 127,0,0,4,200,1', "the proxy's own address"),
                         ('EPRT |1|127.0.0.4|51201|', "the proxy's own address")):
            r = rr(f, cmd)
            verb = cmd.split(' ')[0]
            assert r == '504 %s refused: not an address the proxy connects to.' % verb, \
                '%s: %r' % (cmd, r)
            assert g.wait_log(r'refused %s to \S+: %s' % (verb, re.escape(why)), mark), \
                'no log line for %s:\n%s' % (cmd, g.log_since(mark)[-2000:])
            mark = g.log_mark()
        # the client's own address and a third (loopback) host still work
        assert rr(f, 'PORT 127,0,0,1,200,1') == '200 PORT command successful.'
        assert rr(f, 'PORT 127,0,0,2,200,1') == '200 PORT command successful.'
        f.quit()
    finally:
        g.stop()
        srv.stop()


def c_refusals():
    f = mode_login('EPSV', G)
    exact = [
        ('PORT 127,0,0,1,0,21', '504 PORT refused: ports below 1024 are not allowed.'),
        ('PORT 127,0,0,1,3,255', '504 PORT refused: ports below 1024 are not allowed.'),
        ('EPRT |1|127.0.0.1|21|', '504 EPRT refused: ports below 1024 are not allowed.'),
        ('PORT 1,2,3', '501 Syntax error in PORT argument.'),
        ('PORT', '501 Syntax error in PORT argument.'),
        ('PORT 127,0,0,1,256,1', '501 Syntax error in PORT argument.'),
        ('PORT 127,0,0,1,4,x', '501 Syntax error in PORT argument.'),
        ('PORT 127,0,0,1,4,1,5', '501 Syntax error in PORT argument.'),
        ('EPRT |3|x|1|', '522 Network protocol not supported, use (1,2)'),
        ('EPRT |1|127.0.0.1|0|', '501 Syntax error in EPRT argument.'),
        ('EPRT |1|127.0.0.1|70000|', '501 Syntax error in EPRT argument.'),
        ('EPRT |1|::1|5000|', '501 Syntax error in EPRT argument.'),
        ('EPRT 127.0.0.1', '501 Syntax error in EPRT argument.'),
        ('AUTH TLS', None), ('AUTH SSL', None), ('PBSZ 0', None), ('PROT P', None),
        ('CCC', None), ('LPRT 4,4,127,0,0,1,2,156,64', None), ('LPSV', None),
    ]
    for cmd, want in exact:
        r = rr(f, cmd)
        if want is None:
            assert r.startswith('502 '), '%s -> %r, want 502' % (cmd, r)
        else:
            assert r == want, '%s -> %r, want %r' % (cmd, r, want)
    r = rr(f, 'EPSV 2')
    assert r.startswith('522'), 'EPSV 2 on IPv4 -> %r' % r
    r = rr(f, 'EPSV 1')
    assert r.startswith('229 '), 'EPSV 1 on IPv4 -> %r' % r
    assert f.sendcmd('NOOP').startswith('200'), 'out of step: %r' % f.replies[-1]
    # EPSV ALL: only EPSV from now on
    r = rr(f, 'EPSV ALL')
    assert r.startswith('200'), r
    for cmd in ('PASV', 'PORT 127,0,0,1,156,64', 'EPRT |1|127.0.0.1|40000|'):
        r = rr(f, cmd)
        verb = cmd.split()[0]
        assert r == '503 %s not allowed after EPSV ALL.' % verb, '%s -> %r' % (cmd, r)
    sha, n = T.sha_retr(f, 'file4.bin')
    assert sha == FILE_SHA, 'EPSV download after EPSV ALL differs'
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()


# --------------------------------------------------------------------------
# 6. FEAT

def fake_feat_backend(feat_reply):
    def handler(c, fb):
        c.send('220 fake ready\r\n')
        while True:
            line = c.readline()
            if line is None:
                return
            verb = line.split(' ')[0].upper()
            if verb == 'USER':
                c.send('331 pass please\r\n')
            elif verb == 'PASS':
                c.send('230 in\r\n')
            elif verb == 'FEAT':
                c.send(feat_reply)
            elif verb == 'QUIT':
                c.send('221 bye\r\n')
                return
            else:
                c.send('200 ok\r\n')
    return T.FakeBackend(handler)


def feat_lines(ftp):
    r = ftp.sendcmd('FEAT')
    return r.split('\n')


def c_feat():
    # what pyftpdlib itself offers
    d = T.ftp_login(SRV.port)
    direct = d.sendcmd('FEAT').split('\n')
    d.quit()
    backend_feats = [l for l in direct[1:-1] if l.strip().split(' ')[0] not in ('EPRT', 'EPSV')]
    f = T.ftp_login(G.port)
    lines = feat_lines(f)
    want = ['211-Features:', ' EPRT', ' EPSV'] + backend_feats + ['211 End']
    assert lines == want, 'FEAT through the proxy:\n%r\nwant\n%r' % (lines, want)
    assert not any(l.strip().upper().startswith(('AUTH', 'PBSZ', 'PROT', 'CCC')) for l in lines)
    assert f.sendcmd('NOOP').startswith('200'), 'out of step after FEAT'
    f.quit()
    # a backend that offers TLS and LPRT: those are removed
    fb = fake_feat_backend('211-Extensions supported:\r\n AUTH TLS\r\n AUTH SSL\r\n PBSZ\r\n'
                           ' PROT\r\n CCC\r\n LPRT\r\n LPSV\r\n EPSV\r\n EPRT\r\n MDTM\r\n'
                           ' SIZE\r\n REST STREAM\r\n UTF8\r\n211 END\r\n')
    g = T.Ftpgate(T.gate_config(fb.addr()))
    try:
        f = T.ftp_login(g.port)
        lines = feat_lines(f)
        want = ['211-Features:', ' EPRT', ' EPSV', ' MDTM', ' SIZE', ' REST STREAM', ' UTF8',
                '211 End']
        assert lines == want, 'FEAT from a TLS backend:\n%r\nwant\n%r' % (lines, want)
        assert f.sendcmd('NOOP') == '200 ok', f.replies[-1]
        f.quit()
    finally:
        g.stop()
        fb.stop()
    # a backend without FEAT: the proxy still offers EPRT and EPSV
    fb = fake_feat_backend('500 FEAT not understood\r\n')
    g = T.Ftpgate(T.gate_config(fb.addr()))
    try:
        f = T.ftp_login(g.port)
        lines = feat_lines(f)
        T.diag('FEAT with a backend answering 500: %r' % lines)
        assert lines[0].startswith('211') and ' EPRT' in lines and ' EPSV' in lines, lines
        assert f.sendcmd('NOOP') == '200 ok', f.replies[-1]
        f.quit()
    finally:
        g.stop()
        fb.stop()


def c_healthy():
    for m, g in GATES.items():
        assert g.alive(), 'ftpgate (%s) died' % m
        log = g.log()
        for bad in ('AddressSanitizer', 'runtime error:', 'LeakSanitizer'):
            assert bad not in log, 'sanitizer report in the %s log' % m
        rc = g.stop()
        T.diag('ftpgate (%s) exit status after SIGTERM: %s' % (m, rc))


for _bdm in MODES:
    for _cm in CLIENT_MODES:
        t.case('backend_data_mode=%s, client %s: curl+ftplib down/up 4 MiB, LIST'
               % (_bdm, _cm), combo(_bdm, _cm), 40)
t.case('active data connection comes from the address the client connected to',
       c_source_address, 30)
t.case('PORT to a closed port: 4xx, session usable (all modes)', c_port_closed, 50)
t.case('PORT to a closed port, backend holds the RETR: 4xx, stream in step',
       c_port_closed_holding, 30)
if os.access(LFTP, os.X_OK):
    t.case('lftp active mode (ftp:passive-mode false) download', lftp_case(False), 60)
    t.case('lftp passive mode, fix-pasv-address false, download', lftp_case(True), 60)
else:
    t.skip('lftp active mode download', 'lftp not installed')
    t.skip('lftp passive mode download', 'lftp not installed')
if T.ipv6_loopback_ok():
    t.case('IPv6 client (EPRT, EPSV) in front of an IPv4 backend', c_ipv6_client, 40)
    t.case('IPv6 backend behind an IPv4 listener (PASV, PORT)', c_ipv6_backend, 40)
else:
    t.skip('IPv6 client (EPRT, EPSV) in front of an IPv4 backend', '::1 not available')
    t.skip('IPv6 backend behind an IPv4 listener (PASV, PORT)', '::1 not available')
t.case('bounce: PORT/EPRT to 127.0.0.2 refused with 504 and logged', c_bounce_refused, 30)
t.case('allow_foreign_address = yes: transfer to a listener on 127.0.0.2', c_bounce_allowed, 30)
t.case('allow_foreign_address = yes: never 0.0.0.0, multicast, the backend or the proxy',
       c_bounce_never, 30)
t.case('privileged ports, malformed PORT/EPRT, TLS/LPRT 502, EPSV ALL', c_refusals, 30)
t.case('FEAT: EPRT and EPSV first, no AUTH/PBSZ/PROT/CCC/LPRT/LPSV', c_feat, 30)
t.case('ftpgate alive, no sanitizer reports', c_healthy, 30)
t.done()
