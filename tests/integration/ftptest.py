"""ftptest: harness for ftpgate's integration tests (TAP output).

Only the Python standard library is needed in the test process.  The FTP
backend is pyftpdlib, run in a subprocess by FTPTEST_PYTHON (default
/usr/bin/python3, which on Debian has python3-pyftpdlib).

Environment:
  FTPGATE         path of the ftpgate binary (default <srcdir>/src/ftpgate)
  FTPGATE_SRCDIR  source tree (default: three levels above this file)
  FTPTEST_PYTHON  python with pyftpdlib for the backend server
  FTPTEST_KEEP=1  keep temporary directories (logs, configs) after the run
  FTPTEST_ONLY    regex: run only the cases whose name matches (others skip)
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


def read_text(path):
    """A file's content as text ('' if it cannot be read)."""
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def run_cmd(cmd, timeout=60, check=True, **kw):
    """Run cmd (list); return CompletedProcess (bytes).  With check, a
    non-zero exit raises with the tail of its output."""
    r = subprocess.run(cmd, stdin=kw.pop('stdin', subprocess.DEVNULL), capture_output=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError('command failed (exit %d): %s\n%s'
                             % (r.returncode, ' '.join(cmd),
                                (r.stdout + r.stderr).decode('utf-8', 'replace')[-3000:]))
    return r


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


def backend_tree(listing, subdirs=()):
    """(ROOT, LOCAL, LISTDIR): a backend root with ROOT/up and ROOT/list
    holding LISTDIR/subdirs and random files of the sizes in listing
    ((name, bytes) pairs); LOCAL for the client's files."""
    root, local = tmpdir('ftproot-'), tmpdir('ftplocal-')
    listdir = os.path.join(root, 'list')
    os.makedirs(listdir)
    os.makedirs(os.path.join(root, 'up'))
    for d in subdirs:
        os.makedirs(os.path.join(listdir, d))
    for name, size in listing:
        make_random_file(os.path.join(listdir, name), nbytes=size)
    return root, local, listdir


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
    try:
        fd = os.open(os.path.join(lockdir, '%d.lock' % unit), os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return None     # another user's lock file: treat the unit as taken
    try:
        os.fchmod(fd, 0o666)    # so that runs as other users can lock it too
    except OSError:
        pass
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
    try:
        os.chmod(lockdir, 0o1777)   # shared by root and non-root test runs
    except OSError:
        pass
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
    """(port) set of TCP sockets in LISTEN state owned by pid, read from
    /proc/PID/net/tcp* (pid's own network namespace, unlike /proc/net)."""
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
    for tab in ('tcp', 'tcp6'):
        try:
            # pid's own view: right also for a process in another network namespace
            with open('/proc/%d/net/%s' % (pid, tab)) as f:
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
# network namespaces (documentation ranges only, made and deleted by a test)

IP = shutil.which('ip') or '/usr/sbin/ip'


def nsexec(ns, cmd):
    """cmd run in network namespace ns (cmd itself when ns is None).
    ip netns exec execs the command: the PID stays the command's."""
    return list(cmd) if ns is None else [IP, 'netns', 'exec', ns] + list(cmd)


def ns_sysctl(ns, name, value, timeout=20):
    """Set sysctl name (net.ipv4.ip_forward) to value in namespace ns."""
    path = '/proc/sys/' + name.replace('.', '/')
    run_cmd(nsexec(ns, ['/bin/sh', '-c', 'echo "$1" > "$2"', 'sh', str(value), path]),
            timeout=timeout)


def netns_unavailable():
    """None if this process can make network namespaces, else the reason."""
    if os.geteuid() != 0:
        return 'needs root to create network namespaces (euid %d)' % os.geteuid()
    if not os.access(IP, os.X_OK):
        return 'iproute2 "ip" command not found'
    return None


class Netns:
    """Network namespaces a test makes, joined by veth pairs: add() a
    namespace (lo up), veth() a pair, addr() an address on a device (set
    up); wait_addresses() until they are usable; delete() removes every
    namespace made (call it from the test's cleanup, after its processes in
    them are stopped).  Failing commands raise AssertionError."""

    def __init__(self, timeout=20):
        self.timeout = timeout
        self.created = []
        self.addrs = []      # (namespace, device, address) in the order added

    def _run(self, cmd, check=True):
        return run_cmd(cmd, timeout=self.timeout, check=check)

    def add(self, ns):
        """Make namespace ns, lo up."""
        # a leftover of an earlier run with the same PID cannot be in use
        if os.path.exists('/run/netns/' + ns):
            self._run([IP, 'netns', 'del', ns], check=False)
        self._run([IP, 'netns', 'add', ns])
        self.created.append(ns)
        self._run([IP, '-n', ns, 'link', 'set', 'lo', 'up'])

    def veth(self, ns, dev, peer_ns, peer_dev):
        """A veth pair made inside ns (dev) with its peer moved to peer_ns
        (peer_dev): nothing appears in the namespace the test runs in."""
        self._run([IP, '-n', ns, 'link', 'add', dev, 'type', 'veth',
                   'peer', 'name', peer_dev, 'netns', peer_ns])

    def addr(self, ns, dev, cidr):
        """Address cidr (a.b.c.d/len) on dev in ns, dev up."""
        self._run([IP, '-n', ns, 'addr', 'add', cidr, 'dev', dev])
        self._run([IP, '-n', ns, 'link', 'set', dev, 'up'])
        self.addrs.append((ns, dev, cidr.split('/')[0]))

    def wait_addresses(self, timeout=5.0):
        """None once every address is usable (not tentative), else the reason."""
        deadline = time.monotonic() + timeout
        for ns, _dev, a in self.addrs:
            while True:
                out = run_cmd([IP, '-n', ns, '-o', 'addr', 'show'],
                              check=False).stdout.decode()
                if any((' %s/' % a) in ln and 'tentative' not in ln
                       for ln in out.splitlines()):
                    break
                if time.monotonic() > deadline:
                    return 'address %s in %s stays tentative' % (a, ns)
                time.sleep(0.05)
        return None

    def delete(self):
        for ns in list(self.created):
            try:
                subprocess.run([IP, 'netns', 'del', ns], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10)
            except Exception:
                pass
            self.created.remove(ns)


def netns_or_skip(make, cleanup):
    """Run make() (the test's namespaces: None, or the reason they cannot be
    made); on a reason or an exception, cleanup() and skip the whole file."""
    try:
        why = make()
    except Exception as e:   # noqa
        why = 'namespace set-up failed: %s' % str(e).replace('\n', ' | ')[:500]
    if why:
        cleanup()
        skip_all(why)


class NetnsTopology(Netns):
    """Three network namespaces with no default route, no forwarding:

      client PREFIXc-PID       gateway PREFIXg-PID                server PREFIXs-PID
      203.0.113.2/24 --veth-- 203.0.113.1/24 | 198.51.100.1/24 --veth-- 198.51.100.2/24

    .client, .gate, .server are the namespace names; build() makes them."""

    CLIENT_IP = '203.0.113.2'
    GATE_IP = '203.0.113.1'
    GATE_BACK_IP = '198.51.100.1'
    SERVER_IP = '198.51.100.2'

    def __init__(self, prefix):
        super().__init__()
        pid = os.getpid()
        self.client, self.gate, self.server = ('%s%s-%d' % (prefix, r, pid) for r in 'cgs')

    def build(self, timeout=20):
        """None, or the reason why namespaces cannot be made here."""
        why = netns_unavailable()
        if why:
            return why
        self.timeout = timeout
        try:
            for ns in (self.client, self.gate, self.server):
                self.add(ns)
            self.veth(self.gate, 'toclient', self.client, 'eth0')
            self.veth(self.gate, 'toserver', self.server, 'eth0')
        except AssertionError as e:
            return 'cannot make namespaces and veth pairs: %s' % (
                ' | '.join(str(e).strip().splitlines())[:500])
        for ns, dev, addr in self.addresses():
            self.addr(ns, dev, addr + '/24')
        # the gateway must not route between its two networks
        ns_sysctl(self.gate, 'net.ipv4.ip_forward', 0, timeout)
        return None

    def addresses(self):
        """(namespace, device, address) of every address of the topology."""
        return ((self.client, 'eth0', self.CLIENT_IP), (self.gate, 'toclient', self.GATE_IP),
                (self.gate, 'toserver', self.GATE_BACK_IP),
                (self.server, 'eth0', self.SERVER_IP))


# --------------------------------------------------------------------------
# HAProxy (Debian's haproxy package): a balancer, or accept-proxy in front of
# a server

HAPROXY = shutil.which('haproxy') or (
    '/usr/sbin/haproxy' if os.access('/usr/sbin/haproxy', os.X_OK) else None)


class Haproxy:
    """haproxy -db -f <tempdir>/haproxy.cfg with the given config text, in
    namespace ns when given; stdout and stderr (its log, with `log stdout`,
    and its warnings such as a server going DOWN) to .log_path.  Waits until
    it listens on ports.  .log(), .wait_log(pattern), .stop() (by PID)."""

    def __init__(self, cfg_text, ports, ns=None, timeout=10.0):
        self.dir = tmpdir('haproxy-')
        self.conf = os.path.join(self.dir, 'haproxy.cfg')
        with open(self.conf, 'w') as f:
            f.write(cfg_text)
        self.log_path = os.path.join(self.dir, 'haproxy.log')
        with open(self.log_path, 'wb') as lf:
            self.proc = subprocess.Popen(nsexec(ns, [HAPROXY, '-db', '-f', self.conf]),
                                         stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        _procs.append(self.proc)
        try:
            wait_listening(self.proc, ports, timeout, 'haproxy', self.log)
        except BaseException:
            self.stop()
            raise

    def log(self):
        return read_text(self.log_path)

    def wait_log(self, pattern, timeout=10.0):
        """The first match of regex pattern in the log, waiting up to
        timeout; AssertionError with the log's tail if it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError('haproxy did not log %r within %.0f s: %r'
                                     % (pattern, timeout, self.log()[-2000:]))
            time.sleep(0.1)

    def stop(self):
        return _stop_proc(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


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
    read-only, rooted at root_dir.  In network namespace ns when given.
    .port, .host, .banner, .log(), .stop()"""

    def __init__(self, root_dir, host='127.0.0.1', ipv6=False, port=0,
                 masquerade_address=None, no_epsv=False, timeout=60,
                 pasv_ports=None, long_banner=False, banner=None, ns=None):
        if ipv6 and host == '127.0.0.1':
            host = '::1'
        self.root = root_dir
        self.host = host
        self.banner = banner or 'ftptest-backend-%s ready' % os.urandom(4).hex()
        if long_banner:   # > 75 characters: pyftpdlib sends a multi-line 220
            self.banner += ' ' + 'x' * 80
        if pasv_ports is None:
            pasv_ports = port_range(100)
        self.pasv_ports = pasv_ports
        self._launch('pyftpd-', _SERVER_SCRIPT, 'pyftpdlib',
                     dict(root=root_dir, host=host, port=port, banner=self.banner,
                          timeout=timeout, pasv=list(pasv_ports),
                          masquerade=masquerade_address, no_epsv=no_epsv), ns)

    def _launch(self, prefix, script_text, what, cfg, ns=None):
        """Run script_text (a pyftpdlib server that prints its port) with
        cfg as JSON in a new temporary directory; set .dir, .proc, .port."""
        self.proc = None
        self.dir = tmpdir(prefix)
        script = os.path.join(self.dir, 'server.py')
        with open(script, 'w') as f:
            f.write(script_text)
        self.log_path = os.path.join(self.dir, 'server.log')
        self._logf = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(nsexec(ns, [SERVER_PYTHON, script, json.dumps(cfg)]),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._logf)
        _procs.append(self.proc)
        try:
            r, _, _ = select.select([self.proc.stdout], [], [], 15)
            line = self.proc.stdout.readline() if r else b''
            if not line.strip().isdigit():
                raise AssertionError('%s server did not start: %r\n%s'
                                     % (what, line, self.log()))
            self.port = int(line)
            wait_listening(self.proc, [self.port], 10, what, self.log)
        except BaseException:
            self.stop()
            raise

    def addr(self):
        return ('[%s]:%d' if ':' in self.host else '%s:%d') % (self.host, self.port)

    def log(self):
        return read_text(self.log_path)

    def stop(self):
        if self.proc is not None:
            _stop_proc(self.proc)
            self.proc.stdout.close()
            self._logf.close()
            self.proc = None

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
                passive_ports=None, log_level='debug', global_keys=None, **site):
    """Typical one-site config dict.  backend: 'host:port' or a PyftpdServer;
    global_keys: more [global] keys (after FTPTEST_WORKERS, so they win)."""
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
    g = {'log_level': log_level}
    if os.environ.get('FTPTEST_WORKERS'):      # a test file run again with N workers
        g['workers'] = os.environ['FTPTEST_WORKERS']
    g.update({k: str(v) for k, v in (global_keys or {}).items()})
    return {'global': g, 'site:test': s}


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
    """ftpgate -f -c <tempdir>/ftpgate.ini (after the wrapper command, if
    any, e.g. setpriv); stderr+stdout to a log file.
    .port (first listen port), .ports, .log(), .log_mark()/.log_since(),
    .alive(), .stop() (SIGTERM, SIGKILL after 5 s; returns exit status)."""

    def __init__(self, config, wait=True, timeout=10.0, args=(), ns=None, wait_ports=(),
                 wrapper=(), quick=None):
        """ns: run in that network namespace; wait_ports: more ports to
        wait for than the listen ones (passthrough's forwarded range);
        wrapper: a command prefix (setpriv with the unit's capabilities);
        quick: quick-mode options run instead of -c FILE (config is then the
        text `ftpgate -t` printed for them: its listen ports are waited for)."""
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
        conf = ['-c', self.conf] if quick is None else list(quick)
        self.proc = subprocess.Popen(list(wrapper) + nsexec(ns, [FTPGATE, '-f'] + conf +
                                                           list(args)),
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf)
        _procs.append(self.proc)
        started_gates.append(self)
        if wait:
            try:
                wait_listening(self.proc, list(self.ports) + list(wait_ports), timeout,
                               'ftpgate', self.log)
            except BaseException:
                self.stop()
                raise

    def log(self):
        return read_text(self.log_path)

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


def use_private_binary():
    """Run a private copy of the binary from now on: src/ftpgate may be
    rebuilt while a long test runs."""
    global FTPGATE
    d = tmpdir('ftpgate-bin-')
    shutil.copy2(FTPGATE, os.path.join(d, 'ftpgate'))
    FTPGATE = os.path.join(d, 'ftpgate')


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


def root_with(name):
    """A world-readable server root holding one file `name` (content: name);
    two servers with different names show in a listing which one answered."""
    d = tmpdir('ftproot-')
    os.chmod(d, 0o755)
    with open(os.path.join(d, name), 'w') as f:
        f.write(name + '\n')
    return d


def listing_of(port, source=None, host='127.0.0.1'):
    """Log in as u/p (from address `source` if given), NLST, QUIT; the names."""
    f = RecordingFTP()
    f.connect(host, port, timeout=20, source_address=(source, 0) if source else None)
    try:
        f.login('u', 'p')
        return f.nlst()
    finally:
        f.close()


def metrics_text(port, host='127.0.0.1'):
    """GET /metrics from ftpgate's metrics_listen; the text."""
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request('GET', '/metrics')
        return c.getresponse().read().decode()
    finally:
        c.close()


def gate_metrics(gate):
    """/metrics of a running Ftpgate whose config has metrics_listen = 127.0.0.1:PORT."""
    m = re.search(r'metrics_listen = 127\.0\.0\.1:(\d+)', gate.text)
    assert m, 'no metrics_listen in the config'
    return metrics_text(int(m.group(1)))


def check_config_errors(cases, head='[site:x]\nlisten = 127.0.0.1:2100\n'):
    """For each (body, regex): `ftpgate -t` on head + body exits 1 with a
    message matching regex (file:line: key: ...)."""
    d = tmpdir('cfg-')
    p = os.path.join(d, 'f.ini')
    for body, want in cases:
        with open(p, 'w') as f:
            f.write('%s%s\n' % (head, body))
        r = run_ftpgate(['-t', '-c', p])
        assert r.returncode == 1 and re.search(want, r.stderr), (body, r.stderr)


def retr_bytes(ftp, name, rest=None):
    buf = bytearray()
    ftp.retrbinary('RETR ' + name, buf.extend, rest=rest)
    return bytes(buf)


def sha_retr(ftp, name, rest=None):
    """RETR name (from rest); return (sha256 hex, byte count) of the data."""
    h = hashlib.sha256()
    n = [0]

    def cb(b):
        h.update(b)
        n[0] += len(b)
    ftp.retrbinary('RETR ' + name, cb, rest=rest)
    return h.hexdigest(), n[0]


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


def start_tap(*tools):
    """A Tap for a test script, after bailing out unless the ftpgate binary
    and each (what, path) of tools are executable."""
    t = Tap()
    if not os.access(FTPGATE, os.X_OK):
        t.bail('ftpgate binary not found: %s' % FTPGATE)
    for what, path in tools:
        if not os.access(path, os.X_OK):
            t.bail('%s not found' % what)
    return t


def skip_all(reason):
    """The whole test file skipped (TAP "1..0 # SKIP reason"); exits 0."""
    sys.stdout.write('1..0 # SKIP %s\n' % reason)
    sys.stdout.flush()
    sys.exit(0)


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = []
        signal.signal(signal.SIGALRM, _alarm)

    def _line(self, s):
        sys.stdout.write(s + '\n')
        sys.stdout.flush()

    def case(self, name, fn, timeout=60):
        only = os.environ.get('FTPTEST_ONLY')
        if only and not re.search(only, name):
            self.skip(name, 'not selected by FTPTEST_ONLY')
            return True
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


# --------------------------------------------------------------------------
# helpers for active-mode and hostile-peer tests (raw control connections,
# fake backends, memory checks)

def vm_rss_kb(pid):
    """Resident set size of pid in KiB (Linux /proc), or None."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


_sanitized = None


def ftpgate_sanitized():
    """True if the ftpgate binary is built with AddressSanitizer (its RSS
    then includes shadow memory and the free quarantine)."""
    global _sanitized
    if _sanitized is None:
        try:
            with open(FTPGATE, 'rb') as f:
                _sanitized = b'__asan_init' in f.read()
        except OSError:
            _sanitized = False
    return _sanitized


class RawCtl:
    """A raw FTP control connection: send exact bytes, read whole replies
    as bytes (multi-line replies up to their closing 'NNN ' line)."""

    def __init__(self, host, port, timeout=10.0, source=None):
        fam = socket.AF_INET6 if ':' in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = bytearray()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode('latin-1')
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout('timed out')
        self.sock.settimeout(left)
        b = self.sock.recv(65536)
        if not b:
            raise EOFError('connection closed')
        self.buf.extend(b)

    def reply(self, timeout=None):
        """Next complete reply (bytes, CRLFs included).  Raises AssertionError
        (with what was received) on EOF, reset or timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = re.match(rb'(\d{3})([- ])', bytes(self.buf[:4]))
            if m:
                if m.group(2) == b' ':
                    i = self.buf.find(b'\n')
                    if i >= 0:
                        r = bytes(self.buf[:i + 1])
                        del self.buf[:i + 1]
                        return r
                else:
                    code = m.group(1)
                    pat = re.compile(rb'(?m)^' + code + rb' [^\n]*\n')
                    mm = pat.search(bytes(self.buf), 4)
                    if mm:
                        r = bytes(self.buf[:mm.end()])
                        del self.buf[:mm.end()]
                        return r
            elif len(self.buf) >= 4 or (self.buf and b'\n' in self.buf):
                raise AssertionError('not an FTP reply: %r' % bytes(self.buf[:200]))
            try:
                self._fill(deadline)
            except (socket.timeout, EOFError, OSError) as e:
                raise AssertionError('no complete reply (%s); got %r'
                                     % (e, bytes(self.buf[:300])))

    def cmd(self, line, timeout=None):
        """Send line + CRLF, return the reply (bytes)."""
        self.send((line.encode('latin-1') if isinstance(line, str) else line) + b'\r\n')
        return self.reply(timeout)

    def pending(self, wait=0.3):
        """Whatever arrives within `wait` seconds (bytes), without blocking longer."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._fill(deadline)
            except (socket.timeout, EOFError, OSError):
                break
        r = bytes(self.buf)
        self.buf.clear()
        return r

    def until_closed(self, timeout):
        """(data, how): rest of the stream until EOF/reset/timeout."""
        data, how = recv_until_closed(self.sock, timeout)
        r = bytes(self.buf) + data
        self.buf.clear()
        return r, how

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def raw_greeted(port, host='127.0.0.1', timeout=10, source=None):
    """A RawCtl to port, past its 220 greeting."""
    c = RawCtl(host, port, timeout=timeout, source=source)
    g = c.reply()
    assert g.startswith(b'220'), 'greeting: %r' % g
    return c


def raw_login(c, user='u', passwd='p'):
    """USER and PASS on a RawCtl: 331 then 230."""
    r = c.cmd('USER ' + user)
    assert r.startswith(b'331'), 'USER: %r' % r
    r = c.cmd('PASS ' + passwd)
    assert r.startswith(b'230'), 'PASS: %r' % r


class FakeConn:
    """One control connection accepted by a FakeBackend."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()
        self.lines = []           # every command line received (str, latin-1)
        sock.settimeout(30)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode('latin-1')
        self.sock.sendall(data)

    def readline(self, timeout=30):
        """Next line without CRLF (str), or None at EOF/timeout."""
        self.sock.settimeout(timeout)
        while b'\n' not in self.buf:
            try:
                b = self.sock.recv(65536)
            except OSError:
                return None
            if not b:
                return None
            self.buf.extend(b)
        i = self.buf.index(b'\n')
        line = bytes(self.buf[:i]).rstrip(b'\r').decode('latin-1')
        del self.buf[:i + 1]
        self.lines.append(line)
        return line

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked in recv
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class FakeBackend:
    """A scripted, possibly misbehaving FTP 'server' on loopback.  Every
    accepted control connection runs handler(conn, fb) in a daemon thread
    (conn: FakeConn).  .host, .port, .addr(), .conns, .errors (exceptions
    raised by handlers), .events (free-form list for handlers), .stop()."""

    def __init__(self, handler, host='127.0.0.1'):
        import threading
        self.handler = handler
        self.host = host
        fam = socket.AF_INET6 if ':' in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.errors = []
        self.events = []
        self._stop = False
        self._threads = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def addr(self):
        return ('[%s]:%d' if ':' in self.host else '%s:%d') % (self.host, self.port)

    def _accept_loop(self):
        import threading
        while not self._stop:
            r, _, _ = select.select([self.lsock], [], [], 0.1)
            if not r:
                continue
            try:
                s, peer = self.lsock.accept()
            except OSError:
                continue
            c = FakeConn(s, peer)
            with self._lock:
                self.conns.append(c)
            th = threading.Thread(target=self._run, args=(c,), daemon=True)
            self._threads.append(th)
            th.start()

    def _run(self, c):
        try:
            self.handler(c, self)
        except Exception:   # noqa
            if not self._stop:
                self.errors.append(traceback.format_exc())

    def stop(self):
        self._stop = True
        self._acceptor.join(2)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            for c in self.conns:
                c.close()
        for th in self._threads:
            th.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


# --------------------------------------------------------------------------
# helpers for TLS tests: certificates (openssl CLI), a pyftpdlib TLS backend
# (needs python3-openssl), vsftpd in the foreground, ftplib FTPS clients

import ssl  # noqa: E402

OPENSSL = shutil.which('openssl') or '/usr/bin/openssl'
VSFTPD = '/usr/sbin/vsftpd'


def _openssl(args, cwd):
    r = subprocess.run([OPENSSL] + list(args), cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError('openssl %s failed (%d):\n%s'
                             % (' '.join(args), r.returncode, r.stderr[-2000:]))


def make_tls_certs(d):
    """Test PKI in directory d (made world-readable, keys included: vsftpd's
    unprivileged processes may read them).  Returns a dict of paths:
      ca, ca_key          CA that signed `cert`
      cert, key           server certificate for IP 127.0.0.1 (SAN), signed by ca
      chain               cert followed by ca (a chain file)
      self_cert, self_key self-signed certificate for 127.0.0.1
      other_ca            a CA that signed nothing used here
      other_key           a key that matches no certificate
      garbage             a file that is not PEM"""
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    P = lambda n: os.path.join(d, n)  # noqa: E731
    rsa = ['-newkey', 'rsa:2048', '-nodes']
    _openssl(['req', '-x509'] + rsa + ['-keyout', 'ca.key', '-out', 'ca.pem', '-days', '30',
              '-subj', '/CN=ftptest CA', '-addext', 'basicConstraints=critical,CA:TRUE',
              '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], d)
    _openssl(['req'] + rsa + ['-keyout', 'server.key', '-out', 'server.csr',
              '-subj', '/CN=127.0.0.1'], d)
    with open(P('server.ext'), 'w') as f:
        f.write('subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n'
                'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n')
    _openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
              '-set_serial', str(random.randint(1, 1 << 62)), '-days', '30',
              '-extfile', 'server.ext', '-out', 'server.pem'], d)
    _openssl(['req', '-x509'] + rsa + ['-keyout', 'self.key', '-out', 'self.pem',
              '-days', '30', '-subj', '/CN=127.0.0.1',
              '-addext', 'subjectAltName=IP:127.0.0.1'], d)
    _openssl(['req', '-x509'] + rsa + ['-keyout', 'other-ca.key', '-out', 'other-ca.pem',
              '-days', '30', '-subj', '/CN=ftptest other CA',
              '-addext', 'basicConstraints=critical,CA:TRUE'], d)
    _openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048',
              '-out', 'other.key'], d)
    with open(P('chain.pem'), 'w') as f:
        for n in ('server.pem', 'ca.pem'):
            with open(P(n)) as g:
                f.write(g.read())
    with open(P('garbage.pem'), 'w') as f:
        f.write('this is not a certificate\n' + os.urandom(64).hex() + '\n')
    for n in os.listdir(d):
        os.chmod(P(n), 0o644)
    return dict(ca=P('ca.pem'), ca_key=P('ca.key'), cert=P('server.pem'), key=P('server.key'),
                chain=P('chain.pem'), self_cert=P('self.pem'), self_key=P('self.key'),
                other_ca=P('other-ca.pem'), other_key=P('other.key'),
                garbage=P('garbage.pem'))


def make_self_signed(d, days=30):
    """A self-signed P-256 certificate for 127.0.0.1 in d, valid for days:
    (cert, key) paths."""
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    _openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
              '-nodes', '-keyout', key, '-out', cert, '-days', str(days),
              '-subj', '/CN=127.0.0.1'], d)
    return cert, key


