#!/usr/bin/python3
"""ftpgate TLS passthrough (`tls = passthrough`) in front of real ProFTPD
and Pure-FTPd servers, configured with exactly the settings the README's
"TLS passthrough" section gives for them:
  ProFTPD:   MasqueradeAddress <proxy IP> + PassivePorts LOW HIGH
  Pure-FTPd: pure-ftpd -P <proxy IP> -p LOW:HIGH
For each server: curl --ssl-reqd -k LIST, a 16 MiB download and a 16 MiB
upload (sha256-checked), with PASV trusting the 227
(--no-ftp-skip-pasv-ip --disable-epsv) and with EPSV.  Pure-FTPd also
behind a plain site: ftplib aborts a 64 MiB RETR after 1 MiB (ABOR, data
socket closed) and must get a 4xx for RETR and a 2xx for ABOR.  TAP output;
see ftptest.py for the environment variables.

The servers are not installed: their Debian packages (proftpd-core,
proftpd-mod-crypto for mod_tls.so, pure-ftpd) are fetched with
`apt-get download` into a temporary directory and unpacked with `dpkg -x`
(only one FTP server package, vsftpd, may be installed).  Their shared
libraries must be installed (tools/install-deps.sh): libhiredis0.14
libmemcached11 libmemcachedutil2 libpcre2-posix3 (ProFTPD), libsodium23
(Pure-FTPd), libcap2.  Every case is skipped with the reason when the
download fails, a library is missing, or the test does not run as root.

Loopback layout (as in test_passthrough.py):
  curl (source 127.0.0.1) --> ftpgate listen 127.0.0.2:PORT, data 127.0.0.2:P
                          --> server on 127.0.0.1:SPORT, passive range ==
                              the site's passive_ports, announcing 127.0.0.2.
Needs /usr/bin/python3, curl, the openssl CLI, apt-get, dpkg, ldd."""

import atexit
import glob
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
FILE_MIB = 16
PROXY_IP = '127.0.0.2'      # ftpgate's listen address (and its forwarders')
BACK_IP = '127.0.0.1'       # servers' address; clients' source address
CMD_TIMEOUT = 60            # bound on every curl
FETCH_TIMEOUT = 180         # bound on apt-get download
SERVER_PKGS = ('proftpd-core', 'proftpd-mod-crypto', 'pure-ftpd')
# shared library (soname) -> the Debian 12 package that ships it
LIB_PKGS = {
    'libhiredis.so.0.14': 'libhiredis0.14', 'libmemcached.so.11': 'libmemcached11',
    'libmemcachedutil.so.2': 'libmemcachedutil2', 'libpcre2-posix.so.3': 'libpcre2-posix3',
    'libsodium.so.23': 'libsodium23', 'libcap.so.2': 'libcap2', 'libacl.so.1': 'libacl1',
    'libpam.so.0': 'libpam0g', 'libcrypt.so.1': 'libcrypt1', 'libpcre2-8.so.0': 'libpcre2-8-0',
    'libssl.so.3': 'libssl3', 'libcrypto.so.3': 'libssl3',
}
END_RE = (r'end: client (?P<client>\S+) backend (?P<backend>\S+) user "[^"]*" '
          r'data up (?P<up>\d+) down (?P<down>\d+) bytes, '
          r'control relayed (?P<ctrl>\d+) bytes, [0-9.]+ s: (?P<why>[^\n]*)')

# --------------------------------------------------------------------------
# bookkeeping: our own processes, stopped by PID at exit (atexit is LIFO:
# this runs before ftptest's own cleanup, which removes the temp dirs)

_my_procs = []


def _cleanup():
    for p in list(_my_procs):
        try:
            p.stop()
        except Exception:
            pass
    del _my_procs[:]


atexit.register(_cleanup)

t = T.start_tap(('curl', T.CURL), ('openssl CLI', T.OPENSSL))
T.use_private_binary()


