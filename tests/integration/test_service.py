#!/usr/bin/python3
"""ftpgate run as a service: privilege drop, SIGHUP reload, graceful
shutdown (SIGTERM), shutdown_timeout, the metrics endpoint, the xferlog
and log files with SIGUSR1.  Real clients (curl, ftplib, raw sockets)
against a pyftpdlib backend, loopback only.  TAP output."""

import ftplib
import http.client
import io
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
BIG_MIB = 64       # privilege drop, shutdown
HUGE_MIB = 200     # reload: a download that outlives the SIGHUP
PROMTOOL = '/usr/bin/promtool'

t = T.start_tap(('curl', T.CURL))

# --------------------------------------------------------------------------
# fixture: one backend for every case; each case starts its own ftpgate

ROOT = T.tmpdir('ftproot-')
LOCAL = T.tmpdir('ftplocal-')
os.makedirs(os.path.join(ROOT, 'up'))
os.makedirs(os.path.join(ROOT, 'sub'))
os.chmod(ROOT, 0o755)
BIG = os.path.join(ROOT, 'big.bin')
HUGE = os.path.join(ROOT, 'huge.bin')
MID = os.path.join(ROOT, 'mid.bin')
BIG_SHA = T.make_random_file(BIG, BIG_MIB)
HUGE_SHA = T.make_random_file(HUGE, HUGE_MIB)
MID_SIZE = MiB + 4321
MID_SHA = T.make_random_file(MID, nbytes=MID_SIZE)

try:
    SRV = T.PyftpdServer(ROOT)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])


# --------------------------------------------------------------------------
# helpers

def config(extra_global=None, **site):
    """gate_config for SRV, with more [global] keys."""
    return T.gate_config(SRV, global_keys=extra_global, **site)


def write_config(path, text):
    """Replace the file at once (the proxy never reads half a file)."""
    tmp = path + '.new'
    with open(tmp, 'w') as f:
        f.write(T.render_config(text))
    os.replace(tmp, path)


def login(port, user='u', passwd='p'):
    return T.ftp_login(port, user=user, passwd=passwd)


def raw_login(port, user='u', passwd='p'):
    c = T.raw_greeted(port)
    T.raw_login(c, user, passwd)
    return c


def pasv_host(c):
    """Send PASV on a RawCtl; return (host, port) of the 227 reply."""
    r = c.cmd('PASV').decode('latin-1')
    assert r.startswith('227'), 'PASV: %r' % r
    return ftplib.parse227(r.strip())


