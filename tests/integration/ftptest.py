"""ftptest: harness for ftpgate's integration tests (TAP output).

Only the Python standard library is needed in the test process.  The FTP
backend is pyftpdlib, run in a subprocess by FTPTEST_PYTHON (default
/usr/bin/python3, which on Debian has python3-pyftpdlib).

Environment:
  FTPGATE         path of the ftpgate binary (default <srcdir>/src/ftpgate)
  FTPGATE_SRCDIR  source tree (default: three levels above this file)
  FTPTEST_PYTHON  python with pyftpdlib for the backend server
  FTPTEST_KEEP=1  keep temporary directories (logs, configs) after the run
Network: loopback only (127.0.0.0/8 and ::1).
"""

import atexit
import errno
import fcntl
import ftplib
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get('FTPGATE_SRCDIR') or os.path.dirname(os.path.dirname(HERE))
FTPGATE = os.environ.get('FTPGATE') or os.path.join(SRCDIR, 'src', 'ftpgate')
SERVER_PYTHON = os.environ.get('FTPTEST_PYTHON') or '/usr/bin/python3'
CURL = shutil.which('curl') or '/usr/bin/curl'
MiB = 1024 * 1024

# --------------------------------------------------------------------------
# cleanup of everything we start: processes by PID, temporary directories

_procs = []        # subprocess.Popen objects still to stop
_tmpdirs = []
_lock_fds = []     # port-range lock files held for the life of the process


def _stop_proc(proc, grace=5.0):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc in _procs:
        _procs.remove(proc)
    return proc.returncode


def _cleanup():
    for p in list(_procs):
        try:
            _stop_proc(p, 2.0)
        except Exception:
            pass
    if os.environ.get('FTPTEST_KEEP') != '1':
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _on_signal(signum, frame):
    sys.exit(128 + signum)   # runs atexit handlers


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def tmpdir(prefix='ftptest-'):
    d = tempfile.mkdtemp(prefix=prefix, dir='/tmp')
    _tmpdirs.append(d)
    return d


# --------------------------------------------------------------------------
# files

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def make_random_file(path, mib=0, nbytes=None):
    """Write random content (mib MiB, or exactly nbytes); return its sha256."""
    total = nbytes if nbytes is not None else int(mib * MiB)
    h = hashlib.sha256()
    with open(path, 'wb') as f:
        left = total
        while left > 0:
            b = os.urandom(min(left, 4 * MiB))
            f.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


# --------------------------------------------------------------------------
# ports

def free_port(host='127.0.0.1'):
    """A TCP port that was free a moment ago (bind to port 0)."""
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def closed_port(host='127.0.0.1'):
    """A port where nothing listens (connect gets ECONNREFUSED)."""
    return free_port(host)


def _ephemeral_range():
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_held_units = set()
_UNIT = 100


