"""ftpservers: real FTP servers for the integration tests, run from their
Debian packages without installing them: ProFTPD (proftpd-core and
proftpd-mod-crypto for mod_tls.so) and Pure-FTPd are fetched with
`apt-get download` into a temporary directory and unpacked with `dpkg -x`
(only one FTP server package, vsftpd, may be installed).  Their shared
libraries must be installed (tools/install-deps.sh): libhiredis0.14
libmemcached11 libmemcachedutil2 libpcre2-posix3 (ProFTPD), libsodium23
(Pure-FTPd), libcap2.  The servers need root (they switch to nobody and
chroot).  Owns the server processes it starts: stopped by PID at exit."""

import atexit
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402


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


def run(cmd, timeout=CMD_TIMEOUT, check=True, **kw):
    r = subprocess.run(cmd, stdin=kw.pop('stdin', subprocess.DEVNULL), capture_output=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError('command failed (exit %d): %s\n%s'
                             % (r.returncode, ' '.join(cmd),
                                (r.stdout + r.stderr).decode('utf-8', 'replace')[-3000:]))
    return r


def read_text(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


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


def unpacked(files):
    """(root, None) when the servers can run here, unpacked, with the shared
    libraries of files (paths inside the packages) installed; else
    (None, why not)."""
    why = why_not_here()
    root = None
    if not why:
        root, why = fetch_servers()
    if not why:
        why = missing_libs([os.path.join(root, f) for f in files])
    return (None, why) if why else (root, None)


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


class Server:
    """Common parts: a directory, a login u/PASSWORD whose home (.root) holds
    the download file and a writable .up, a process stopped by PID."""

    kind = 'server'

    def _prepare(self, prefix):
        self.dir = T.tmpdir(prefix)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, 'home')
        self.up = os.path.join(self.root, 'up')
        for p in (self.root, self.up):
            os.makedirs(p)
            os.chmod(p, 0o755)
        self.user, self.group, self.uid, self.gid = session_identity()
        os.chown(self.up, self.uid, self.gid)
        self.password = 'pw-' + os.urandom(6).hex()
        self.host = BACK_IP
        self.port = T.free_port(BACK_IP)
        self.proc = None
        self.out_path = os.path.join(self.dir, 'stdout-stderr.log')

    def _start(self, cmd, env=None):
        self._logf = open(self.out_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf, env=env, start_new_session=True)
        _my_procs.append(self)
        try:
            T.wait_listening(self.proc, [self.port], 15, self.kind, self.log)
        except BaseException:
            self.stop()
            raise

    def addr(self):
        return '%s:%d' % (self.host, self.port)

    def put(self, src):
        dst = os.path.join(self.root, os.path.basename(src))
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def stop(self):
        """The listener and its session processes, by PID."""
        if self.proc is None:
            return
        kids = T._descendants(self.proc.pid) if self.proc.poll() is None else []
        T._stop_proc(self.proc)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._logf.close()
        self.proc = None


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