def run(cmd, timeout=CMD_TIMEOUT, check=True, **kw):
    return T.run_cmd(cmd, timeout=timeout, check=check, **kw)


read_text = T.read_text


def one_line(text, n=500):
    return ' | '.join(l for l in str(text).strip().splitlines() if l.strip())[-n:]


# --------------------------------------------------------------------------
# the server packages: apt-get download + dpkg -x, once per run

def fetch_servers():
    """(unpacked root, None) or (None, reason)."""
    apt, dpkg = shutil.which('apt-get'), shutil.which('dpkg')
    if not apt or not dpkg:
        return None, 'apt-get/dpkg not found (Debian needed to fetch the server packages)'
    d = T.tmpdir('pt-debs-')
    os.chmod(d, 0o755)
    cmd = [apt, '-q', '-o', 'Acquire::http::Timeout=30', '-o', 'Acquire::Retries=2']
    if os.geteuid() == 0:       # no "download is performed unsandboxed" warning
        cmd += ['-o', 'APT::Sandbox::User=root']
    cmd += ['download'] + list(SERVER_PKGS)
    try:
        r = run(cmd, timeout=FETCH_TIMEOUT, check=False, cwd=d)
    except subprocess.TimeoutExpired:
        return None, '`apt-get download %s` took more than %d s' % (
            ' '.join(SERVER_PKGS), FETCH_TIMEOUT)
    debs = sorted(glob.glob(os.path.join(d, '*.deb')))
    if r.returncode != 0 or len(debs) < len(SERVER_PKGS):
        return None, '`apt-get download %s` failed (exit %d): %s' % (
            ' '.join(SERVER_PKGS), r.returncode,
            one_line((r.stdout + r.stderr).decode('utf-8', 'replace'), 300))
    root = os.path.join(d, 'root')
    for deb in debs:
        r = run([dpkg, '-x', deb, root], check=False)
        if r.returncode != 0:
            return None, 'dpkg -x %s failed: %s' % (
                os.path.basename(deb), one_line(r.stderr.decode('utf-8', 'replace')))
    T.diag('unpacked: %s' % ' '.join(os.path.basename(p) for p in debs))
    return root, None


def missing_libs(files):
    """None, or the reason why these ELF files cannot be loaded here."""
    ldd = shutil.which('ldd')
    if not ldd:
        return None          # cannot tell; starting the server will
    missing = set()
    for f in files:
        if not os.path.exists(f):
            return '%s is not in the unpacked packages' % f
        r = run([ldd, f], check=False)
        for line in r.stdout.decode('utf-8', 'replace').splitlines():
            m = re.match(r'\s*(\S+) => not found', line)
            if m:
                missing.add(m.group(1))
    if not missing:
        return None
    pkgs = sorted({LIB_PKGS.get(s, '?') for s in missing})
    return 'missing shared libraries %s: apt-get install %s (tools/install-deps.sh)' % (
        ' '.join(sorted(missing)), ' '.join(pkgs))


def make_self_signed(d):
    """Self-signed certificate + key (one PEM file each) and their bundle."""
    T._openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key',
                '-out', 'srv.pem', '-days', '30', '-subj', '/CN=ftptest passthrough backend',
                '-addext', 'subjectAltName=IP:127.0.0.1'], d)
    P = lambda n: os.path.join(d, n)   # noqa: E731
    with open(P('bundle.pem'), 'w') as out:
        for n in ('srv.key', 'srv.pem'):
            out.write(read_text(P(n)))
    for n in ('srv.key', 'bundle.pem'):
        os.chmod(P(n), 0o600)
    return P('srv.pem'), P('srv.key'), P('bundle.pem')


def sha512_crypt(password):
    """crypt(3) SHA-512 hash ($6$...) by the openssl CLI."""
    r = run([T.OPENSSL, 'passwd', '-6', '-stdin'], input=password.encode() + b'\n',
            stdin=None)
    h = r.stdout.decode().strip()
    assert h.startswith('$6$'), 'openssl passwd -6: %r' % h
    return h