_TLS_SERVER_SCRIPT = r'''
import json, logging, sys
cfg = json.loads(sys.argv[1])
from OpenSSL import SSL
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format='%(asctime)s %(levelname)s %(message)s')
auth = DummyAuthorizer()
auth.add_user('u', 'p', cfg['root'], perm='elradfmwMT')
auth.add_anonymous(cfg['root'])

class Handler(TLS_FTPHandler):
    pass

Handler.certfile = cfg['cert']
Handler.keyfile = cfg['key']
Handler.tls_control_required = True
Handler.tls_data_required = True
if cfg.get('tls13_only'):
    Handler.ssl_options |= (SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1 | SSL.OP_NO_TLSv1_2)
Handler.authorizer = auth
Handler.banner = cfg['banner']
Handler.timeout = cfg['timeout']
Handler.auth_failed_timeout = 0.1
Handler.permit_foreign_addresses = False
Handler.passive_ports = range(cfg['pasv'][0], cfg['pasv'][1] + 1)
if cfg.get('masquerade'):
    Handler.masquerade_address = cfg['masquerade']
server = FTPServer((cfg['host'], cfg['port']), Handler)
server.max_cons = 1024
sys.stdout.write('%d\n' % server.socket.getsockname()[1])
sys.stdout.flush()
server.serve_forever()
'''


