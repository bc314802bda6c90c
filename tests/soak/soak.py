#!/usr/bin/python3
"""soak: many concurrent FTP sessions through ftpgate to real servers for a
set time while a fault injector breaks things around them; then proves
nothing was lost, nothing hung and nothing leaked.

Owns: the soak run (backends, one ftpgate, the session workers, the fault
injector, the final checks and the one summary line).  Helpers (servers,
ftpgate, certificates, port ranges) come from tests/integration/ftptest.py.

Sites of the one ftpgate (loopback only):
  py   plain             -> pyftpdlib (user u/p)
  vs   plain             -> vsftpd (anonymous, uploads in up/)
  tls  tls = terminate   -> the same pyftpdlib (client side FTPS only)
  pt   tls = passthrough -> a second vsftpd with explicit FTPS forced
       (listens on 127.0.0.2; passive range forwarded 1:1)
Each session: connect, (AUTH TLS, PBSZ, PROT P), login, 1-6 operations
(LIST, RETR, REST+RETR, STOR, STOR+APPE, RETR+ABOR) over PASV, EPSV, PORT
or EPRT (pt: passive only), QUIT.

Faults (seeded schedule, one every --fault-interval s on average):
  process: backend_kill (SIGKILL a backend and its sessions, restart it on
  the same port), emfile (prlimit --pid PID --nofile=N:N below ftpgate's
  open descriptors for a while, then the old limit), sighup (changed
  config), sigusr1 (xferlog renamed first: reopened);
  client (taken by the next session that starts): reset_ctl_mid_reply,
  reset_ctl_mid_tls, reset_ctl_mid_xfer, reset_data, reset_data_mid_tls,
  half_close_ctl, half_close_data, stall_reader, hostile.

Checks: a 226 for RETR means the bytes read hash to the file's (from its
REST offset); a 226 for STOR/APPE means the file the backend stored hashes
to what was sent; a 226 for LIST means every pool file is listed; a client
wait longer than the configured timeouts plus a margin with neither an
answer nor a closed connection is a hang; after the run ftpgate's open
descriptors equal the idle count measured before it, ftpgate_sessions_open
is 0, RSS growth stays under --rss-bound-mib; ftpgate's stderr has no
sanitizer report.  Exit 0 only if mismatches, hangs and leaks are all 0.

Usage: soak.py [--seconds 600] [--sessions 500] [--seed N] [--max-mib 256]
Environment as for ftptest.py (FTPGATE: the binary under test)."""

import argparse
import collections
import hashlib
import http.client
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'integration'))
import ftptest as T  # noqa: E402

MiB = T.MiB
CLIENT_FAULTS = ('reset_ctl_mid_reply', 'reset_ctl_mid_tls', 'reset_ctl_mid_xfer',
                 'reset_data', 'reset_data_mid_tls', 'half_close_ctl', 'half_close_data',
                 'stall_reader', 'hostile')
PROCESS_FAULTS = ('backend_kill', 'emfile', 'sighup', 'sigusr1')
ALL_FAULTS = PROCESS_FAULTS + CLIENT_FAULTS
SAN_RE = re.compile(r'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|'
                    r'SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)')
PT_IP = '127.0.0.2'

# ftpgate timeouts (seconds); a client waits this much longer before it
# calls silence a hang.
TMO = dict(connect_timeout=10, login_timeout=20, idle_timeout=20, data_timeout=15)
MARGIN = 15
CT = max(TMO.values()) + MARGIN


class Closed(Exception):
    """The peer closed or reset the connection (an acceptable outcome)."""


class Hang(Exception):
    """No answer and no close within CT seconds."""


class OpFail(Exception):
    """An error reply; the session may go on."""