def wait_for(pred, timeout, step=0.05):
    """pred() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def file_text(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def curl_bg(url, out, rate):
    """Rate-limited curl download in the background: (Popen, stderr path)."""
    err = out + '.stderr'
    ef = open(err, 'wb')
    p = subprocess.Popen([T.CURL, '-sS', '--max-time', '60', '--limit-rate', rate,
                          '-o', out, url], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=ef)
    ef.close()
    T._procs.append(p)
    return p, err


def wait_growing(proc, out, nbytes, timeout=15):
    ok = wait_for(lambda: proc.poll() is not None or
                  (os.path.exists(out) and os.path.getsize(out) >= nbytes), timeout)
    assert ok and proc.poll() is None, \
        'download did not start or already ended (curl status %s, %d bytes)' % (
            proc.poll(), os.path.getsize(out) if os.path.exists(out) else -1)


def finish_curl(proc, err, out, want_sha, timeout=40):
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        T._stop_proc(proc)
        raise AssertionError('curl still running after %d s' % timeout)
    if proc in T._procs:
        T._procs.remove(proc)
    size = os.path.getsize(out) if os.path.exists(out) else -1
    got = T.sha256_file(out) if size >= 0 else None
    msg = file_text(err).strip()
    if os.path.exists(out):
        os.unlink(out)
    assert got == want_sha, 'download differs: curl exit %d, %d bytes, stderr %r' % (rc, size, msg)
    assert rc == 0, 'curl exit %d after a complete download: %r' % (rc, msg)


def wait_exit(proc, timeout):
    """Wait for proc to exit; return (status, seconds)."""
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError('ftpgate still running %.0f s after the signal' % timeout)
    return rc, time.monotonic() - t0


def stalled_retr(port, name='big.bin'):
    """A client that starts RETR through PASV and never reads the data.
    Returns (control RawCtl, data socket)."""
    c = raw_login(port)
    assert c.cmd('TYPE I').startswith(b'200')
    host, dport = pasv_host(c)
    d = socket.socket()
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    d.settimeout(10)
    d.connect(('127.0.0.1', dport))
    r = c.cmd('RETR ' + name)
    assert r.startswith(b'150') or r.startswith(b'125'), 'RETR: %r' % r
    return c, d


def privileged_free_port():
    ports = list(range(700, 1000))
    random.shuffle(ports)
    for p in ports[:60]:
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', p))
                return p
            except OSError:
                continue
    return T.free_port()


def proc_status(pid):
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            k, _, v = line.partition(':')
            out[k] = v.split()
    return out


# --------------------------------------------------------------------------
# metrics

def http_get(port, path, method='GET'):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader('Content-Type'), r.read().decode('utf-8', 'replace')
    finally:
        c.close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


class Scrape:
    def __init__(self, text):
        self.text = text
        self.samples = []          # (name, {labels}, value)
        self.types = {}
        for line in text.splitlines():
            if line.startswith('# TYPE '):
                f = line.split()
                self.types[f[2]] = f[3]
                continue
            if not line.strip() or line.startswith('#'):
                continue
            m = _SAMPLE.match(line)
            assert m, 'bad metrics line %r' % line
            labels = {}
            if m.group(2):
                pos = 0
                s = m.group(2)
                while pos < len(s):
                    lm = _LABEL.match(s, pos)
                    assert lm and lm.end() > pos, 'bad labels in %r' % line
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def get(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        vals = [v for n, l, v in self.samples
                if n == name and all(l.get(k) == w for k, w in labels.items())]
        assert vals, 'no sample %s%r in:\n%s' % (name, labels, self.text)
        return sum(vals)


def scrape(port):
    st, ctype, body = http_get(port, '/metrics')
    assert st == 200, 'GET /metrics -> %d %r' % (st, body[:200])
    assert ctype and ctype.startswith('text/plain'), 'Content-Type %r' % ctype
    return Scrape(body)


# --------------------------------------------------------------------------
# cases

def c01_privdrop():
    nobody = pwd.getpwnam('nobody')
    lport = privileged_free_port()
    g = T.Ftpgate(config({'user': 'nobody'}, listen_port=lport))
    try:
        assert g.wait_log(r'running as user nobody', 0, 10), \
            'no "running as user nobody" in the log'
        st = proc_status(g.proc.pid)
        T.diag('listen port %d; Uid: %s Gid: %s Groups: %s'
               % (lport, st['Uid'], st['Gid'], st.get('Groups')))
        assert st['Uid'] == [str(nobody.pw_uid)] * 4, 'Uid: %r' % st['Uid']
        assert st['Gid'] == [str(nobody.pw_gid)] * 4, 'Gid: %r' % st['Gid']
        assert st.get('Groups') == [], 'supplementary groups kept: %r' % st.get('Groups')
        assert nobody.pw_uid == 65534 and nobody.pw_gid == 65534, \
            'nobody is %d:%d here' % (nobody.pw_uid, nobody.pw_gid)
        f = login(g.port)
        sha, n = T.sha_retr(f, 'big.bin')
        assert n == BIG_MIB * MiB and sha == BIG_SHA, 'download differs (%d bytes)' % n
        assert f.sendcmd('NOOP').startswith('200')
        f.quit()
        assert g.alive(), 'ftpgate died'
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s after SIGTERM' % rc


def c02_no_such_user():
    d = T.tmpdir('ftpgate-nouser-')
    conf = os.path.join(d, 'ftpgate.ini')
    text = T.render_config(config({'user': 'no-such-user-xyz'}))
    line = text.splitlines().index('user = no-such-user-xyz') + 1
    with open(conf, 'w') as f:
        f.write(text)
    r = T.run_ftpgate(['-t', '-c', conf])
    out = r.stdout + r.stderr
    assert r.returncode == 1, 'ftpgate -t exit %d: %r' % (r.returncode, out)
    want = '%s:%d: user: no such user' % (conf, line)
    assert want in out, 'want %r in %r' % (want, out)
    # starting for real fails the same way, before listening
    r = T.run_ftpgate(['-f', '-c', conf])
    out = r.stdout + r.stderr
    assert r.returncode == 1 and want in out, 'ftpgate -f exit %d: %r' % (r.returncode, out)


def c03_reload():
    conf_d = config(public_address='127.0.0.5')
    g = T.Ftpgate(conf_d)
    try:
        out = os.path.join(LOCAL, 'c03.bin')
        cp, cerr = curl_bg('ftp://u:p@127.0.0.1:%d/huge.bin' % g.port, out, '50M')
        early = raw_login(g.port)   # a session that starts before the reload
        wait_growing(cp, out, 4 * MiB)
        # change public_address, SIGHUP
        conf_d['site:test']['public_address'] = '127.0.0.7'
        write_config(g.conf, conf_d)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), \
            'no "reloaded" after SIGHUP:\n' + g.log_since(mark)
        assert cp.poll() is None, 'download ended before the reload was done; test too fast'
        host, _ = pasv_host(early)
        assert host == '127.0.0.5', 'session started before the reload announces %s, ' \
            'want its own 127.0.0.5' % host
        assert early.cmd('QUIT').startswith(b'221')
        early.close()
        c = raw_login(g.port)
        host, _ = pasv_host(c)
        assert host == '127.0.0.7', 'new session after reload announces %s, want 127.0.0.7' % host
        c.cmd('QUIT')
        c.close()
        assert cp.poll() is None, 'download ended too soon'
        finish_curl(cp, cerr, out, HUGE_SHA)
        # a broken file: the running configuration stays
        text = T.render_config(conf_d).rstrip('\n') + '\n[broken\n'
        bad_line = text.count('\n')
        write_config(g.conf, text)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        m = g.wait_log(r'reload failed, keeping the running configuration: (.*)', mark, 10)
        assert m, 'no "reload failed" after SIGHUP with a broken file:\n' + g.log_since(mark)
        want = '%s:%d:' % (g.conf, bad_line)
        assert m.group(1).startswith(want), 'reload failed message %r does not start with %r' % (
            m.group(0), want)
        T.diag(m.group(0))
        assert g.alive(), 'ftpgate died on a broken reload'
        f = login(g.port)
        r = f.sendcmd('PASV')
        assert ftplib.parse227(r)[0] == '127.0.0.7', \
            'after a failed reload PASV announces %r, want 127.0.0.7' % r
        sha, n = T.sha_retr(f, 'mid.bin')   # ftplib connects to the control host
        assert sha == MID_SHA and n == MID_SIZE
        f.quit()
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def c04_reload_listener():
    conf_d = config()
    p1 = int(conf_d['site:test']['listen'].rsplit(':', 1)[1])
    p2 = T.free_port()
    g = T.Ftpgate(conf_d)
    try:
        try:
            socket.create_connection(('127.0.0.1', p2), timeout=5).close()
            raise AssertionError('port %d accepts before it is configured' % p2)
        except ConnectionRefusedError:
            pass
        conf_d['site:test']['listen'] = '127.0.0.1:%d, 127.0.0.1:%d' % (p1, p2)
        write_config(g.conf, conf_d)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), g.log_since(mark)
        T.wait_listening(g.proc, [p1, p2], 5, 'ftpgate', g.log)
        f2 = login(p2)
        sha, n = T.sha_retr(f2, 'mid.bin')
        assert sha == MID_SHA
        f1 = login(p1)
        assert f1.sendcmd('NOOP').startswith('200')
        f1.quit()
        # remove it again: refused after the next HUP
        conf_d['site:test']['listen'] = '127.0.0.1:%d' % p1
        write_config(g.conf, conf_d)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), g.log_since(mark)
        gone = wait_for(lambda: p2 not in T._listening_ports_of(g.proc.pid), 5)
        assert gone, 'still listening on %d after it was removed' % p2
        try:
            s = socket.create_connection(('127.0.0.1', p2), timeout=5)
        except ConnectionRefusedError:
            pass
        else:
            data, how = T.recv_until_closed(s, 3)
            s.close()
            raise AssertionError('removed port %d still accepts (got %r, %s)' % (p2, data, how))
        # the session that came in on the removed listener goes on
        assert f2.sendcmd('NOOP').startswith('200'), f2.replies[-1]
        sha, n = T.sha_retr(f2, 'mid.bin')
        assert sha == MID_SHA, 'session on a removed listener: download differs'
        f2.quit()
        f1 = login(p1)
        f1.quit()
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def c05_shutdown():
    g = T.Ftpgate(config())
    try:
        idle = raw_login(g.port)
        out = os.path.join(LOCAL, 'c05.bin')
        cp, cerr = curl_bg('ftp://u:p@127.0.0.1:%d/big.bin' % g.port, out, '16M')
        wait_growing(cp, out, 2 * MiB)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGTERM)
        assert g.wait_log(r'shutting down', mark, 5), g.log_since(mark)
        # the idle session: 421, then EOF
        data, how = idle.until_closed(5)
        idle.close()
        assert data.startswith(b'421'), 'idle session got %r (%s), want 421' % (data, how)
        assert data.endswith(b'\r\n') and how == 'eof', \
            'idle session: %r then %s, want one 421 line and EOF' % (data, how)
        # no new sessions
        try:
            s = socket.create_connection(('127.0.0.1', g.port), timeout=5)
        except ConnectionRefusedError:
            pass
        else:
            data, how = T.recv_until_closed(s, 3)
            s.close()
            raise AssertionError('listen port accepts after SIGTERM (got %r, %s)' % (data, how))
        assert cp.poll() is None, 'download ended before it could be checked'
        assert g.alive(), 'ftpgate exited while a download was running'
        finish_curl(cp, cerr, out, BIG_SHA)
        rc, dt = wait_exit(g.proc, 10)
        T.diag('exit %s, %.2f s after the download' % (rc, dt))
        assert rc == 0, 'exit status %s' % rc
        log = g.log_since(mark)
        assert re.search(r'end: .*proxy shutting down', log), \
            'no session end "proxy shutting down" in the log'
    finally:
        g.stop()


def c06_shutdown_timeout():
    g = T.Ftpgate(config({'shutdown_timeout': 2}))
    try:
        c, d = stalled_retr(g.port)
        time.sleep(1.0)    # the buffers fill up, the transfer stalls
        assert g.alive()
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGTERM)
        rc, dt = wait_exit(g.proc, 15)
        T.diag('exit %s %.2f s after SIGTERM' % (rc, dt))
        log = g.log_since(mark)
        assert dt < 10, 'exit took %.1f s with shutdown_timeout = 2' % dt
        assert dt >= 1.0, 'exited after %.2f s: did not wait for the running transfer' % dt
        assert rc == 0, 'exit status %s' % rc
        assert 'shutdown_timeout' in log, 'no shutdown_timeout line in the log'
        d.close()
        c.close()
    finally:
        g.stop()


def c07_second_sigterm():
    g = T.Ftpgate(config())
    try:
        c, d = stalled_retr(g.port)
        time.sleep(0.5)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGTERM)
        assert g.wait_log(r'shutting down', mark, 5), g.log_since(mark)
        time.sleep(0.5)
        assert g.alive(), 'exited on the first SIGTERM with a transfer running'
        os.kill(g.proc.pid, signal.SIGTERM)
        rc, dt = wait_exit(g.proc, 10)
        T.diag('exit %s %.2f s after the second SIGTERM' % (rc, dt))
        assert dt < 3, 'second SIGTERM: exit took %.1f s' % dt
        assert rc == 0, 'exit status %s' % rc
        d.close()
        c.close()
    finally:
        g.stop()


def c08_metrics():
    mport = T.free_port()
    conf_d = config({'metrics_listen': '127.0.0.1:%d' % mport}, max_sessions=2)
    lo, hi = [int(x) for x in conf_d['site:test']['passive_ports'].split('-')]
    g = T.Ftpgate(conf_d)
    try:
        T.wait_listening(g.proc, [mport], 5, 'metrics', g.log)
        s0 = scrape(mport)
        assert s0.get('ftpgate_sessions_total', site='test') == 0
        assert s0.get('ftpgate_build_info') == 1
        retr_n = BIG_MIB * MiB     # big enough to be running at the scrape
        stor_data = os.urandom(2 * MiB + 55)
        # session A: RETR, scraped while running
        a = login(g.port)
        assert a.sendcmd('TYPE I').startswith('200')
        conn = a.transfercmd('RETR big.bin')
        got = bytearray(conn.recv(65536))
        s1 = scrape(mport)
        T.diag('during RETR: sessions_open %g, passive_ports_in_use %g'
               % (s1.get('ftpgate_sessions_open', site='test'),
                  s1.get('ftpgate_passive_ports_in_use', site='test')))
        assert s1.get('ftpgate_sessions_open', site='test') >= 1
        assert s1.get('ftpgate_passive_ports_in_use', site='test') >= 1
        # session B; a third one is refused (site max_sessions = 2)
        b = login(g.port)
        with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
            data, how = T.recv_until_closed(s, 10)
        assert data.startswith(b'421'), 'third session: %r' % data
        rest, how = T.recv_until_closed(conn, 30)
        conn.close()
        got.extend(rest)
        assert how == 'eof' and len(got) == retr_n, (how, len(got))
        assert T.sha256_bytes(bytes(got)) == BIG_SHA, 'RETR content differs'
        assert a.voidresp().startswith('226')
        # B: a stranger on its passive port, then STOR through it
        assert b.sendcmd('TYPE I').startswith('200')
        host, port = ftplib.parse227(b.sendcmd('PASV'))
        with socket.socket() as st:
            st.bind(('127.0.0.2', 0))
            st.settimeout(5)
            st.connect(('127.0.0.1', port))
            data, how = T.recv_until_closed(st, 5)
        assert how in ('eof', 'reset') and not data, (data, how)
        with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
            r = b.sendcmd('STOR up/m8-up.bin')
            assert r[:1] == '1', r
            s.sendall(stor_data)
        assert b.voidresp().startswith('226'), b.replies[-1]
        with open(os.path.join(ROOT, 'up', 'm8-up.bin'), 'rb') as fh:
            assert fh.read() == stor_data
        a.quit()
        b.quit()
        ok = wait_for(lambda: scrape(mport).get('ftpgate_sessions_open', site='test') == 0, 5)
        assert ok, 'sessions_open not 0 after both QUIT'
        sc = scrape(mport)
        checks = [
            ('ftpgate_sessions_total', dict(site='test'), 2),
            ('ftpgate_sessions_refused_total', dict(site='test'), 1),
            ('ftpgate_sessions_ended_total', dict(site='test', reason='client_quit'), 2),
            ('ftpgate_sessions_ended_total', dict(site='test'), 2),
            ('ftpgate_data_bytes_total', dict(site='test', direction='down'), retr_n),
            ('ftpgate_data_bytes_total', dict(site='test', direction='up'), len(stor_data)),
            ('ftpgate_transfers_total', dict(site='test', command='RETR', result='ok'), 1),
            ('ftpgate_transfers_total', dict(site='test', command='STOR', result='ok'), 1),
            ('ftpgate_transfers_total', dict(site='test'), 2),
            ('ftpgate_data_connections_refused_total', dict(site='test'), 1),
            ('ftpgate_backend_connect_failures_total', dict(site='test'), 0),
            ('ftpgate_tls_handshake_failures_total', dict(site='test'), 0),
            ('ftpgate_passive_ports_in_use', dict(site='test'), 0),
            ('ftpgate_passive_ports_free', dict(site='test'), hi - lo + 1),
        ]
        bad = []
        for name, labels, want in checks:
            v = sc.get(name, **labels)
            if v != want:
                bad.append('%s%r = %g, want %g' % (name, labels, v, want))
        assert not bad, '\n'.join(bad) + '\n' + sc.text
        for fam in ('ftpgate_sessions_total', 'ftpgate_data_bytes_total',
                    'ftpgate_transfers_total', 'ftpgate_sessions_refused_total'):
            assert sc.types.get(fam) == 'counter', (fam, sc.types.get(fam))
        for fam in ('ftpgate_sessions_open', 'ftpgate_passive_ports_free'):
            assert sc.types.get(fam) == 'gauge', (fam, sc.types.get(fam))
        for path in ('/', '/metricsx', '/favicon.ico'):
            st, _, body = http_get(mport, path)
            assert st == 404, 'GET %s -> %d' % (path, st)
        st, _, body = http_get(mport, '/metrics', 'HEAD')
        assert st == 200 and body == '', 'HEAD /metrics -> %d %r' % (st, body[:100])
        st, _, body = http_get(mport, '/metrics', 'POST')
        assert st == 405, 'POST /metrics -> %d' % st
        if os.access(PROMTOOL, os.X_OK):
            r = subprocess.run([PROMTOOL, 'check', 'metrics'], input=sc.text.encode(),
                               capture_output=True, timeout=30)
            msg = (r.stdout + r.stderr).decode('utf-8', 'replace')
            assert r.returncode == 0, 'promtool check metrics exit %d:\n%s' % (r.returncode, msg)
            T.diag('promtool check metrics: ok %s' % msg.strip())
        else:
            T.diag('promtool check metrics: skipped, %s not installed' % PROMTOOL)
        assert g.alive()
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def parse_xferlog(text):
    out = []
    for line in text.splitlines():
        f = line.split()
        assert len(f) == 18, 'xferlog line with %d fields: %r' % (len(f), line)
        when = time.mktime(time.strptime(' '.join(f[:5]), '%a %b %d %H:%M:%S %Y'))
        out.append(dict(line=line, when=when, secs=int(f[5]), host=f[6], bytes=int(f[7]),
                        name=f[8], type=f[9], special=f[10], dir=f[11], access=f[12],
                        user=f[13], service=f[14], auth=f[15], auth_id=f[16],
                        done=f[17]))
    return out


def c09_xferlog():
    d = T.tmpdir('ftpgate-xfer-')
    xl = os.path.join(d, 'xferlog')
    g = T.Ftpgate(config({'xferlog': xl}))
    try:
        shutil.copy(MID, os.path.join(ROOT, 'sub', 'x9.bin'))
        up = os.urandom(777777)
        f = login(g.port)
        sha, n = T.sha_retr(f, 'sub/x9.bin')
        assert sha == MID_SHA
        assert f.storbinary('STOR up/x9-up.bin', io.BytesIO(up)).startswith('226')
        # an aborted download: completion "i"
        conn = f.transfercmd('RETR huge.bin')
        got = 0
        while got < MiB:
            b = conn.recv(65536)
            assert b, 'data closed early'
            got += len(b)
        conn.close()
        r1 = f.abort()
        if r1.startswith('426'):
            f.getmultiline()
        assert f.sendcmd('NOOP').startswith('200')
        f.quit()
        a = T.ftp_login(g.port, user='anonymous', passwd='guest@example.org')
        assert T.sha256_bytes(T.retr_bytes(a, 'mid.bin')) == MID_SHA
        a.quit()
        assert wait_for(lambda: file_text(xl).count('\n') >= 4, 5), \
            'xferlog has %r' % file_text(xl)
        text = file_text(xl)
        T.diag(text)
        e = parse_xferlog(text)
        assert len(e) == 4, 'want 4 xferlog lines:\n' + text
        now = time.time()
        for x in e:
            assert abs(x['when'] - now) < 120, 'date far from now: %r' % x['line']
            assert x['secs'] >= 1, x['line']
            assert x['host'] == '127.0.0.1', x['line']
            assert x['type'] == 'b' and x['special'] == '_', x['line']
            assert (x['service'], x['auth'], x['auth_id']) == ('ftp', '0', '*'), x['line']
        want = [
            dict(bytes=MID_SIZE, name='sub/x9.bin', dir='o', access='r', user='u', done='c'),
            dict(bytes=len(up), name='up/x9-up.bin', dir='i', access='r', user='u', done='c'),
            dict(name='huge.bin', dir='o', access='r', user='u', done='i'),
            dict(bytes=MID_SIZE, name='mid.bin', dir='o', access='a', done='c'),
        ]
        for i, (x, w) in enumerate(zip(e, want)):
            for k, v in w.items():
                assert x[k] == v, 'xferlog line %d field %s = %r, want %r: %r' % (
                    i + 1, k, x[k], v, x['line'])
        assert MiB <= e[2]['bytes'] < HUGE_MIB * MiB, e[2]['line']
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def c10_logfile_usr1():
    d = T.tmpdir('ftpgate-logs-')
    log = os.path.join(d, 'ftpgate.log')
    xl = os.path.join(d, 'xferlog')
    g = T.Ftpgate(config({'log': log, 'xferlog': xl, 'log_level': 'info'}))
    try:
        assert wait_for(lambda: 'started' in file_text(log), 5), \
            'no "started" line in %s: %r' % (log, file_text(log))
        f = login(g.port)
        assert T.retr_bytes(f, 'mid.bin')
        f.quit()
        assert wait_for(lambda: 'end:' in file_text(log), 5), file_text(log)
        os.rename(log, log + '.1')
        os.rename(xl, xl + '.1')
        os.kill(g.proc.pid, signal.SIGUSR1)
        assert wait_for(lambda: 'reopened' in file_text(log), 5), \
            'no new %s with "reopened" after SIGUSR1 (exists: %s)' % (log, os.path.exists(log))
        f = login(g.port)
        assert T.retr_bytes(f, 'mid.bin')
        f.quit()
        assert wait_for(lambda: 'end:' in file_text(log), 5), file_text(log)
        old, new = file_text(log + '.1'), file_text(log)
        assert old.count('start:') == 1 and old.count('end:') == 1, old
        assert new.count('start:') == 1 and new.count('end:') == 1, new
        assert 'transfer' in new, new
        assert wait_for(lambda: file_text(xl).count('\n') == 1, 5), \
            'new xferlog: %r' % file_text(xl)
        assert file_text(xl + '.1').count('\n') == 1, file_text(xl + '.1')
        assert 'start:' not in g.log(), 'session lines on stderr with log = file'
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc
    assert 'ftpgate stopped' in file_text(log), file_text(log)[-500:]


def check_t(conf):
    r = T.run_ftpgate(['-t', '-c', conf])
    return r.returncode, r.stdout + r.stderr


def c11_check_as_user():
    """-t run as root checks what the proxy reopens as `user` after the drop:
    the configuration and key files (reload), the log directory (SIGUSR1)."""
    nobody = pwd.getpwnam('nobody')
    d = T.tmpdir('ftpgate-asuser-')
    os.chmod(d, 0o755)
    cert, key = T.make_self_signed(d)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)                     # root's own: nobody cannot read it
    logdir = T.tmpdir('ftpgate-asuser-log-')  # 0700 root
    conf = os.path.join(d, 'ftpgate.ini')
    text = T.render_config(config({'user': 'nobody', 'log': os.path.join(logdir, 'g.log')},
                                  tls='terminate', tls_cert=cert, tls_key=key))
    with open(conf, 'w') as f:
        f.write(text)
    os.chmod(conf, 0o644)
    key_line = text.splitlines().index('tls_key = ' + key) + 1
    log_line = [i for i, l in enumerate(text.splitlines(), 1) if l.startswith('log =')][0]
    rc, out = check_t(conf)
    want = '%s:%d: tls_key:' % (conf, key_line)
    assert rc == 1 and want in out and 'nobody' in out and 'chmod' in out, \
        'key unreadable by nobody: -t exit %d, want %r, nobody, chmod in %r' % (rc, want, out)
    os.chown(key, 0, nobody.pw_gid)
    os.chmod(key, 0o640)                     # the README's recipe
    rc, out = check_t(conf)
    want = '%s:%d: log:' % (conf, log_line)
    assert rc == 1 and want in out and logdir in out and 'nobody' in out, \
        'log directory not searchable by nobody: -t exit %d, want %r in %r' % (rc, want, out)
    os.chmod(logdir, 0o755)
    rc, out = check_t(conf)
    assert rc == 0, 'all readable by nobody: -t exit %d: %r' % (rc, out)
    os.chmod(conf, 0o600)
    rc, out = check_t(conf)
    assert rc == 1 and conf in out and 'nobody' in out, \
        'configuration unreadable by nobody: -t exit %d: %r' % (rc, out)


def c12_reload_group():
    """A changed group takes a restart, like user: the reload says so."""
    conf_d = config({'group': 'nogroup'})
    g = T.Ftpgate(conf_d)
    try:
        conf_d['global']['group'] = 'daemon'
        write_config(g.conf, conf_d)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), g.log_since(mark)
        log = g.log_since(mark)
        assert re.search(r'warn: .*group.*restart', log), \
            'no warning that the group change takes a restart:\n' + log
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def unit_settings():
    """The [Service] settings of the shipped unit: {key: [values]}."""
    out = {}
    with open(os.path.join(T.SRCDIR, 'etc', 'ftpgate.service.in')) as f:
        for line in f:
            k, eq, v = line.strip().partition('=')
            if eq and not k.startswith('#'):
                out.setdefault(k, []).append(v)
    return out


def rotate_like_logrotate(path):
    """rename, then "create 0640": a new file with the old one's owner."""
    st = os.stat(path)
    os.rename(path, path + '.1')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, 0o640)
    os.close(fd)