class PyftpdTLSServer(PyftpdServer):
    """pyftpdlib TLS_FTPHandler (explicit FTPS, tls_control_required and
    tls_data_required) in a subprocess: user u/p + anonymous read-only,
    rooted at root_dir.  tls13_only: the server refuses TLS < 1.3.
    masquerade_address: the address its 227 announces.  Same interface as
    PyftpdServer."""

    def __init__(self, root_dir, certfile, keyfile, host='127.0.0.1', port=0,
                 timeout=60, pasv_ports=None, tls13_only=False, masquerade_address=None):
        self.root = root_dir
        self.host = host
        self.banner = 'ftptest-tls-backend-%s ready' % os.urandom(4).hex()
        if pasv_ports is None:
            pasv_ports = port_range(100)
        self.pasv_ports = pasv_ports
        self._launch('pyftpd-tls-', _TLS_SERVER_SCRIPT, 'pyftpdlib TLS',
                     dict(root=root_dir, host=host, port=port, banner=self.banner,
                          timeout=timeout, pasv=list(pasv_ports), cert=certfile,
                          key=keyfile, tls13_only=tls13_only,
                          masquerade=masquerade_address))


def pyftpdlib_tls_available():
    """None if the pyftpdlib TLS backend can run, else the reason."""
    r = subprocess.run([SERVER_PYTHON, '-c', 'import OpenSSL, pyftpdlib.handlers as h; '
                        'h.TLS_FTPHandler'], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return 'pyftpdlib TLS (python3-openssl) not usable by %s: %s' % (
            SERVER_PYTHON, r.stderr.strip().splitlines()[-1:] or '?')
    return None


def _descendants(pid):
    """PIDs of all descendants of pid (Linux /proc)."""
    kids = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def vsftpd_unavailable():
    """None if VsftpdServer can run here, else the reason."""
    if not os.access(VSFTPD, os.X_OK):
        return '%s not installed (tools/install-deps.sh installs it)' % VSFTPD
    if os.geteuid() == 0:
        import pwd
        try:
            pwd.getpwnam('ftp')
        except KeyError:
            return 'running as root but there is no "ftp" user for vsftpd'
    return None


class ForkingServer:
    """Common part of the servers that fork a process per session (vsftpd,
    ProFTPD, Pure-FTPd): a temporary directory .dir with a login root .root
    holding a writable .up (owned by up_owner (uid, gid) when given), a
    process started in its own session (stdout and stderr to .out_path) and
    stopped by PID with every descendant (sessions call setsid).  Subclasses
    set .kind, .host, .port and may extend log()."""

    kind = 'server'

    def _make_tree(self, prefix, root_name, up_owner=None, more_dirs=()):
        self.proc = None
        self.dir = tmpdir(prefix)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, root_name)
        self.up = os.path.join(self.root, 'up')
        for p in (self.root, self.up) + tuple(os.path.join(self.dir, d) for d in more_dirs):
            os.makedirs(p)
            os.chmod(p, 0o755)
        if up_owner is not None:
            os.chown(self.up, up_owner[0], up_owner[1])
        self.out_path = os.path.join(self.dir, 'stdout-stderr.log')

    def _start(self, cmd, env=None, ns=None, timeout=15):
        self._logf = open(self.out_path, 'wb')
        self.proc = subprocess.Popen(nsexec(ns, cmd), stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=self._logf, env=env,
                                     start_new_session=True)
        _procs.append(self.proc)
        try:
            wait_listening(self.proc, [self.port], timeout, self.kind, self.log)
        except BaseException:
            self.stop()
            raise

    def addr(self):
        return '%s:%d' % (self.host, self.port)

    def put(self, src):
        """Hard-link (or copy) src into the login root."""
        dst = os.path.join(self.root, os.path.basename(src))
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def log(self):
        return read_text(self.out_path)

    def stop(self):
        """The listener and its session processes, by PID."""
        if self.proc is None:
            return
        kids = _descendants(self.proc.pid) if self.proc.poll() is None else []
        _stop_proc(self.proc)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._logf.close()
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