def session_identity():
    """(user name, group name, uid, gid) the servers' sessions run as."""
    pw = pwd.getpwnam('nobody')
    return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_uid, pw.pw_gid


class Server(T.ForkingServer):
    """Common parts: a directory, a login u/PASSWORD whose home (.root) holds
    the download file and a writable .up, a process stopped by PID."""

    def _prepare(self, prefix):
        self.user, self.group, self.uid, self.gid = session_identity()
        self._make_tree(prefix, 'home', (self.uid, self.gid))
        self.password = 'pw-' + os.urandom(6).hex()
        self.host = BACK_IP
        self.port = T.free_port(BACK_IP)

    def _start(self, cmd, env=None):
        super()._start(cmd, env)
        _my_procs.append(self)


class ProFTPD(Server):
    """proftpd -n from the unpacked packages (ModulePath into them, mod_tls
    loaded), standalone on 127.0.0.1 (SocketBindTight), AuthUserFile login,
    DefaultRoot ~, sessions as nobody, TLS required on control and data (TLSRequired
    on; the default TLS session reuse requirement on data connections
    kept), MasqueradeAddress + PassivePorts as in the README."""

    kind = 'proftpd'

    def __init__(self, pkgroot, cert, key, pasv_ports, masquerade=PROXY_IP):
        self._prepare('pt-proftpd-')
        self.pasv_ports = pasv_ports
        P = lambda n: os.path.join(self.dir, n)   # noqa: E731
        self.system_log, self.tls_log, self.xfer_log = P('system.log'), P('tls.log'), P('xfer.log')
        with open(P('ftpd.passwd'), 'w') as f:
            f.write('u:%s:%d:%d::%s:/bin/sh\n' % (sha512_crypt(self.password), self.uid,
                                                 self.gid, self.root))
        os.chmod(P('ftpd.passwd'), 0o600)
        conf = [
            'ServerType standalone', 'ServerName "ftptest passthrough ProFTPD"',
            'UseIPv6 off', 'DefaultAddress %s' % BACK_IP, 'SocketBindTight on',
            'Port %d' % self.port, 'User %s' % self.user, 'Group %s' % self.group,
            'ModulePath %s' % os.path.join(pkgroot, 'usr/lib/proftpd'),
            'LoadModule mod_tls.c',
            'PidFile %s' % P('proftpd.pid'), 'ScoreboardFile %s' % P('proftpd.scoreboard'),
            'DelayTable none', 'WtmpLog off', 'UseReverseDNS off',
            'SystemLog %s' % self.system_log, 'TransferLog %s' % self.xfer_log,
            'AuthPAM off', 'AuthOrder mod_auth_file.c', 'AuthUserFile %s' % P('ftpd.passwd'),
            'RequireValidShell off', 'AllowOverwrite on', 'Umask 022',
            'MaxInstances 100', 'TimeoutIdle 120', 'TimeoutNoTransfer 120',
            # the README's two lines
            'MasqueradeAddress %s' % masquerade,
            'PassivePorts %d %d' % tuple(pasv_ports),
            'TLSEngine on', 'TLSLog %s' % self.tls_log,
            'TLSRSACertificateFile %s' % cert, 'TLSRSACertificateKeyFile %s' % key,
            'TLSRequired on', 'TLSVerifyClient off', 'DefaultRoot ~',
        ]
        self.conf = P('proftpd.conf')
        with open(self.conf, 'w') as f:
            f.write('\n'.join(conf) + '\n')
        os.chmod(self.conf, 0o644)
        binary = os.path.join(pkgroot, 'usr/sbin/proftpd')
        r = run([binary, '-t', '-c', self.conf], timeout=20, check=False)
        if r.returncode != 0:
            raise AssertionError('proftpd -t refused the configuration:\n%s\n%s' % (
                (r.stdout + r.stderr).decode('utf-8', 'replace')[-2000:], '\n'.join(conf)))
        self._start([binary, '-n', '-c', self.conf])

    def log(self):
        return '\n'.join(read_text(p) for p in (self.out_path, self.system_log,
                                                  self.tls_log, self.xfer_log))