def _lock_unit(lockdir, unit):
    fd = os.open(os.path.join(lockdir, '%d.lock' % unit), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def port_range(width=200):
    """Reserve a block of `width` ports for this process: (low, high).

    Random base in 20000-59000, outside the kernel's ephemeral range when
    possible.  Ports are locked in units of 100 (one flock'ed file per unit
    under /tmp/ftptest-portlocks, held until exit), so test scripts running
    at the same time never get overlapping blocks."""
    units = (width + _UNIT - 1) // _UNIT
    span = units * _UNIT
    elo, ehi = _ephemeral_range()
    bases = [b for b in range(20000, 59000 - span, _UNIT)
             if b + span <= elo or b > ehi]
    if len(bases) < 10:
        bases = list(range(20000, 59000 - span, _UNIT))
    random.shuffle(bases)
    lockdir = '/tmp/ftptest-portlocks'
    os.makedirs(lockdir, exist_ok=True)
    for base in bases:
        us = [base + i * _UNIT for i in range(units)]
        if any(u in _held_units for u in us):
            continue
        fds = []
        for u in us:
            fd = _lock_unit(lockdir, u)
            if fd is None:
                break
            fds.append(fd)
        busy = 0
        if len(fds) == units:
            for p in range(base, base + width):
                with socket.socket() as sk:
                    try:
                        sk.bind(('127.0.0.1', p))
                    except OSError:
                        busy += 1
        if len(fds) < units or busy > width // 10:
            for fd in fds:
                os.close(fd)
            continue
        _lock_fds.extend(fds)
        _held_units.update(us)
        return base, base + width - 1
    raise RuntimeError('no free port range found')


def ipv6_loopback_ok():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(('::1', 0))
        return True
    except OSError:
        return False


def _listening_ports_of(pid):
    """(port) set of TCP sockets in LISTEN state owned by pid (Linux /proc)."""
    inodes = set()
    fddir = '/proc/%d/fd' % pid
    for fd in os.listdir(fddir):
        try:
            t = os.readlink(os.path.join(fddir, fd))
        except OSError:
            continue
        m = re.match(r'socket:\[(\d+)\]', t)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for tab in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(tab) as f:
                next(f)
                for line in f:
                    fl = line.split()
                    if fl[3] == '0A' and fl[9] in inodes:
                        ports.add(int(fl[1].rsplit(':', 1)[1], 16))
        except OSError:
            pass
    return ports


def wait_listening(proc, ports, timeout=10.0, what='process', logfn=None):
    """Wait until proc listens on all `ports` (checked in /proc, without
    opening connections); raise with the log if it dies or times out."""
    deadline = time.monotonic() + timeout
    want = set(ports)
    while True:
        if proc.poll() is not None:
            raise AssertionError('%s exited with status %s before listening\n%s'
                                 % (what, proc.returncode, logfn() if logfn else ''))
        try:
            have = _listening_ports_of(proc.pid)
        except OSError:
            have = set()
        if want <= have:
            return
        if time.monotonic() > deadline:
            raise AssertionError('%s not listening on %s after %.0f s\n%s'
                                 % (what, sorted(want - have), timeout,
                                    logfn() if logfn else ''))
        time.sleep(0.05)


# --------------------------------------------------------------------------
# pyftpdlib backend in a subprocess

_SERVER_SCRIPT = r'''
import json, logging, sys
cfg = json.loads(sys.argv[1])
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format='%(asctime)s %(levelname)s %(message)s')
auth = DummyAuthorizer()
auth.add_user('u', 'p', cfg['root'], perm='elradfmwMT')
auth.add_anonymous(cfg['root'])

class Handler(FTPHandler):
    pass

Handler.authorizer = auth
Handler.banner = cfg['banner']
Handler.timeout = cfg['timeout']
Handler.auth_failed_timeout = 0.1
Handler.permit_foreign_addresses = False
Handler.passive_ports = range(cfg['pasv'][0], cfg['pasv'][1] + 1)
if cfg.get('masquerade'):
    Handler.masquerade_address = cfg['masquerade']
if cfg.get('no_epsv'):
    def ftp_EPSV(self, line):
        self.respond('500 EPSV not understood.')
    Handler.ftp_EPSV = ftp_EPSV
server = FTPServer((cfg['host'], cfg['port']), Handler)
server.max_cons = 1024
sys.stdout.write('%d\n' % server.socket.getsockname()[1])
sys.stdout.flush()
server.serve_forever()
'''


class PyftpdServer:
    """pyftpdlib server in a subprocess: user u/p (elradfmwMT) + anonymous
    read-only, rooted at root_dir.  .port, .host, .banner, .log(), .stop()"""

    def __init__(self, root_dir, host='127.0.0.1', ipv6=False, port=0,
                 masquerade_address=None, no_epsv=False, timeout=60,
                 pasv_ports=None, long_banner=False):
        if ipv6 and host == '127.0.0.1':
            host = '::1'
        self.root = root_dir
        self.host = host
        self.dir = tmpdir('pyftpd-')
        self.banner = 'ftptest-backend-%s ready' % os.urandom(4).hex()
        if long_banner:   # > 75 characters: pyftpdlib sends a multi-line 220
            self.banner += ' ' + 'x' * 80
        if pasv_ports is None:
            pasv_ports = port_range(100)
        self.pasv_ports = pasv_ports
        script = os.path.join(self.dir, 'server.py')
        with open(script, 'w') as f:
            f.write(_SERVER_SCRIPT)
        cfg = dict(root=root_dir, host=host, port=port, banner=self.banner,
                   timeout=timeout, pasv=list(pasv_ports),
                   masquerade=masquerade_address, no_epsv=no_epsv)
        self.log_path = os.path.join(self.dir, 'server.log')
        self._logf = open(self.log_path, 'wb')
        self.proc = subprocess.Popen([SERVER_PYTHON, script, json.dumps(cfg)],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._logf)
        _procs.append(self.proc)
        try:
            r, _, _ = select.select([self.proc.stdout], [], [], 15)
            line = self.proc.stdout.readline() if r else b''
            if not line.strip().isdigit():
                raise AssertionError('pyftpdlib server did not start: %r\n%s'
                                     % (line, self.log()))
            self.port = int(line)
            wait_listening(self.proc, [self.port], 10, 'pyftpdlib', self.log)
        except BaseException:
            self.stop()
            raise

    def addr(self):
        return ('[%s]:%d' if ':' in self.host else '%s:%d') % (self.host, self.port)

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def stop(self):
        if self.proc is not None:
            _stop_proc(self.proc)
            self.proc.stdout.close()
            self._logf.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------
# ftpgate

started_gates = []   # every Ftpgate ever started (Tap dumps logs on failure)


def render_config(config):
    """config: ini text, or dict {section: {key: value}} (insertion order)."""
    if isinstance(config, str):
        return config
    out = []
    for sect, kv in config.items():
        out.append('[%s]' % sect)
        for k, v in kv.items():
            out.append('%s = %s' % (k, v))
        out.append('')
    return '\n'.join(out)


def gate_config(backend, listen_port=None, listen_host='127.0.0.1',
                passive_ports=None, log_level='debug', **site):
    """Typical one-site config dict.  backend: 'host:port' or a PyftpdServer."""
    if isinstance(backend, PyftpdServer):
        backend = backend.addr()
    if listen_port is None:
        listen_port = free_port(listen_host)
    if passive_ports is None:
        passive_ports = port_range(200)
    listen = ('[%s]:%d' if ':' in listen_host else '%s:%d') % (listen_host, listen_port)
    s = {'listen': listen, 'backend': backend,
         'passive_ports': '%d-%d' % tuple(passive_ports)}
    s.update({k: str(v) for k, v in site.items()})
    return {'global': {'log_level': log_level}, 'site:test': s}


def _listen_ports(text):
    ports = []
    for line in text.splitlines():
        m = re.match(r'\s*listen\s*=\s*(.*)$', line)
        if m:
            for item in m.group(1).split(';')[0].split(','):
                item = item.strip()
                pm = re.search(r':(\d+)$', item)
                if pm:
                    ports.append(int(pm.group(1)))
    return ports


class Ftpgate:
    """ftpgate -f -c <tempdir>/ftpgate.ini; stderr+stdout to a log file.
    .port (first listen port), .ports, .log(), .log_mark()/.log_since(),
    .alive(), .stop() (SIGTERM, SIGKILL after 5 s; returns exit status)."""

    def __init__(self, config, wait=True, timeout=10.0, args=()):
        self.text = render_config(config)
        self.dir = tmpdir('ftpgate-')
        self.conf = os.path.join(self.dir, 'ftpgate.ini')
        with open(self.conf, 'w') as f:
            f.write(self.text)
        self.ports = _listen_ports(self.text)
        self.port = self.ports[0] if self.ports else None
        self.log_path = os.path.join(self.dir, 'ftpgate.log')
        self._logf = open(self.log_path, 'wb')
        if not os.access(FTPGATE, os.X_OK):
            raise AssertionError('ftpgate binary not found: %s' % FTPGATE)
        self.proc = subprocess.Popen([FTPGATE, '-f', '-c', self.conf] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf)
        _procs.append(self.proc)
        started_gates.append(self)
        if wait:
            try:
                wait_listening(self.proc, self.ports, timeout, 'ftpgate', self.log)
            except BaseException:
                self.stop()
                raise

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def log_mark(self):
        return os.path.getsize(self.log_path)

    def log_since(self, mark):
        with open(self.log_path, 'rb') as f:
            f.seek(mark)
            return f.read().decode('utf-8', 'replace')

    def wait_log(self, pattern, mark=0, timeout=5.0):
        """Wait until the log after `mark` matches regex `pattern`; return
        the match or None."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_since(mark))
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        rc = _stop_proc(self.proc)
        self._logf.close()
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def run_ftpgate(args, timeout=10):
    """Run the binary with args (no -f); return CompletedProcess (text)."""
    return subprocess.run([FTPGATE] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------
# clients

class RecordingFTP(ftplib.FTP):
    """ftplib.FTP that records commands sent (.sent) and replies (.replies)."""

    def __init__(self, *a, **kw):
        self.sent = []
        self.replies = []
        self.dialog = []     # ('>', command) / ('<', reply) in order
        super().__init__(*a, **kw)

    def putcmd(self, line):
        self.sent.append(line)
        self.dialog.append(('>', line))
        super().putcmd(line)

    def getmultiline(self):
        r = super().getmultiline()
        self.replies.append(r)
        self.dialog.append(('<', r))
        return r

    def reply_to(self, command):
        """First reply read after the first `command` sent, or None."""
        seen = False
        for d, text in self.dialog:
            if d == '>' and text == command:
                seen = True
            elif d == '<' and seen:
                return text
        return None


def ftp_login(port, host='127.0.0.1', timeout=20, user='u', passwd='p', cls=RecordingFTP):
    f = cls()
    f.connect(host, port, timeout=timeout)
    f.login(user, passwd)
    return f


def retr_bytes(ftp, name, rest=None):
    buf = bytearray()
    ftp.retrbinary('RETR ' + name, buf.extend, rest=rest)
    return bytes(buf)


def curl(args, timeout=90):
    """Run curl with args; return CompletedProcess (bytes).  Raises with the
    verbose output if curl fails."""
    cmd = [CURL, '-sS', '--max-time', str(int(timeout) - 5)] + list(args)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError('curl failed (exit %d): %s\nstderr:\n%s'
                             % (r.returncode, ' '.join(cmd),
                                r.stderr.decode('utf-8', 'replace')[-4000:]))
    return r


def recv_until_closed(sock, timeout):
    """Read until EOF/reset; return (data, how) with how in
    {'eof','reset','timeout'}."""
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), 'timeout'
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            return bytes(data), 'timeout'
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), 'reset'
        if not b:
            return bytes(data), 'eof'
        data.extend(b)


# --------------------------------------------------------------------------
# TAP runner

class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout('test case timed out')


def diag(text):
    for line in str(text).rstrip('\n').split('\n'):
        sys.stdout.write('# %s\n' % line)
    sys.stdout.flush()


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = []
        signal.signal(signal.SIGALRM, _alarm)

    def _line(self, s):
        sys.stdout.write(s + '\n')
        sys.stdout.flush()

    def case(self, name, fn, timeout=60):
        self.n += 1
        first_gate = len(started_gates)
        t0 = time.monotonic()
        signal.alarm(int(timeout))
        err = None
        try:
            fn()
        except BaseException as e:   # noqa: includes CaseTimeout, SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            err = traceback.format_exc()
        finally:
            signal.alarm(0)
        dt = time.monotonic() - t0
        if err is None:
            self._line('ok %d - %s' % (self.n, name))
        else:
            self.failed.append(self.n)
            self._line('not ok %d - %s' % (self.n, name))
            diag(err)
            for g in started_gates[first_gate:]:
                lines = g.log().splitlines()
                diag('ftpgate log (%s), last %d lines:' % (g.conf, min(60, len(lines))))
                diag('\n'.join('  ' + l for l in lines[-60:]) or '  (empty)')
        diag('%s: %.2f s' % (name, dt))
        return err is None

    def skip(self, name, reason):
        self.n += 1
        self._line('ok %d - %s # SKIP %s' % (self.n, name, reason))

    def bail(self, reason):
        self._line('Bail out! %s' % reason)
        sys.exit(1)

    def done(self):
        self._line('1..%d' % self.n)
        if self.failed:
            diag('failed: %s' % ' '.join(map(str, self.failed)))
        sys.exit(1 if self.failed else 0)