def c13_unit_logs_after_drop():
    """The shipped unit's settings with user = nobody: its capability
    bounding set, NoNewPrivileges, UMask, and the log directory as
    LogsDirectory= makes it for a unit without User= (root:root,
    LogsDirectoryMode). The log and the xferlog, rotated as the logrotate
    snippet does, are reopened on SIGUSR1 and get the new lines."""
    setpriv = shutil.which('setpriv')
    if not setpriv:
        T.diag('setpriv (util-linux) not installed: skipped')
        return
    u = unit_settings()
    caps = [c[len('CAP_'):].lower() for c in u['CapabilityBoundingSet'][0].split()]
    wrapper = [setpriv, '--bounding-set', ','.join(['-all'] + ['+' + c for c in caps]),
               '--inh-caps', '-all']
    if u.get('NoNewPrivileges') == ['yes']:
        wrapper.append('--no-new-privs')
    wrapper.append('--')
    logdir = T.tmpdir('ftpgate-unitlogs-')
    os.chown(logdir, 0, 0)
    os.chmod(logdir, int(u['LogsDirectoryMode'][0], 8))
    log = os.path.join(logdir, 'ftpgate.log')
    xl = os.path.join(logdir, 'xferlog')
    old_umask = os.umask(int(u['UMask'][0], 8))
    try:
        g = T.Ftpgate(config({'user': 'nobody', 'log': log, 'xferlog': xl}), wrapper=wrapper)
    finally:
        os.umask(old_umask)
    try:
        assert wait_for(lambda: 'running as user nobody' in file_text(log), 5), \
            'no "running as user nobody" in %s: %r' % (log, file_text(log))
        T.diag('CapBnd of ftpgate: %s' % proc_status(g.proc.pid)['CapBnd'])
        f = login(g.port)
        assert T.retr_bytes(f, 'mid.bin')
        f.quit()
        assert wait_for(lambda: file_text(xl).count('\n') == 1, 5), file_text(xl)
        rotate_like_logrotate(log)
        rotate_like_logrotate(xl)
        os.kill(g.proc.pid, signal.SIGUSR1)
        ok = wait_for(lambda: 'reopened' in file_text(log), 5)
        assert ok, 'no "reopened" in the new %s after SIGUSR1; the old one ends:\n%s' % (
            log, file_text(log + '.1')[-1500:])
        f = login(g.port)
        assert T.retr_bytes(f, 'mid.bin')
        f.quit()
        assert wait_for(lambda: 'end:' in file_text(log), 5), file_text(log)
        assert wait_for(lambda: file_text(xl).count('\n') == 1, 5), \
            'new xferlog: %r; old: %r' % (file_text(xl), file_text(xl + '.1'))
        assert g.alive(), 'ftpgate died'
    finally:
        rc = g.stop()
    assert rc == 0, 'exit status %s' % rc