class PureFTPd(Server):
    """pure-ftpd from the unpacked package in the foreground: -S 127.0.0.1,PORT,
    PureDB virtual user u (made with the package's pure-pw; uid nobody),
    chrooted (-A), TLS (-Y 1, cert+key bundle with -2), -P/-p as in the README."""

    kind = 'pure-ftpd'

    def __init__(self, pkgroot, bundle, pasv_ports, masquerade=PROXY_IP):
        self._prepare('pt-pureftpd-')
        self.pasv_ports = pasv_ports
        P = lambda n: os.path.join(self.dir, n)   # noqa: E731
        self.xfer_log = P('xfer.log')
        home = self.root + '/./'                    # /./: chroot there
        with open(P('pureftpd.passwd'), 'w') as f:
            f.write('u:%s:%d:%d::%s::::::::::::\n' % (sha512_crypt(self.password), self.uid,
                                                      self.gid, home))
        os.chmod(P('pureftpd.passwd'), 0o600)
        run([os.path.join(pkgroot, 'usr/bin/pure-pw'), 'mkdb', P('pureftpd.pdb'),
             '-f', P('pureftpd.passwd')], timeout=20)
        lo, hi = pasv_ports
        self.args = ['-S', '%s,%d' % (BACK_IP, self.port),
                     # the README's two options
                     '-P', masquerade, '-p', '%d:%d' % (lo, hi),
                     '-Y', '1', '-2', bundle,
                     '-l', 'puredb:%s' % P('pureftpd.pdb'), '-E', '-H',
                     '-c', '50', '-C', '50', '-I', '120',
                     '-O', 'clf:%s' % self.xfer_log, '-A', '-d']
        self._start([os.path.join(pkgroot, 'usr/sbin/pure-ftpd')] + self.args)

    def log(self):
        return '\n'.join(read_text(p) for p in (self.out_path, self.xfer_log)) + \
            '\n(pure-ftpd logs to syslog; command line: pure-ftpd %s)' % ' '.join(self.args)


# --------------------------------------------------------------------------
# helpers (as in test_passthrough.py)

def pt_gate(server):
    """One passthrough site on 127.0.0.2, passive_ports == the server's range."""
    port = T.free_port(PROXY_IP)
    cfg = T.gate_config(server.addr(), listen_port=port, listen_host=PROXY_IP,
                        passive_ports=server.pasv_ports, tls='passthrough')
    g = T.Ftpgate(cfg)
    assert not re.search(r'(?m)^\s*tls_(cert|key)\s*=', g.text), \
        'the passthrough config holds a certificate/key:\n%s' % g.text
    return g


def wait_end(g, mark, timeout=10.0):
    m = g.wait_log(END_RE, mark, timeout)
    assert m, 'no session end line within %.0f s; log since mark:\n%s' % (
        timeout, g.log_since(mark)[-3000:])
    d = m.groupdict()
    for k in ('up', 'down', 'ctrl'):
        d[k] = int(d[k])
    return d


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


SSL = ['--ssl-reqd', '-k']
TRUST_227 = ['--no-ftp-skip-pasv-ip', '--disable-epsv']
MODES = (('PASV', TRUST_227), ('EPSV', []))


def creds(s):
    return ['-u', 'u:%s' % s.password]


def url(port, path='', host=PROXY_IP):
    return 'ftp://%s:%d/%s' % (host, port, path)