class VsftpdServer(ForkingServer):
    """vsftpd in the foreground (listen=YES, background=NO) on host,
    anonymous login only (no password), anon_root .root (not writable)
    with a writable .up; passive ports in their own range, announced as
    pasv_address (default host).  With cert/key: explicit FTPS
    (implicit_ssl with implicit=True), forced for anonymous control and
    data unless force_tls=False, require_ssl_reuse=YES unless
    ssl_reuse=False.  In network namespace ns when given.  extra: more
    'key=value' lines.  .port, .addr(), .log(), .stop().  Run as root,
    sessions run as user ftp; otherwise run_as_launching_user=YES."""

    kind = 'vsftpd'

    def __init__(self, cert=None, key=None, pasv_ports=None, ssl_reuse=True,
                 active=True, extra=(), host='127.0.0.1', port=None, pasv_address=None,
                 force_tls=True, implicit=False, ns=None):
        root_mode = os.geteuid() == 0
        owner = None
        if root_mode:
            import pwd
            pw = pwd.getpwnam('ftp')
            owner = (pw.pw_uid, pw.pw_gid)
        self._make_tree('vsftpd-', 'anon', owner, ('empty',))
        self.host = host
        if pasv_ports is None:
            pasv_ports = port_range(100)
        self.pasv_ports = pasv_ports
        self.port = port or free_port(host)
        self.xfer_log = os.path.join(self.dir, 'vsftpd-protocol.log')
        conf = ['listen=YES', 'listen_ipv6=NO', 'listen_address=%s' % host,
                'listen_port=%d' % self.port, 'background=NO',
                'seccomp_sandbox=NO', 'isolate=NO', 'isolate_network=NO',
                'secure_chroot_dir=%s' % os.path.join(self.dir, 'empty'),
                'anonymous_enable=YES', 'local_enable=NO', 'no_anon_password=YES',
                'anon_root=%s' % self.root, 'write_enable=YES', 'anon_upload_enable=YES',
                'anon_umask=022', 'anon_other_write_enable=YES',
                'pasv_enable=YES', 'pasv_address=%s' % (pasv_address or host),
                'pasv_min_port=%d' % pasv_ports[0], 'pasv_max_port=%d' % pasv_ports[1],
                'port_enable=%s' % ('YES' if active else 'NO'),
                'connect_from_port_20=NO', 'max_clients=0', 'max_per_ip=0',
                'dirmessage_enable=NO', 'idle_session_timeout=120',
                'data_connection_timeout=60', 'syslog_enable=NO',
                'xferlog_enable=YES', 'xferlog_std_format=NO', 'log_ftp_protocol=YES',
                'vsftpd_log_file=%s' % self.xfer_log]
        if not root_mode:
            conf.append('run_as_launching_user=YES')
        if cert:
            force = 'YES' if force_tls else 'NO'
            conf += ['ssl_enable=YES', 'rsa_cert_file=%s' % cert,
                     'rsa_private_key_file=%s' % (key or cert),
                     'allow_anon_ssl=YES', 'force_anon_logins_ssl=%s' % force,
                     'force_anon_data_ssl=%s' % force, 'force_local_logins_ssl=YES',
                     'force_local_data_ssl=YES', 'ssl_tlsv1=YES', 'ssl_sslv2=NO',
                     'ssl_sslv3=NO', 'ssl_ciphers=HIGH', 'ssl_request_cert=NO',
                     'require_ssl_reuse=%s' % ('YES' if ssl_reuse else 'NO'),
                     'implicit_ssl=%s' % ('YES' if implicit else 'NO'),
                     'debug_ssl=YES']
        conf += list(extra)
        self.conf = os.path.join(self.dir, 'vsftpd.conf')
        with open(self.conf, 'w') as f:
            f.write('\n'.join(conf) + '\n')
        os.chmod(self.conf, 0o644)
        self._start([VSFTPD, self.conf], ns=ns)

    def log(self):
        # protocol log first: offsets into it stay valid
        return '\n'.join((read_text(self.xfer_log), read_text(self.out_path)))