def c14_reload_counters():
    """Issue 10.7: a 64 MiB download running across SIGHUP is counted in
    ftpgate_data_bytes_total afterwards (counters per site name are one
    object for the life of the process), and the transfer in
    ftpgate_transfers_total."""
    mport = T.free_port()
    conf_d = config({'metrics_listen': '127.0.0.1:%d' % mport})
    g = T.Ftpgate(conf_d)
    try:
        T.wait_listening(g.proc, [mport], 5, 'metrics', g.log)
        out = os.path.join(LOCAL, 'c11.bin')
        cp, cerr = curl_bg('ftp://u:p@127.0.0.1:%d/big.bin' % g.port, out, '16M')
        wait_growing(cp, out, 2 * MiB)
        conf_d['site:test']['idle_timeout'] = '400'
        write_config(g.conf, conf_d)
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), g.log_since(mark)
        assert cp.poll() is None, 'download ended before the reload was done; test too fast'
        finish_curl(cp, cerr, out, BIG_SHA)
        assert g.wait_log(r'transfer RETR big.bin: 226', mark, 10), g.log_since(mark)
        s = scrape(mport)
        down = s.get('ftpgate_data_bytes_total', site='test', direction='down')
        ok = s.get('ftpgate_transfers_total', site='test', command='RETR', result='ok')
        assert down >= BIG_MIB * MiB, 'ftpgate_data_bytes_total down = %d after a %d MiB ' \
            'download that spanned a reload' % (down, BIG_MIB)
        assert ok >= 1, 'ftpgate_transfers_total RETR ok = %d' % ok
    finally:
        g.stop()