def check_tls_session(err, g, mark):
    """curl upgraded the control connection (AUTH, 234), protected the data
    (PROT P) and the proxy saw nothing after AUTH."""
    assert re.search(r'> AUTH (TLS|SSL)', err) and re.search(r'< 234', err), \
        'no AUTH / 234 in curl -v output:\n%s' % err[-3000:]
    assert '> PROT P' in err and re.search(r'< 200[ -]', err[err.index('> PROT P'):]), \
        'data channel not protected (PROT P / 200):\n%s' % err[-3000:]
    log = g.log_since(mark)
    assert 'control connection relayed blindly' in log, \
        'no "relayed blindly" line in the proxy log:\n%s' % log[-2000:]
    for c in ('USER', 'PASS', 'PROT', 'RETR', 'STOR', 'LIST', 'PASV', 'EPSV'):
        assert 'command %s' % c not in log, \
            'the proxy saw %s (not blind after AUTH):\n%s' % (c, log[-2000:])


def check_data_conn(err, g, mark, server, mode):
    """The data connection went to the proxy's address and a port of the
    range, and the proxy forwarded that port."""
    lo, hi = server.pasv_ports
    if mode == 'PASV':
        assert '> PASV' in err and '> EPSV' not in err, 'curl did not use PASV:\n%s' % err[-3000:]
        ip, port = parse_227(err)
        assert ip == PROXY_IP, '227 announces %s, not %s (%s)' % (ip, PROXY_IP, server.kind)
    else:
        assert '> EPSV' in err and '> PASV' not in err, 'curl did not use EPSV:\n%s' % err[-3000:]
        port = parse_229(err)
    assert lo <= port <= hi, '%s port %d outside %d-%d' % (mode, port, lo, hi)
    assert re.search(r'(Trying|Connecting to) %s[: ]' % re.escape(PROXY_IP), err) and \
        ('port %d' % port in err or ':%d' % port in err), \
        'curl did not connect the data channel to %s:%d:\n%s' % (PROXY_IP, port, err[-3000:])
    assert g.wait_log(r'passthrough data port %d forwarded' % port, mark, 5), \
        'the proxy log shows no forwarding of port %d:\n%s' % (port, g.log_since(mark)[-2000:])


# --------------------------------------------------------------------------
# cases

def case_direct(s):
    """The server alone (no proxy): TLS LIST and download work; separates
    environment problems from proxy problems."""
    def fn():
        r = T.curl(SSL + creds(s) + [url(s.port, host=BACK_IP)])
        listing = r.stdout.decode('utf-8', 'replace')
        assert 'big.bin' in listing, 'direct LIST: %r' % listing
        out = L('%s.direct' % s.kind)
        T.curl(SSL + creds(s) + [url(s.port, 'big.bin', host=BACK_IP), '-o', out])
        assert T.sha256_file(out) == BIG_SHA, 'direct download from %s mismatch' % s.kind
        os.unlink(out)
    return fn


def case_list(s):
    def fn():
        g = pt_gate(s)
        try:
            mark = g.log_mark()
            r = T.curl(['-v'] + SSL + creds(s) + [url(g.port)])
            listing = r.stdout.decode('utf-8', 'replace')
            err = r.stderr.decode('utf-8', 'replace')
            assert re.search(r'(?m)\bbig\.bin\s*$', listing) and \
                re.search(r'(?m)\bup\s*$', listing), 'LIST through passthrough: %r' % listing
            check_tls_session(err, g, mark)
            e = wait_end(g, mark)
            assert e['ctrl'] > 0 and e['down'] > 0, 'LIST session end line: %r' % e
            T.diag('%s LIST end line: %r' % (s.kind, e))
        finally:
            g.stop()
    return fn


def case_download(s):
    def fn():
        g = pt_gate(s)
        try:
            for mode, extra in MODES:
                mark = g.log_mark()
                out = L('%s.%s' % (s.kind, mode))
                err = curl_v(SSL + extra + creds(s) + [url(g.port, 'big.bin'), '-o', out])
                check_tls_session(err, g, mark)
                check_data_conn(err, g, mark, s, mode)
                got = T.sha256_file(out)
                assert got == BIG_SHA, '%s download sha256 %s != %s (size %d)' % (
                    mode, got, BIG_SHA, os.path.getsize(out))
                os.unlink(out)
                e = wait_end(g, mark)
                assert e['ctrl'] > 0 and e['down'] >= FILE_MIB * MiB, \
                    '%s end line counts %d bytes down for a %d MiB TLS download' % (
                        mode, e['down'], FILE_MIB)
                T.diag('%s %s download end line: %r' % (s.kind, mode, e))
        finally:
            g.stop()
    return fn