# --------------------------------------------------------------------------
# bookkeeping

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()       # free-form counters
        self.faults = collections.Counter()
        self.codes = collections.Counter()   # unexpected final replies by code
        self.mismatches = []
        self.hangs = []
        self.bytes = 0

    def inc(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def fault(self, kind):
        with self.lock:
            self.faults[kind] += 1

    def code(self, what, code):
        with self.lock:
            self.codes['%s:%s' % (what, code)] += 1

    def mismatch(self, sess, text):
        with self.lock:
            self.mismatches.append('%s %s' % (sess.tag(), text))

    def hang(self, sess, text):
        with self.lock:
            self.hangs.append('%s %s' % (sess.tag(), text))

    def verified(self, n):
        with self.lock:
            self.c['verified'] += 1
            self.bytes += n


class PoolFile:
    def __init__(self, path, size):
        self.path = path
        self.name = os.path.basename(path)
        self.size = size
        self.sha = T.sha256_file(path)

    def sha_range(self, start, end):
        if start == 0 and end == self.size:
            return self.sha
        h = hashlib.sha256()
        with open(self.path, 'rb') as f:
            f.seek(start)
            left = end - start
            while left > 0:
                b = f.read(min(left, 1 << 20))
                if not b:
                    break
                h.update(b)
                left -= len(b)
        return h.hexdigest()


POOL_SIZES = [0, 1, 517, 4095, 65536 + 3, 256 * 1024 - 1, MiB + 13, 4 * MiB - 7,
              16 * MiB + 1, 64 * MiB + 3, 256 * MiB]


def make_pool(d, max_mib):
    cap = int(max_mib * MiB)
    sizes = sorted(set([s for s in POOL_SIZES if s <= cap] + [cap]))
    out = []
    for i, s in enumerate(sizes):
        p = os.path.join(d, 'f%02d-%d.bin' % (i, s))
        T.make_random_file(p, nbytes=s)
        os.chmod(p, 0o644)
        out.append(PoolFile(p, s))
    return out


def pick_file(rng, pool, big=False):
    if big:
        cands = [f for f in pool if f.size >= 64 * 1024] or pool[-1:]
        return rng.choice(cands)
    w = [1.0 if f.size <= MiB else 0.3 if f.size <= 16 * MiB else 0.04 for f in pool]
    return rng.choices(pool, weights=w)[0]


# --------------------------------------------------------------------------
# backends that can be killed and restarted on the same ports

class PyBackend:
    name = 'pyftpdlib'
    user, passwd = 'u', 'p'

    def __init__(self, root, pasv_width):
        self.root = root
        os.makedirs(os.path.join(root, 'up'))
        self.pasv = T.port_range(pasv_width)
        self.srv = T.PyftpdServer(root, pasv_ports=self.pasv, timeout=120)
        self.port = self.srv.port

    def addr(self):
        return self.srv.addr()

    def up_path(self, name):
        return os.path.join(self.root, 'up', name)

    def kill(self):
        try:
            os.kill(self.srv.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.srv.stop()

    def start(self):
        self.srv = T.PyftpdServer(self.root, port=self.port, pasv_ports=self.pasv, timeout=120)

    def stop(self):
        self.srv.stop()


class VsBackend:
    name = 'vsftpd'
    user, passwd = 'anonymous', 'soak@'

    def __init__(self, pasv_width=None, pasv=None, cert=None, key=None, extra=()):
        self.pasv = pasv or T.port_range(pasv_width)
        self.srv = T.VsftpdServer(cert, key, pasv_ports=self.pasv, extra=extra)
        self.root = self.srv.root
        self.port = self.srv.port
        if cert:
            self.name = 'vsftpd-tls'

    def addr(self):
        return self.srv.addr()

    def up_path(self, name):
        return os.path.join(self.srv.up, name)

    def kill(self):
        p = self.srv.proc
        if p is None:
            return
        kids = T._descendants(p.pid)
        for pid in [p.pid] + kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        if p in T._procs:
            T._procs.remove(p)
        self.srv._logf.close()
        self.srv.proc = None

    def start(self):
        s = self.srv
        s._start([T.VSFTPD, s.conf], timeout=30)  # a loaded machine is slow to fork

    def stop(self):
        self.srv.stop()


class Site:
    def __init__(self, name, backend, host, tls, modes, prange):
        self.name = name
        self.backend = backend
        self.host = host
        self.tls = tls                 # None, 'terminate', 'passthrough'
        self.modes = modes
        self.prange = prange
        self.port = T.free_port(host)


# --------------------------------------------------------------------------
# a client session on raw sockets (exact control over timeouts and resets)

_CTX = T.tls_client_context()
# Python sets OP_IGNORE_UNEXPECTED_EOF: a TLS stream cut without close_notify
# would read as a clean end.  The soak's client wants to see the cut.
_CTX.options &= ~getattr(ssl, 'OP_IGNORE_UNEXPECTED_EOF', 0)
_HELLO = None


def client_hello():
    """The bytes of a real TLS ClientHello (to send a prefix of)."""
    global _HELLO
    if _HELLO is None:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        o = _CTX.wrap_bio(inc, out, server_hostname='127.0.0.1')
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
        _HELLO = out.read()
    return _HELLO


def rst(sock):
    """Close with SO_LINGER 0: the peer gets a TCP RST."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def readable(sock, timeout):
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


class Session:
    def __init__(self, run, site, rng, sid):
        self.run = run
        self.st = run.st
        self.site = site
        self.rng = rng
        self.sid = sid
        self.sock = None
        self.buf = bytearray()
        self.lport = 0
        self.step = 'connect'
        self.nup = 0
        self.rest_sent = 0      # REST offset sent, not yet consumed
        self.stale_rest = 0     # REST offset of the last transfer command, if it failed
        self.prev_stale = 0     # stale_rest when the current transfer command was sent

    def tag(self):
        return '[session %d site %s client port %d step %s]' % (
            self.sid, self.site.name, self.lport, self.step)

    # control connection ----------------------------------------------------
    def connect(self):
        self.step = 'connect'
        try:
            self.sock = socket.create_connection((self.site.host, self.site.port), timeout=CT)
        except socket.timeout:
            raise Hang('TCP connect to ftpgate timed out')
        except OSError as e:
            raise Closed('connect: %s' % e)
        self.lport = self.sock.getsockname()[1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode('latin-1')
        self.sock.settimeout(CT)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Hang('control send blocked')
        except OSError as e:
            raise Closed('send: %s' % e)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hang('no reply')
        self.sock.settimeout(left)
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            raise Hang('no reply')
        except (OSError, ValueError) as e:
            raise Closed('recv: %s' % e)
        if not b:
            raise Closed('eof')
        self.buf.extend(b)

    def reply(self):
        """(code, text) of the next complete reply."""
        deadline = time.monotonic() + CT
        while True:
            m = re.match(rb'(\d{3})([- ])', bytes(self.buf[:4]))
            if m:
                if m.group(2) == b' ':
                    i = self.buf.find(b'\n')
                    if i >= 0:
                        r = bytes(self.buf[:i + 1])
                        del self.buf[:i + 1]
                        return int(m.group(1)), r
                else:
                    pat = re.compile(rb'(?m)^' + m.group(1) + rb' [^\n]*\n')
                    mm = pat.search(bytes(self.buf), 4)
                    if mm:
                        r = bytes(self.buf[:mm.end()])
                        del self.buf[:mm.end()]
                        return int(m.group(1)), r
            elif len(self.buf) >= 4:
                self.st.code('garbled', 'reply')
                raise Closed('not a reply: %r' % bytes(self.buf[:80]))
            self._fill(deadline)

    def cmd(self, line):
        self.step = line.split(' ')[0]
        self.send(line + '\r\n')
        return self.reply()

    def expect(self, line, *ok):
        code, text = self.cmd(line)
        if code not in ok:
            self.st.code(line.split(' ')[0], code)
            if code == 421:
                raise Closed('421')
            raise OpFail('%s -> %r' % (line, text[:100]))
        return code, text

    def auth_tls(self):
        self.expect('AUTH TLS', 234)
        self.step = 'TLS handshake'
        self.sock.settimeout(CT)
        try:
            self.sock = _CTX.wrap_socket(self.sock, server_hostname='127.0.0.1')
        except socket.timeout:
            raise Hang('control TLS handshake')
        except OSError as e:
            raise Closed('control TLS handshake: %s' % e)

    def login(self):
        b = self.site.backend
        code, _ = self.expect('USER ' + b.user, 230, 331)
        if code == 331:
            self.expect('PASS ' + b.passwd, 230)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    # data connections ------------------------------------------------------
    def data_prepare(self, mode):
        if mode in ('PASV', 'EPSV'):
            code, text = self.expect(mode, 227 if mode == 'PASV' else 229)
            if mode == 'PASV':
                m = re.search(rb'\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', text)
                host = '.'.join(m.group(i).decode() for i in range(1, 5))
                port = int(m.group(5)) * 256 + int(m.group(6))
            else:
                m = re.search(rb'\(\|\|\|(\d+)\|\)', text)
                host, port = self.site.host, int(m.group(1))
            self.step = mode + ' data connect'
            try:
                return ('conn', socket.create_connection((host, port), timeout=CT))
            except socket.timeout:
                raise Hang('data connect to %s:%d' % (host, port))
            except OSError as e:
                self.st.inc('data_connect_failed')
                return ('failed', str(e))
        ls = socket.socket()
        ls.bind(('127.0.0.1', 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        if mode == 'PORT':
            line = 'PORT 127,0,0,1,%d,%d' % (port >> 8, port & 255)
        else:
            line = 'EPRT |1|127.0.0.1|%d|' % port
        try:
            self.expect(line, 200)
        except BaseException:
            ls.close()
            raise
        return ('listen', ls)

    def data_start(self, prep, line, fault=None):
        """Send the transfer command; return the data socket after the 1xx,
        or None when the command was refused (its reply consumed)."""
        kind, s = prep
        if kind == 'failed':
            return None
        try:
            code, text = self.cmd(line)
        except BaseException:
            s.close()
            raise
        # A REST the transfer command consumed; if the command failed, the
        # next transfer must not start at its offset (--tolerate-stale-rest).
        self.stale_rest = self.rest_sent if code >= 400 else 0
        self.rest_sent = 0
        if code >= 200:
            s.close()
            self.st.code(line.split(' ')[0], code)
            if code == 421:
                raise Closed('421')
            return None
        self.st.inc('transfers')
        if kind == 'listen':
            self.step = line.split(' ')[0] + ' accept'
            wait = 0 if self.buf or readable(self.sock, 0) else CT
            ready, _, _ = select.select([s, self.sock], [], [], wait)
            if s not in ready:
                s.close()
                if not ready and not self.buf and not readable(self.sock, 0):
                    raise Hang('no data connection and no reply')
                self.final(line)   # the error reply
                return None
            ds, _ = s.accept()
            s.close()
        else:
            ds = s
        if self.site.tls == 'terminate' or self.site.tls == 'passthrough':
            if fault == 'reset_data_mid_tls':
                self.st.fault(fault)
                h = client_hello()
                try:
                    ds.sendall(h[:self.rng.randint(1, len(h) - 1)])
                except OSError:
                    pass
                rst(ds)
                return 'reset'
            self.step = line.split(' ')[0] + ' data TLS handshake'
            ds.settimeout(CT)
            try:
                # a truncated TLS stream (no close_notify) must show
                ds = _CTX.wrap_socket(ds, server_hostname='127.0.0.1', session=self.sock.session,
                                      suppress_ragged_eofs=False)
            except socket.timeout:
                rst(ds)
                raise Hang('data TLS handshake')
            except OSError:
                ds.close()
                self.st.inc('data_tls_failed')
                return 'reset'
        ds.settimeout(CT)
        return ds

    def final(self, line):
        self.step = line.split(' ')[0] + ' final reply'
        code, text = self.reply()
        if code != 226:
            self.st.code(line.split(' ')[0], code)
        if code == 421:
            raise Closed('421')
        return code, text

    # operations ------------------------------------------------------------
    def op_list(self, mode):
        ds = self.data_start(self.data_prepare(mode), 'LIST')
        if ds is None:
            return
        data, how = self.read_data(ds, None, 0)[1:]
        code, _ = self.final('LIST')
        if code == 226 and how in ('eof', 'tls-truncated'):
            listing = bytes(data).decode('latin-1')
            missing = [f.name for f in self.run.pool if f.name not in listing]
            if missing and self.pt_truncation_tolerated(how):
                pass
            elif missing:
                self.st.mismatch(self, 'LIST answered 226 without %s (%d bytes listed)'
                                 % (missing, len(listing)))
            else:
                self.st.verified(len(data))

    def read_data(self, ds, fault, size, abor=False):
        """Read until EOF; returns (sha, bytes-or-None, how, aborted)."""
        h = hashlib.sha256()
        keep = bytearray() if fault is None and size == 0 else None
        got = 0
        how = 'eof'
        stop_at = self.rng.randint(0, max(size - 1, 0))
        acted = False
        self.step = 'data read'
        if ds == 'reset':
            return h.hexdigest(), b'', 'reset-by-us'
        while True:
            if not acted and (fault or abor) and got >= stop_at:
                acted = True
                if fault == 'reset_data':
                    self.st.fault(fault)
                    rst(ds)
                    return h.hexdigest(), keep, 'reset-by-us'
                if fault == 'reset_ctl_mid_xfer':
                    self.st.fault(fault)
                    rst(self.sock)
                    self.sock = None
                elif fault == 'half_close_data':
                    self.st.fault(fault)
                    try:    # the plain socket's shutdown (SSLSocket's drops TLS)
                        socket.socket.shutdown(ds, socket.SHUT_WR)
                    except OSError:
                        pass
                elif fault == 'stall_reader':
                    self.st.fault(fault)
                    time.sleep(self.rng.uniform(1, TMO['data_timeout'] + 5))
                elif abor:
                    self.step = 'ABOR during RETR'
                    self.send('ABOR\r\n')
                    self.step = 'data read after ABOR'
            try:
                b = ds.recv(1 << 18)
            except socket.timeout:
                rst(ds)
                if fault == 'reset_ctl_mid_xfer':
                    raise Hang('data connection open %d s after the control reset' % CT)
                raise Hang('data read stalled')
            except ssl.SSLEOFError:
                how = 'tls-truncated'     # EOF without close_notify: the client knows
                break
            except (OSError, ValueError):
                how = 'reset'
                break
            if not b:
                break
            h.update(b)
            got += len(b)
            if keep is not None:
                keep.extend(b)
        ds.close()
        if fault == 'reset_ctl_mid_xfer':
            raise Closed('control reset by us')
        self.got = got
        return h.hexdigest(), keep, how

    def pt_truncation_tolerated(self, how):
        """--tolerate-pt-truncation: on the passthrough site, a short
        transfer answered 226 whose TLS stream visibly ended without
        close_notify, or was reset, is counted apart (a known defect, see
        README.md)."""
        if how in ('tls-truncated', 'reset') and self.site.tls == 'passthrough' and \
                self.run.a.tolerate_pt_truncation:
            self.st.inc('pt_truncated_226')
            return True
        return False

    def stale_rest_tolerated(self, f, off, sha):
        """--tolerate-stale-rest: the data is exactly the file from the
        offset of a REST whose RETR failed before this one (a known defect,
        see README.md): counted as stale_rest_226."""
        k = self.prev_stale
        if k and off == 0 and self.got == f.size - k and sha == f.sha_range(k, f.size):
            if self.run.a.tolerate_stale_rest:
                self.st.inc('stale_rest_226')
                return True
            self.st.mismatch(self, 'RETR %s: 226 with the file from offset %d, the REST '
                             'before a RETR that failed with an error reply' % (f.name, k))
            return True
        return False

    def op_retr(self, mode, fault, rest=False, abor=False):
        f = pick_file(self.rng, self.run.pool, big=bool(fault) or abor)
        off = self.rng.randint(0, f.size) if rest else 0
        prep = self.data_prepare(mode)
        if prep[0] == 'failed':
            return      # (and no REST: it must come right before the transfer command)
        if rest:
            try:
                self.expect('REST %d' % off, 350)
            except BaseException:
                prep[1].close()
                raise
            self.rest_sent = off
        self.prev_stale = self.stale_rest
        ds = self.data_start(prep, 'RETR ' + f.name, fault)
        if ds is None:
            return
        self.got = 0
        sha, _, how = self.read_data(ds, fault, f.size - off, abor)
        code, text = self.final('RETR')
        if abor:
            self.step = 'ABOR reply'
            self.reply()
        if code != 226:
            return
        if abor and self.run.a.tolerate_abor_226 and (
                self.got != f.size - off or sha != f.sha_range(off, f.size)):
            self.st.inc('abor_short_226')    # known defect, see README.md
            return
        if how == 'reset-by-us':
            if fault == 'reset_data_mid_tls' and f.size > off:
                self.st.mismatch(self, 'RETR %s: 226 though the data TLS handshake was '
                                 'reset by the client' % f.name)
            else:
                self.st.inc('unverifiable_226')   # the rest may sit in our socket buffer
            return
        short = sha != f.sha_range(off, f.size) or self.got != f.size - off
        if short and self.pt_truncation_tolerated(how):
            pass
        elif short and self.stale_rest_tolerated(f, off, sha):
            pass
        elif short:
            self.st.mismatch(self, '%sRETR %s REST %d via %s: 226 but %d of %d bytes, '
                             'sha256 %s (%s)' % ('ABOR after ' if abor else '', f.name, off,
                                                 mode, self.got, f.size - off,
                                                 'differs' if sha != f.sha_range(off, f.size)
                                                 else 'same', how))
        else:
            self.st.verified(self.got)

    def upload(self, mode, verb, name, f, start, end, fault):
        self.prev_stale = self.stale_rest
        ds = self.data_start(self.data_prepare(mode), '%s up/%s' % (verb, name), fault)
        if ds is None:
            return None
        if ds != 'reset':
            stop_at = self.rng.randint(start, max(end - 1, start))
            self.step = verb + ' data write'
            pos = start
            with open(f.path, 'rb') as src:
                src.seek(start)
                try:
                    while pos < end:
                        if fault == 'reset_data' and pos >= stop_at:
                            self.st.fault(fault)
                            rst(ds)
                            ds = None
                            break
                        if fault == 'reset_ctl_mid_xfer' and pos >= stop_at:
                            self.st.fault(fault)
                            rst(self.sock)
                            self.sock = None
                            ds.close()
                            raise Closed('control reset by us')
                        n = min(end - pos, 1 << 18)
                        if fault and pos < stop_at:
                            n = min(n, stop_at - pos)
                        b = src.read(n)
                        ds.sendall(b)
                        pos += len(b)
                    if ds is not None and isinstance(ds, ssl.SSLSocket):
                        self.step = verb + ' data TLS close_notify'
                        ds = ds.unwrap()
                except socket.timeout:
                    rst(ds)
                    raise Hang('data write blocked')
                except (OSError, ValueError):
                    pass
            if ds is not None:
                ds.close()
        code, _ = self.final(verb)
        return code

    def check_stored(self, name, f, end, verb):
        path = self.site.backend.up_path(name)
        try:
            got_sha = T.sha256_file(path)
            got_size = os.path.getsize(path)
        except OSError as e:
            self.st.mismatch(self, '%s %s: 226 but the stored file is unreadable: %s'
                             % (verb, name, e))
            return False
        if got_size != end or got_sha != f.sha_range(0, end):
            k = self.prev_stale
            if k and verb == 'STOR' and got_size == k + end:
                h = hashlib.sha256()
                with open(path, 'rb') as fh:
                    fh.seek(k)
                    h.update(fh.read())
                if h.hexdigest() == f.sha_range(0, end):   # written at the stale offset
                    if self.run.a.tolerate_stale_rest:
                        self.st.inc('stale_rest_226')
                    else:
                        self.st.mismatch(self, 'STOR %s: 226, stored at offset %d, the REST '
                                         'before a RETR that failed' % (name, k))
                    return False
            self.st.mismatch(self, '%s %s (from %s): 226 but the backend stored %d of %d '
                             'bytes, sha256 %s' % (verb, name, f.name, got_size, end,
                                                   'same' if got_sha == f.sha_range(0, end)
                                                   else 'differs'))
            return False
        return True

    def op_stor(self, mode, fault, appe=False):
        f = pick_file(self.rng, self.run.pool, big=bool(fault))
        self.nup += 1
        name = 's%d-%d-%s' % (self.sid, self.nup, f.name)
        path = self.site.backend.up_path(name)
        try:
            if appe:
                k = self.rng.randint(0, f.size)
                code = self.upload(mode, 'STOR', name, f, 0, k, None)
                if code != 226:
                    return
                if not self.check_stored(name, f, k, 'STOR'):
                    return
                mode = self.rng.choice(self.site.modes)
                code = self.upload(mode, 'APPE', name, f, k, f.size, fault)
                verb = 'APPE'
            else:
                code = self.upload(mode, 'STOR', name, f, 0, f.size, fault)
                verb = 'STOR'
            if code == 226 and self.check_stored(name, f, f.size, verb):
                self.st.verified(f.size)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    # client faults outside transfers ---------------------------------------
    def reset_mid_reply(self):
        self.st.fault('reset_ctl_mid_reply')
        self.step = 'reset mid reply'
        self.send(self.rng.choice(['FEAT', 'HELP', 'STAT', 'SYST', 'PWD']) + '\r\n')
        if not readable(self.sock, CT):
            raise Hang('no reply before the reset')
        rst(self.sock)
        self.sock = None

    def half_close(self):
        self.st.fault('half_close_ctl')
        self.step = 'after half-close'
        self.send('NOOP\r\n')
        try:    # the plain socket's shutdown (SSLSocket's drops TLS)
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError:
            pass
        while True:
            self.reply()    # until Closed (fine) or Hang

    def hostile(self):
        self.st.fault('hostile')
        self.step = 'hostile burst'
        r = self.rng
        burst = r.choice([
            b'A' * r.randint(4000, 20000) + b'\r\n',
            b'NOOP\x00' + os.urandom(r.randint(1, 200)).replace(b'\n', b'') + b'\r\n',
            os.urandom(r.randint(100, 3000)) + b'\r\n',
            b'\xff\xf4\xff\xf2' * r.randint(1, 300) + b'NOOP\r\n',
            b'NOOP\r\n' * r.randint(10, 300),
            b'\r\n' * r.randint(10, 500) + b'\x00' * r.randint(1, 500) + b'\n',
            b'USER ' + b'x' * r.randint(1000, 9000) + b'\r\n' + b'PASV\r\n' * 20,
        ])
        self.send(burst)
        self.send('QUIT\r\n')
        self.step = 'QUIT after hostile burst'
        while True:
            code, _ = self.reply()
            if code == 221:
                return

    def mid_tls_reset(self):
        self.st.fault('reset_ctl_mid_tls')
        self.expect('AUTH TLS', 234)
        h = client_hello()
        self.step = 'partial ClientHello'
        self.send(h[:self.rng.randint(1, len(h) - 1)])
        rst(self.sock)
        self.sock = None


OPS = (('LIST', 2), ('RETR', 4), ('REST', 2), ('STOR', 3), ('APPE', 1.5), ('ABOR', 1.5))
DATA_FAULTS = ('reset_ctl_mid_xfer', 'reset_data', 'reset_data_mid_tls', 'half_close_data',
               'stall_reader')


def run_session(run, site, rng, sid, fault):
    st = run.st
    st.inc('sessions')
    s = Session(run, site, rng, sid)
    try:
        s.connect()
        s.step = 'greeting'
        code, _ = s.reply()
        if code != 220:
            st.code('greeting', code)
            return
        if fault == 'reset_ctl_mid_tls':
            if site.tls:
                s.mid_tls_reset()
                return
            fault = 'reset_ctl_mid_reply'
        if site.tls:
            s.auth_tls()
        s.login()
        if site.tls:
            s.expect('PBSZ 0', 200)
            s.expect('PROT P', 200)
        s.expect('TYPE I', 200)
        n = rng.randint(1, 6)
        at = rng.randrange(n)
        for i in range(n):
            if i and run.stop.is_set():
                break
            f = fault if i == at else None
            if f == 'reset_ctl_mid_reply':
                s.reset_mid_reply()
                return
            if f == 'half_close_ctl':
                s.half_close()
                return
            if f == 'hostile':
                s.hostile()
                return
            if f == 'reset_data_mid_tls' and not site.tls:
                f = 'reset_data'
            mode = rng.choice(site.modes)
            if f in DATA_FAULTS:
                op = 'RETR' if f in ('half_close_data', 'stall_reader') else \
                    rng.choice(['RETR', 'STOR'])
            else:
                op = rng.choices([o for o, _ in OPS], weights=[w for _, w in OPS])[0]
                if op == 'ABOR' and site.tls == 'passthrough':
                    # ftpgate is blind there: vsftpd sees an ABOR inside TLS
                    # (no urgent data) only after the transfer, and may not
                    # answer it at all; that is vsftpd, not the proxy
                    op = 'RETR'
            try:
                if op == 'LIST':
                    s.op_list(mode)
                elif op in ('RETR', 'REST', 'ABOR'):
                    s.op_retr(mode, f, rest=op == 'REST', abor=op == 'ABOR')
                elif op in ('STOR', 'APPE'):
                    s.op_stor(mode, f, appe=op == 'APPE')
            except OpFail:
                st.inc('op_failed')
        s.step = 'QUIT'
        s.send('QUIT\r\n')
        s.reply()
        st.inc('sessions_completed')
    except Closed:
        st.inc('closed_by_peer')
    except OpFail:
        st.inc('op_failed')
    except Hang as h:
        st.hang(s, str(h))
    finally:
        s.close()


# --------------------------------------------------------------------------
# the run

def fd_count(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


def _have_cap(bit):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('CapEff:'):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


HAVE_SYS_RESOURCE = _have_cap(24)     # CAP_SYS_RESOURCE: may raise a hard limit


def nofile_limits(pid):
    with open('/proc/%d/limits' % pid) as f:
        for line in f:
            if line.startswith('Max open files'):
                soft, hard = line.split()[3:5]
                return soft, hard
    return None


class Soak:
    def __init__(self, a):
        self.a = a
        self.st = Stats()
        self.stop = threading.Event()
        self.fault_q = collections.deque()
        self.lock = threading.Lock()
        self.emfile_restore = None      # the timer that restores the limit
        self.rng = random.Random(a.seed)
        self.excluded = set(x for x in a.exclude.split(',') if x)
        bad = self.excluded - set(ALL_FAULTS)
        if bad:
            sys.exit('soak: unknown fault kind(s) %s; known: %s' % (
                ','.join(sorted(bad)), ','.join(ALL_FAULTS)))

    def setup(self):
        a = self.a
        try:
            lim = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim[1], lim[1]))
        except (ValueError, OSError):
            pass
        threading.stack_size(512 * 1024)
        width = max(100, min(400, (a.sessions // 100 + 1) * 100))
        pooldir = T.tmpdir('soak-pool-')
        os.chmod(pooldir, 0o755)
        self.pool = make_pool(pooldir, a.max_mib)
        pyroot = T.tmpdir('soak-pyroot-')
        self.py = PyBackend(pyroot, width)
        self.vs = VsBackend(pasv_width=width)
        self.backends = [self.py, self.vs]
        self.sites = [Site('py', self.py, '127.0.0.1', None, ('PASV', 'EPSV', 'PORT', 'EPRT'),
                           T.port_range(width)),
                      Site('vs', self.vs, '127.0.0.1', None, ('PASV', 'EPSV', 'PORT', 'EPRT'),
                           T.port_range(width))]
        if not a.no_tls:
            self.certs = T.make_tls_certs(T.tmpdir('soak-certs-'))
            self.sites.append(Site('tls', self.py, '127.0.0.1', 'terminate',
                                   ('PASV', 'EPSV', 'PORT', 'EPRT'), T.port_range(width)))
            if not a.no_passthrough:
                ptr = T.port_range(width)
                self.vst = VsBackend(pasv=ptr, cert=self.certs['cert'], key=self.certs['key'],
                                     extra=['pasv_address=%s' % PT_IP,
                                            # ftpgate is blind here: the backend's
                                            # own timeouts bound the client's waits
                                            'data_connection_timeout=%d' % TMO['data_timeout'],
                                            'accept_timeout=%d' % TMO['data_timeout'],
                                            'connect_timeout=%d' % TMO['data_timeout']])
                self.backends.append(self.vst)
                self.sites.append(Site('pt', self.vst, PT_IP, 'passthrough',
                                       ('PASV', 'EPSV'), ptr))
        for b in self.backends:
            for f in self.pool:
                os.link(f.path, os.path.join(b.root, f.name))
        self.dir = T.tmpdir('soak-gate-')
        self.xferlog = os.path.join(self.dir, 'xferlog')
        self.mport = T.free_port()
        self.variant = 0
        self.gate = T.Ftpgate(self.config(0), timeout=30)
        T.wait_listening(self.gate.proc, [self.mport], 10, 'metrics', self.gate.log)

    def config(self, variant):
        g = {'log_level': 'info', 'metrics_listen': '127.0.0.1:%d' % self.mport,
             'xferlog': self.xferlog}
        cfg = {'global': g}
        for s in self.sites:
            d = {'listen': '%s:%d' % (s.host, s.port), 'backend': s.backend.addr(),
                 'passive_ports': '%d-%d' % s.prange}
            for k, v in TMO.items():
                d[k] = v - (variant if k in ('connect_timeout', 'data_timeout') else 0)
            if s.tls == 'terminate':
                d.update(tls='terminate', tls_cert=self.certs['cert'],
                         tls_key=self.certs['key'])
            elif s.tls == 'passthrough':
                d['tls'] = 'passthrough'
            # Every client is 127.0.0.1: the per-address limit (16 by
            # default) would refuse most sessions at the greeting.
            d['max_sessions_per_ip'] = 100000 if variant else 0
            cfg['site:' + s.name] = d
        return cfg

    def metrics_sessions_open(self):
        c = http.client.HTTPConnection('127.0.0.1', self.mport, timeout=10)
        try:
            c.request('GET', '/metrics')
            body = c.getresponse().read().decode()
        finally:
            c.close()
        return sum(float(m.group(1)) for m in
                   re.finditer(r'(?m)^ftpgate_sessions_open(?:\{[^}]*\})?\s+(\S+)', body))

    def wait_idle(self, timeout):
        """Wait until no session is open and the descriptor count is steady
        (counted before each scrape, 0.5 s after the previous one closed)."""
        pid = self.gate.proc.pid
        deadline = time.monotonic() + timeout
        prev = None
        while True:
            fds = fd_count(pid)
            so = self.metrics_sessions_open()
            if so == 0 and fds == prev and (self.base_fds is None or fds == self.base_fds):
                return so, fds
            if time.monotonic() > deadline:
                return so, fds
            prev = fds
            time.sleep(0.5)

    def fd_kinds(self):
        """Open descriptors of ftpgate by kind (socket, pipe, path...)."""
        d = '/proc/%d/fd' % self.gate.proc.pid
        kinds = collections.Counter()
        for fd in os.listdir(d):
            try:
                t = os.readlink(os.path.join(d, fd))
            except OSError:
                continue
            kinds[re.sub(r':\[\d+\]$', '', t)] += 1
        return kinds

    # fault injector --------------------------------------------------------
    def injector(self):
        r = random.Random(self.a.seed ^ 0x5eed)
        kinds = [k for k in ALL_FAULTS if k not in self.excluded]
        weights = [2 if k in PROCESS_FAULTS else 1 for k in kinds]
        if self.a.no_tls:
            kinds = [k for k in kinds if k not in ('reset_data_mid_tls',)]
            weights = weights[:len(kinds)]
        while not self.stop.wait(r.expovariate(1.0 / self.a.fault_interval)):
            if not kinds:
                continue
            k = r.choices(kinds, weights=weights)[0]
            try:
                if k in CLIENT_FAULTS:
                    with self.lock:
                        self.fault_q.append(k)
                elif k == 'backend_kill':
                    b = r.choice(self.backends)
                    self.st.fault(k)
                    self.st.inc('kill_' + b.name)
                    b.kill()
                    self.stop.wait(r.uniform(0.2, 2))
                    b.start()
                elif k == 'emfile':
                    self.emfile(r)
                elif k == 'sighup':
                    self.variant ^= 1
                    with open(self.gate.conf, 'w') as f:
                        f.write(T.render_config(self.config(self.variant)))
                    self.st.fault(k)
                    os.kill(self.gate.proc.pid, signal.SIGHUP)
                elif k == 'sigusr1':
                    try:
                        os.rename(self.xferlog, self.xferlog + '.1')
                    except OSError:
                        pass
                    self.st.fault(k)
                    os.kill(self.gate.proc.pid, signal.SIGUSR1)
            except Exception:
                self.st.inc('injector_errors')
                sys.stderr.write('soak: fault %s failed:\n%s' % (k, traceback.format_exc()))

    def emfile(self, r):
        """Lower ftpgate's descriptor limit now; a timer restores it (other
        faults go on meanwhile)."""
        if self.emfile_restore is not None:
            return
        pid = self.gate.proc.pid
        old = nofile_limits(pid)
        n = max(16, fd_count(pid) - r.randint(0, 8))
        self.st.fault('emfile')
        # N:N as asked when we may raise the hard limit back afterwards
        # (CAP_SYS_RESOURCE), else only the soft limit: N:HARD
        hard = str(n) if HAVE_SYS_RESOURCE else old[1]
        subprocess.run(['prlimit', '--pid', str(pid), '--nofile=%d:%s' % (n, hard)], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)

        def restore():
            with self.lock:
                if self.emfile_restore is None:
                    return
                self.emfile_restore = None
                subprocess.run(['prlimit', '--pid', str(pid), '--nofile=%s:%s' % old],
                               check=True, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=10)
        with self.lock:
            self.emfile_restore = threading.Timer(r.uniform(0.5, 4), restore)
            self.emfile_restore.restore = restore
            self.emfile_restore.start()

    def emfile_end(self):
        t = self.emfile_restore
        if t is not None:
            t.cancel()
            t.restore()

    def take_fault(self):
        with self.lock:
            return self.fault_q.popleft() if self.fault_q else None

    def worker(self, idx):
        rng = random.Random(self.a.seed * 1000003 + idx)
        time.sleep(rng.uniform(0, min(5.0, self.a.seconds / 4)))
        k = 0
        while not self.stop.is_set():
            k += 1
            site = rng.choice(self.sites)
            try:
                run_session(self, site, rng, idx * 100000 + k, self.take_fault())
            except Exception:
                self.st.inc('client_errors')
                sys.stderr.write('soak: session %d: %s' % (idx * 100000 + k,
                                                           traceback.format_exc()))

    def run(self):
        a = self.a
        self.base_fds = None
        # warm up: one session per site, so that lazily opened things exist
        for i, s in enumerate(self.sites):
            for j, mode in enumerate(s.modes):
                run_session(self, s, random.Random(a.seed + i * 10 + j), -(i * 10 + j), None)
        so, fds = self.wait_idle(30)
        warm = dict(self.st.c)
        self.base_fds = fds
        self.base_kinds = self.fd_kinds()
        self.base_rss = T.vm_rss_kb(self.gate.proc.pid)
        sys.stderr.write('soak: idle before: %d descriptors, RSS %d KiB, sessions open %g; '
                         'warm-up %r\n' % (fds, self.base_rss, so, warm))
        self.st.c.clear()
        t0 = time.monotonic()
        inj = threading.Thread(target=self.injector, daemon=True)
        inj.start()
        ws = [threading.Thread(target=self.worker, args=(i,), daemon=True)
              for i in range(a.sessions)]
        for w in ws:
            w.start()
        while time.monotonic() - t0 < a.seconds:
            time.sleep(1)
            if not self.gate.alive():
                break
        self.stop.set()
        inj.join(CT)
        self.emfile_end()
        for b in self.backends:       # a kill may have been cut short
            if b.srv.proc is None or b.srv.proc.poll() is not None:
                b.start()
        deadline = time.monotonic() + 3 * CT + 60
        for w in ws:
            w.join(max(0.1, deadline - time.monotonic()))
        stuck = sum(1 for w in ws if w.is_alive())
        self.elapsed = time.monotonic() - t0
        # --leave-open N: a check of the checks (the leak figures must fail)
        for i in range(self.a.leave_open):
            threading.Thread(target=self.keep_open, args=(i,), daemon=True).start()
        return stuck

    def keep_open(self, i):
        """A logged-in session kept alive with NOOPs until the process ends."""
        s = Session(self, self.sites[0], random.Random(i), -1000 - i)
        try:
            s.connect()
            s.reply()
            s.login()
            while True:
                s.cmd('NOOP')
                time.sleep(2)
        except (Closed, Hang, OpFail):
            pass

    def finish(self, stuck):
        a = self.a
        g = self.gate
        alive = g.alive()
        so = fds = rss = None
        if alive:
            so, fds = self.wait_idle(60)
            rss = T.vm_rss_kb(g.proc.pid)
            if fds != self.base_fds:
                now = self.fd_kinds()
                sys.stderr.write('soak: descriptors by kind, idle before -> after: %s\n' % ', '.join(
                    '%s %d -> %d' % (k, self.base_kinds[k], now[k])
                    for k in sorted(set(now) | set(self.base_kinds))
                    if now[k] != self.base_kinds[k]))
        leaked_fds = (fds - self.base_fds) if fds is not None else -1
        rss_growth = (rss - self.base_rss) if rss is not None else -1
        bound = a.rss_bound_mib * 1024 if a.rss_bound_mib else \
            (768 if T.ftpgate_sanitized() else 64) * 1024
        rc = g.stop() if alive else g.proc.returncode
        log = g.log()
        san = len(SAN_RE.findall(log))
        reloads = log.count('reloaded ')
        for b in self.backends:
            b.stop()
        st = self.st
        leaks = (1 if leaked_fds != 0 else 0) + (1 if so != 0 else 0) + \
            (1 if rss_growth < 0 or rss_growth > bound else 0)
        apart = []     # short 226s not counted as mismatches, and why
        if a.tolerate_abor_226:
            apart.append('tolerated %d short after ABOR' % st.c['abor_short_226'])
        if a.tolerate_pt_truncation:
            apart.append('tolerated %d short on passthrough, cut shown by TLS or reset'
                         % st.c['pt_truncated_226'])
        if a.tolerate_stale_rest:
            apart.append('tolerated %d from a stale REST offset' % st.c['stale_rest_226'])
        extra = ' (%s)' % '; '.join(apart) if apart else ''
        faults = ','.join('%s=%d' % (k, st.faults[k]) for k in ALL_FAULTS if st.faults[k])
        line = ('soak: seed %d, %.0f s, %d workers, sessions %d, transfers %d, verified %d, '
                'bytes %d, faults %s, mismatches %d%s, hangs %d, leaked descriptors %d, '
                'sessions open after %s, RSS growth %d KiB (bound %d), sanitizer reports %d, '
                'ftpgate exit %s, soak errors %d'
                % (a.seed, self.elapsed, a.sessions, st.c['sessions'], st.c['transfers'],
                   st.c['verified'], st.bytes, faults or 'none', len(st.mismatches),
                   extra,
                   len(st.hangs), leaked_fds, '%g' % so if so is not None else 'dead',
                   rss_growth, bound, san, rc,
                   st.c['client_errors'] + st.c['injector_errors'] + stuck))
        ok = (not st.mismatches and not st.hangs and leaks == 0 and san == 0 and alive
              and stuck == 0 and rc == 0 and not st.c['client_errors']
              and not st.c['injector_errors'])
        err = sys.stderr
        err.write('soak: outcomes %s\n' % dict(sorted(st.c.items())))
        err.write('soak: unexpected replies %s\n' % dict(sorted(st.codes.items())))
        err.write('soak: reloads logged %d, stuck workers %d\n' % (reloads, stuck))
        for m in st.mismatches[:50]:
            err.write('soak: MISMATCH %s\n' % m)
        for h in st.hangs[:50]:
            err.write('soak: HANG %s\n' % h)
        if san or not alive or rc != 0:
            err.write('soak: ftpgate log (sanitizer reports / last lines):\n')
            lines = log.splitlines()
            idx = [i for i, l in enumerate(lines) if SAN_RE.search(l)]
            show = lines[idx[0]:idx[0] + 80] if idx else lines[-60:]
            err.write('\n'.join('  ' + l for l in show) + '\n')
        if not ok:
            keep = os.path.abspath('soak-ftpgate-%d.log' % a.seed)
            shutil.copy(g.log_path, keep)
            err.write('soak: ftpgate log copied to %s\n' % keep)
        err.flush()
        print(line, flush=True)
        return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seconds', type=float, default=600)
    p.add_argument('--sessions', type=int, default=500, help='concurrent sessions')
    p.add_argument('--seed', type=int, default=None, help='default: random (printed)')
    p.add_argument('--max-mib', type=float, default=256, help='largest file (MiB)')
    p.add_argument('--fault-interval', type=float, default=1.0,
                   help='mean seconds between faults')
    p.add_argument('--exclude', default='', help='comma-separated fault kinds not to inject: '
                   + ','.join(ALL_FAULTS))
    p.add_argument('--no-tls', action='store_true', help='plain sites only')
    p.add_argument('--no-passthrough', action='store_true', help='no tls = passthrough site')
    p.add_argument('--tolerate-abor-226', action='store_true',
                   help='count a short RETR answered 226 after the client\'s ABOR as '
                   'abor_short_226 (a known ftpgate defect, tests/soak/README.md) '
                   'instead of a mismatch')
    p.add_argument('--tolerate-pt-truncation', action='store_true',
                   help='on the passthrough site, count a short transfer answered 226 whose '
                   'TLS stream ended without close_notify or was reset as pt_truncated_226 '
                   '(a known ftpgate defect, tests/soak/README.md) instead of a mismatch')
    p.add_argument('--tolerate-stale-rest', action='store_true',
                   help='count a RETR answered 226 with the file from the offset of an '
                   'earlier REST whose RETR ftpgate refused as stale_rest_226 (a known '
                   'ftpgate defect, tests/soak/README.md) instead of a mismatch')
    p.add_argument('--leave-open', type=int, default=0, metavar='N',
                   help='keep N client connections open through the final checks '
                   '(to see the leak check fail)')
    p.add_argument('--rss-bound-mib', type=float, default=0,
                   help='allowed RSS growth (default 64, 768 for a sanitizer build)')
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    sys.stderr.write('soak: seed %d, %g s, %d sessions, files up to %g MiB, ftpgate %s\n'
                     % (a.seed, a.seconds, a.sessions, a.max_mib, T.FTPGATE))
    why = T.vsftpd_unavailable()
    if why:
        sys.exit('soak: ' + why)
    if not shutil.which('prlimit'):
        sys.exit('soak: prlimit (util-linux) not found')
    # a private copy of the binary: the build tree may be rebuilt meanwhile
    bindir = T.tmpdir('soak-bin-')
    shutil.copy2(T.FTPGATE, os.path.join(bindir, 'ftpgate'))
    T.FTPGATE = os.path.join(bindir, 'ftpgate')
    s = Soak(a)
    s.setup()
    stuck = s.run()
    sys.exit(s.finish(stuck))


if __name__ == '__main__':
    main()