if os.geteuid() == 0:
    t.case('user = nobody: uid/gid 65534, no groups, 64 MiB download', c01_privdrop, 40)
else:
    t.skip('user = nobody: uid/gid 65534, no groups, 64 MiB download', 'not root')
t.case('user = no-such-user: -t exits 1 with FILE:LINE', c02_no_such_user, 20)
t.case('SIGHUP reload: running download ok, new sessions new public_address; '
       'broken file keeps the old one', c03_reload, 50)
t.case('SIGHUP adds and removes a listener', c04_reload_listener, 30)
t.case('SIGTERM: idle 421, no new sessions, download completes, exit 0', c05_shutdown, 40)
t.case('shutdown_timeout = 2 with a stalled transfer: exit < 10 s, status 0',
       c06_shutdown_timeout, 30)
t.case('second SIGTERM exits at once', c07_second_sigterm, 30)
t.case('metrics: counters, during and after transfers; 404; promtool', c08_metrics, 40)
t.case('xferlog lines for RETR, STOR, aborted RETR, anonymous RETR', c09_xferlog, 40)
t.case('log = file, SIGUSR1 reopens log and xferlog', c10_logfile_usr1, 30)
t.case('SIGHUP with a changed group: warns that it takes a restart', c12_reload_group, 20)
if os.geteuid() == 0:
    t.case('-t as root with user = nobody: key, config, log directory checked as nobody',
           c11_check_as_user, 30)
else:
    t.skip('-t as root with user = nobody: files checked as nobody', 'not root')
if os.geteuid() == 0:
    t.case('the unit\'s capabilities and log directory, user = nobody: log and xferlog '
           'rotated, SIGUSR1, new files get the lines', c13_unit_logs_after_drop, 30)
else:
    t.skip('the unit\'s capabilities and log directory: SIGUSR1 after the drop', 'not root')
t.case('a 64 MiB download across SIGHUP counts in ftpgate_data_bytes_total',
       c14_reload_counters, 40)
t.done()