def case_upload(s):
    def fn():
        g = pt_gate(s)
        try:
            for mode, extra in MODES:
                mark = g.log_mark()
                name = 'up-%s.bin' % mode.lower()
                err = curl_v(SSL + extra + creds(s) + ['-T', UP_BIG, url(g.port, 'up/' + name)])
                check_tls_session(err, g, mark)
                check_data_conn(err, g, mark, s, mode)
                dest = os.path.join(s.up, name)
                assert os.path.exists(dest), 'no uploaded file %s on %s' % (dest, s.kind)
                got = T.sha256_file(dest)
                assert got == UP_SHA, '%s upload sha256 %s != %s (size %d)' % (
                    mode, got, UP_SHA, os.path.getsize(dest))
                e = wait_end(g, mark)
                assert e['ctrl'] > 0 and e['up'] >= FILE_MIB * MiB, \
                    '%s end line counts %d bytes up for a %d MiB TLS upload' % (
                        mode, e['up'], FILE_MIB)
                T.diag('%s %s upload end line: %r' % (s.kind, mode, e))
        finally:
            g.stop()
    return fn


def abor_rounds(port, s, name, rounds=3):
    """ftplib: RETR name, after 1 MiB ABOR and close the data socket; read replies until the ABOR's 2xx (at most 10 s
    each).  Returns the replies of each round."""
    f = T.RecordingFTP()
    f.connect('127.0.0.1', port, timeout=20)
    out = []
    try:
        f.login('u', s.password)
        f.voidcmd('TYPE I')
        for _ in range(rounds):
            conn = f.transfercmd('RETR ' + name)
            n = 0
            while n < MiB:
                b = conn.recv(65536)
                assert b, 'data connection closed after %d bytes' % n
                n += len(b)
            f.putcmd('ABOR')    # no urgent data: it confuses Pure-FTPd itself
            conn.close()
            f.sock.settimeout(10)
            got = []
            while not got or got[-1][:3] not in ('225', '226'):
                try:
                    got.append(f.getmultiline())
                except (socket.timeout, TimeoutError):
                    raise AssertionError('no 2xx for ABOR within 10 s; replies after '
                                         'ABOR: %r' % got) from None
                assert len(got) <= 3, 'replies after ABOR: %r' % got
            out.append(got)
            assert f.sendcmd('NOOP').startswith('200'), 'after ABOR: %r' % f.replies[-1]
        f.quit()
    finally:
        f.close()
    return out


def case_abor(s):
    """Issue 10.11: with Pure-FTPd behind a plain site, the client gets a 4xx
    for the aborted RETR and a 2xx for the ABOR, every time; directly
    against the server the same client passes (a control)."""
    def fn():
        name = 'abor64.bin'
        path = os.path.join(s.root, name)
        if not os.path.exists(path):
            T.make_random_file(path, 64)
            os.chmod(path, 0o644)
        T.diag('direct: %r' % abor_rounds(s.port, s, name, 1))
        g = T.Ftpgate(T.gate_config(s.addr()))
        try:
            rounds = abor_rounds(g.port, s, name)
            T.diag('through ftpgate: %r' % rounds)
            for got in rounds:
                assert len(got) == 2 and got[0][:1] == '4' and got[1][:3] in ('225', '226'), \
                    'want a 4xx for RETR, then the ABOR\'s 2xx: %r' % got
            assert g.alive()
        finally:
            g.stop()
    return fn