def tls_client_context(cafile=None, min_version=None, max_version=None):
    """ssl.SSLContext for test clients: verifies against cafile (host name
    checked), or verifies nothing when cafile is None."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


class RecordingFTP_TLS(RecordingFTP, ftplib.FTP_TLS):
    """ftplib.FTP_TLS (stock: data connections do NOT resume the control
    connection's TLS session) that records commands and replies."""


class ReuseFTP_TLS(RecordingFTP_TLS):
    """FTP_TLS whose protected data connections resume the control
    connection's TLS session (as vsftpd's require_ssl_reuse wants)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class ImplicitFTP_TLS(ReuseFTP_TLS):
    """Implicit FTPS: TLS from the first byte of the control connection."""

    def connect(self, host='', port=0, timeout=-999, source_address=None):
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.af = sock.family
        self.sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.file = self.sock.makefile('r', encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


# --- shared by test_hostile.py and test_regressions.py ---------------------

def open_fds(pid):
    """How many descriptors pid has open."""
    return len(os.listdir('/proc/%d/fd' % pid))


def cpu_seconds(pid):
    """utime + stime of pid in seconds (/proc/PID/stat fields 14, 15)."""
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(')') + 2:].split()    # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


class LowFdGate(Ftpgate):
    """Ftpgate started under RLIMIT_NOFILE soft:hard (prlimit execs
    ftpgate, so .proc.pid is ftpgate's; without prlimit, setrlimit in the
    child)."""

    def __init__(self, config, soft, hard, timeout=10.0):
        self.text = render_config(config)
        self.dir = tmpdir('ftpgate-')
        self.conf = os.path.join(self.dir, 'ftpgate.ini')
        with open(self.conf, 'w') as f:
            f.write(self.text)
        self.ports = _listen_ports(self.text)
        self.port = self.ports[0]
        self.log_path = os.path.join(self.dir, 'ftpgate.log')
        self._logf = open(self.log_path, 'wb')
        cmd = [FTPGATE, '-f', '-c', self.conf]
        pre = None
        prlimit = shutil.which('prlimit')
        if prlimit:
            cmd = [prlimit, '--nofile=%d:%d' % (soft, hard), '--'] + cmd
        else:
            def pre():
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf, preexec_fn=pre)
        _procs.append(self.proc)
        started_gates.append(self)
        try:
            wait_listening(self.proc, self.ports, timeout, 'ftpgate', self.log)
        except BaseException:
            self.stop()
            raise