def with_logs(fn, server):
    """Add the tail of the server's logs to a failure."""
    def wrapped():
        try:
            fn()
        except AssertionError as e:
            raise AssertionError('%s\n--- %s logs, last lines:\n%s' % (
                e, server.kind, '\n'.join(server.log().splitlines()[-30:]))) from None
    return wrapped


# --------------------------------------------------------------------------
# fixture

SERVERS = (
    ('ProFTPD', 'MasqueradeAddress + PassivePorts',
     ['usr/sbin/proftpd', 'usr/lib/proftpd/mod_tls.so'], ()),
    ('Pure-FTPd', 'pure-ftpd -P -p', ['usr/sbin/pure-ftpd', 'usr/bin/pure-pw'],
     (('plain site (tls = off): ftplib ABOR of a 64 MiB RETR after 1 MiB, 3 times: '
       '4xx for RETR, 2xx for ABOR', case_abor, 60),)),
)
CASES = (
    ('direct to the server (no proxy): curl --ssl-reqd LIST and download', case_direct, 60),
    ('passthrough: curl --ssl-reqd -k LIST', case_list, 40),
    ('passthrough: %d MiB download, PASV trusting the 227 and EPSV, sha256' % FILE_MIB,
     case_download, 90),
    ('passthrough: %d MiB upload, PASV trusting the 227 and EPSV, sha256' % FILE_MIB,
     case_upload, 90),
)

def why_not_here():
    """None if the servers can run here, else the reason."""
    if os.geteuid() != 0:
        return 'needs root (the servers switch to user nobody and chroot; euid %d)' % (
            os.geteuid())
    try:
        session_identity()
    except KeyError as e:
        return 'no user/group "nobody" for the servers\' sessions: %s' % e
    return None


PKGROOT, WHY = None, why_not_here()
if not WHY:
    PKGROOT, WHY = fetch_servers()
LOCAL = T.tmpdir('pt-srv-local-')
if not WHY:
    try:
        SRC = T.tmpdir('pt-srv-src-')
        os.chmod(SRC, 0o755)
        BIG = os.path.join(SRC, 'big.bin')
        BIG_SHA = T.make_random_file(BIG, FILE_MIB)
        os.chmod(BIG, 0o644)
        UP_BIG = os.path.join(LOCAL, 'up.src')
        UP_SHA = T.make_random_file(UP_BIG, FILE_MIB)
        CERTDIR = T.tmpdir('pt-srv-cert-')
        os.chmod(CERTDIR, 0o755)
        CERT, KEY, BUNDLE = make_self_signed(CERTDIR)
    except Exception as e:  # noqa
        t.bail('setup failed: %s' % one_line(e, 3000))


def L(name):
    return os.path.join(LOCAL, name)


def failing(msg):
    def fn():
        raise AssertionError(msg)
    return fn


try:
    for sname, how, files, extra in SERVERS:
        why = WHY or missing_libs([os.path.join(PKGROOT, f) for f in files])
        server, start_err = None, None
        if why:
            T.diag('%s cases skipped: %s' % (sname, why))
        else:
            try:
                rng = T.port_range(20)
                if sname == 'ProFTPD':
                    server = ProFTPD(PKGROOT, CERT, KEY, rng)
                else:
                    server = PureFTPd(PKGROOT, BUNDLE, rng)
                server.put(BIG)
                T.diag('%s on %s, passive ports %d-%d announced as %s' % (
                    sname, server.addr(), rng[0], rng[1], PROXY_IP))
            except Exception as e:  # noqa
                start_err = '%s did not start: %s' % (sname, str(e)[-3000:])
        for cname, mk, tmo in CASES + extra:
            name = '%s (%s): %s' % (sname, how, cname)
            if why:
                t.skip(name, why)
            elif server is None:
                t.case(name, failing(start_err), timeout=5)
            else:
                t.case(name, with_logs(mk(server), server), timeout=tmo)
        if server is not None:
            server.stop()
finally:
    _cleanup()
t.done()
