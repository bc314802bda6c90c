#!/usr/bin/python3
"""ftpgate with several workers (`[global] workers = N`, issue 11.1): the
event-loop threads exist and share the sessions; session limits are exact
whichever worker a connection lands on; a passive port is never handed to
two sessions at once; /metrics, the xferlog and the log add up every
worker's work; a passthrough forwarded port serves a live session's
address and no other; SIGHUP (good and bad file), SIGUSR1 and the
privilege drop reach every worker.  (SIGTERM drain, reload during a
download, metrics and the rest of test_service.py run again with 4
workers in test_service_workers.sh.)  pyftpdlib backend, loopback only.
TAP output."""

import concurrent.futures as cf
import ftplib
import hashlib
import http.client
import io
import json
import os
import pwd
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

N = 4            # workers in every case (more than the CI machine's cores)
FILES = 8

t = T.start_tap()

ROOT = T.tmpdir('ftproot-')
os.makedirs(os.path.join(ROOT, 'up'))
os.chmod(ROOT, 0o755)
SHA = {}
SIZE = {}
for i in range(FILES):
    name = 'f%d.bin' % i
    SIZE[name] = 300 * 1024 + 7919 * i       # all different: a mixed-up port shows
    SHA[name] = T.make_random_file(os.path.join(ROOT, name), nbytes=SIZE[name])

try:
    SRV = T.PyftpdServer(ROOT)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])


def config(extra_global=None, **site):
    return T.gate_config(SRV, global_keys=dict({'workers': N}, **(extra_global or {})), **site)


def workers_of_log(text):
    return [int(w) for w in re.findall(r': start: client \S+ to \S+ \(worker (\d+)\)', text)]


def first_line(s):
    """The first reply line on socket s (b'' on EOF or reset)."""
    s.settimeout(10)
    data = b''
    try:
        while not data.endswith(b'\n'):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def greet(port, host='127.0.0.1', source=None):
    """Connect; return the socket and the first reply line."""
    s = socket.create_connection((host, port), timeout=10,
                                 source_address=(source, 0) if source else None)
    return s, first_line(s)


def retr_at(f, host, port, name):
    """RETR name on ftplib session f, the data connection to host:port made
    by hand (before the command: the proxy's listener is already up);
    return the sha256 of what arrived."""
    d = socket.create_connection((host, port), timeout=10)
    f.putcmd('RETR ' + name)
    h = hashlib.sha256()
    while True:
        b = d.recv(65536)
        if not b:
            break
        h.update(b)
    d.close()
    f.getresp()    # 150 (125 from pyftpdlib)
    f.voidresp()   # 226
    return h.hexdigest()


def pasv_port(reply):
    nums = re.search(r'\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', reply).groups()
    return int(nums[4]) * 256 + int(nums[5])


# --------------------------------------------------------------------------

def c01_threads():
    """N threads; sessions spread over every worker (least loaded first)."""
    g = T.Ftpgate(config())
    conns = []
    try:
        assert g.wait_log(r'%d workers \(event loops\) run sessions' % N, 0, 5), g.log()
        tasks = os.listdir('/proc/%d/task' % g.proc.pid)
        with open(T.FTPGATE, 'rb') as fh:
            extra = 1 if b'__tsan_init' in fh.read() else 0   # ThreadSanitizer's own
        assert len(tasks) == N + extra, 'ftpgate has %d threads, want %d' % (len(tasks), N)
        for _ in range(2 * N):
            conns.append(T.ftp_login(g.port))
        ws = workers_of_log(g.log())
        assert sorted(ws) == sorted(list(range(N)) * 2), \
            'sessions per worker: %r, want two in each of %d' % (ws, N)
        # every session works
        for i, f in enumerate(conns):
            name = 'f%d.bin' % i
            assert T.sha_retr(f, name)[0] == SHA[name], 'session %d: %s differs' % (i, name)
    finally:
        for f in conns:
            f.close()
        g.stop()


def limit_case(expect_served, **site):
    g = T.Ftpgate(config(**site))
    socks = []
    try:
        # ten connections at once, before any greeting is read
        for _ in range(10):
            socks.append(socket.create_connection(('127.0.0.1', g.port), timeout=10))
        replies = [first_line(s)[:3] for s in socks]
        served = replies.count(b'220')
        refused = replies.count(b'421')
        assert (served, refused) == (expect_served, 10 - expect_served), \
            '%s: %d served, %d refused (%r), want %d and %d' % (
                site, served, refused, replies, expect_served, 10 - expect_served)
        ws = set(workers_of_log(g.log()))
        T.diag('%s: served in workers %s' % (site, sorted(ws)))
        assert len(ws) == min(expect_served, N), 'served sessions in workers %s' % sorted(ws)
    finally:
        for s in socks:
            s.close()
        g.stop()


def c02_limits():
    limit_case(2, max_sessions_per_ip=2)
    limit_case(3, max_sessions_per_ip=0, max_sessions=3)


def c03_global_limit():
    c = config(max_sessions_per_ip=0)
    c['global']['max_sessions'] = '5'
    g = T.Ftpgate(c)
    socks = []
    try:
        for _ in range(10):
            socks.append(socket.create_connection(('127.0.0.1', g.port), timeout=10))
        codes = [first_line(s)[:3] for s in socks]
        assert codes.count(b'220') == 5 and codes.count(b'421') == 5, \
            'global max_sessions 5: %r' % codes
    finally:
        for s in socks:
            s.close()
        g.stop()


def c04_passive_ports():
    """Six ports, six sessions in four workers asking at once: six different
    ports; a seventh is refused; every download its own file."""
    lo = T.port_range(6)
    g = T.Ftpgate(config(passive_ports=lo, max_sessions_per_ip=0))
    conns = []
    try:
        for _ in range(7):
            conns.append(T.ftp_login(g.port))

        def ask(f):
            f.voidcmd('TYPE I')
            return f.sendcmd('PASV')

        for rnd in range(3):
            with cf.ThreadPoolExecutor(6) as ex:
                replies = list(ex.map(ask, conns[:6]))
            ports = [pasv_port(r) for r in replies]
            assert len(set(ports)) == 6 and all(lo[0] <= p <= lo[1] for p in ports), \
                'round %d: ports %r of %d-%d' % (rnd, ports, lo[0], lo[1])
            try:
                r7 = conns[6].sendcmd('PASV')
            except ftplib.error_temp as e:
                r7 = str(e)
            assert r7.startswith('4'), 'a seventh PASV with six ports held: %r' % r7

            def fetch(k):
                name = 'f%d.bin' % ((k + rnd) % FILES)
                return name, retr_at(conns[k], '127.0.0.1', ports[k], name)

            with cf.ThreadPoolExecutor(6) as ex:
                got = list(ex.map(fetch, range(6)))
            for name, sha in got:
                assert sha == SHA[name], 'round %d: %s arrived wrong' % (rnd, name)
        ws = set(workers_of_log(g.log()))
        assert len(ws) == N, 'sessions in workers %s' % sorted(ws)
    finally:
        for f in conns:
            f.close()
        g.stop()


def c05_sums():
    """/metrics and the xferlog count every worker's transfers; one end: line each."""
    xl = os.path.join(T.tmpdir('xferlog-'), 'xferlog')
    mport = T.free_port()
    c = config(max_sessions_per_ip=0)
    c['global']['xferlog'] = xl
    c['global']['metrics_listen'] = '127.0.0.1:%d' % mport
    g = T.Ftpgate(c)
    try:
        def one(i):
            f = T.ftp_login(g.port)
            name = 'f%d.bin' % i
            assert T.sha_retr(f, name)[0] == SHA[name], name
            f.storbinary('STOR up/u%d.bin' % i, io.BytesIO(b'x' * (1000 + i)))
            f.quit()

        with cf.ThreadPoolExecutor(FILES) as ex:
            list(ex.map(one, range(FILES)))
        assert g.wait_log(r'(?s)(end: .*){%d}' % FILES, 0, 10), 'not every session ended'
        log = g.log()
        ws = set(workers_of_log(log))
        assert len(ws) >= 2, 'the %d sessions ran in workers %s only' % (FILES, sorted(ws))
        ends = [ln for ln in log.splitlines() if ' end: ' in ln]
        assert len(ends) == FILES, '%d end: lines, want %d' % (len(ends), FILES)
        for ln in log.splitlines():
            assert re.match(r'^\d{4}-\d\d-\d\dT[\d:.]+Z (debug|info|warn|error): ', ln), \
                'a log line is not one line: %r' % ln
        text = T.metrics_text(mport)
        down = sum(SIZE['f%d.bin' % i] for i in range(FILES))
        up = sum(1000 + i for i in range(FILES))
        want = {
            r'ftpgate_sessions_total\{site="test"\} (\d+)': FILES,
            r'ftpgate_transfers_total\{site="test",command="RETR",result="ok"\} (\d+)': FILES,
            r'ftpgate_transfers_total\{site="test",command="STOR",result="ok"\} (\d+)': FILES,
            r'ftpgate_data_bytes_total\{site="test",direction="down"\} (\d+)': down,
            r'ftpgate_data_bytes_total\{site="test",direction="up"\} (\d+)': up,
            r'ftpgate_passive_ports_in_use\{site="test"\} (\d+)': 0,
        }
        for pat, val in want.items():
            m = re.search(pat, text)
            assert m and int(m.group(1)) == val, '%s: %s, want %d\n%s' % (
                pat, m and m.group(1), val, text)
        lines = T.read_text(xl).splitlines()
        assert len(lines) == 2 * FILES, '%d xferlog lines, want %d' % (len(lines), 2 * FILES)
        sizes = sorted(int(ln.split()[7]) for ln in lines)
        assert sizes == sorted([SIZE['f%d.bin' % i] for i in range(FILES)] +
                               [1000 + i for i in range(FILES)]), sizes
    finally:
        g.stop()


def c06_reload():
    """SIGHUP: every worker's new sessions use the new file; a bad file keeps
    the old one in all of them."""
    c = config(max_sessions_per_ip=0, public_address='127.0.0.1')
    g = T.Ftpgate(c)
    conns = []
    try:
        def announced():
            fs = [T.ftp_login(g.port) for _ in range(2 * N)]
            conns.extend(fs)
            out = set()
            for f in fs:
                r = f.sendcmd('PASV')
                out.add(re.search(r'\((\d+,\d+,\d+,\d+),', r).group(1))
            return out

        assert announced() == {'127,0,0,1'}
        c['site:test']['public_address'] = '127.0.0.3'
        with open(g.conf, 'w') as fh:
            fh.write(T.render_config(c))
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reloaded ', mark, 10), g.log_since(mark)
        got = announced()
        assert got == {'127,0,0,3'}, 'after reload: %r' % got
        with open(g.conf, 'w') as fh:
            fh.write(T.render_config(c) + '\nnonsense here\n')
        mark = g.log_mark()
        os.kill(g.proc.pid, signal.SIGHUP)
        assert g.wait_log(r'reload failed, keeping the running configuration', mark, 10), \
            g.log_since(mark)
        got = announced()
        assert got == {'127,0,0,3'}, 'after a bad reload: %r' % got
        ws = set(workers_of_log(g.log()))
        assert len(ws) == N, 'sessions in workers %s' % sorted(ws)
        # the sessions started before the reloads still work
        for i, f in enumerate(conns[:2 * N]):
            assert f.sendcmd('NOOP').startswith('200'), 'session %d after reloads' % i
    finally:
        for f in conns:
            f.close()
        g.stop()


def c07_usr1():
    """SIGUSR1: every worker writes to the reopened log file."""
    d = T.tmpdir('logs-')
    logf = os.path.join(d, 'g.log')
    c = config(max_sessions_per_ip=0)
    c['global']['log'] = logf
    g = T.Ftpgate(c)
    try:
        fs = [T.ftp_login(g.port) for _ in range(N)]
        os.rename(logf, logf + '.1')
        os.kill(g.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not os.path.exists(logf) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(logf), 'no new log file after SIGUSR1'
        fs += [T.ftp_login(g.port) for _ in range(2 * N)]
        for f in fs:
            f.quit()
        deadline = time.monotonic() + 10
        while T.read_text(logf).count(' end: ') < 3 * N and time.monotonic() < deadline:
            time.sleep(0.05)
        new = T.read_text(logf)
        assert new.count(' end: ') == 3 * N, 'new file: %d end: lines, want %d\n%s' % (
            new.count(' end: '), 3 * N, new)
        ws = set(workers_of_log(new))
        assert ws == set(range(N)), 'new file has starts of workers %s' % sorted(ws)
        old = T.read_text(logf + '.1')
        assert ' end: ' not in old, 'an end: line went to the renamed file:\n' + old
    finally:
        g.stop()


def c08_privileges():
    """user = nobody: every thread runs as nobody."""
    nobody = pwd.getpwnam('nobody')
    g = T.Ftpgate(config({'user': 'nobody'}))
    try:
        assert g.wait_log(r'running as user nobody', 0, 10), g.log()
        f = T.ftp_login(g.port)
        assert T.sha_retr(f, 'f1.bin')[0] == SHA['f1.bin']
        f.quit()
        tasks = os.listdir('/proc/%d/task' % g.proc.pid)
        assert len(tasks) >= N, '%d threads' % len(tasks)   # (ThreadSanitizer adds one)
        for tid in tasks:
            st = {}
            with open('/proc/%d/task/%s/status' % (g.proc.pid, tid)) as fh:
                for ln in fh:
                    k, _, v = ln.partition(':')
                    st[k] = v.split()
            assert st['Uid'] == [str(nobody.pw_uid)] * 4, 'thread %s Uid %r' % (tid, st['Uid'])
            assert st['Gid'] == [str(nobody.pw_gid)] * 4, 'thread %s Gid %r' % (tid, st['Gid'])
    finally:
        g.stop()


def c09_passthrough():
    """A passthrough site with N workers: its forwarded port takes the data
    connection of a live session's address, and refuses another address."""
    lo = T.port_range(4)
    psrv = T.PyftpdServer(ROOT, pasv_ports=range(lo[0], lo[1] + 1))
    # ftpgate on 127.0.0.2 (its forwarded ports too), the backend on 127.0.0.1
    c = T.gate_config(psrv, listen_host='127.0.0.2', tls='passthrough',
                      passive_ports=lo, max_sessions_per_ip=0)
    c['global']['workers'] = str(N)
    g = T.Ftpgate(c, wait_ports=range(lo[0], lo[1] + 1))
    try:
        fs = [T.ftp_login(g.port, host='127.0.0.2') for _ in range(N)]
        f = fs[-1]
        f.voidcmd('TYPE I')
        r = f.sendcmd('PASV')
        port = pasv_port(r)
        assert lo[0] <= port <= lo[1], r
        mark = g.log_mark()
        # another address first: refused, and the port stays the session's
        s, data = greet(port, host='127.0.0.2', source='127.0.0.3')
        s.close()
        assert g.wait_log(r'refused data connection from 127\.0\.0\.3:\d+ to port %d' % port,
                          mark, 5), g.log_since(mark)
        assert retr_at(f, '127.0.0.2', port, 'f3.bin') == SHA['f3.bin'], \
            'f3.bin through the forwarded port differs'
        for x in fs:
            x.quit()
    finally:
        g.stop()
        psrv.stop()


def c11_sessions():
    """GET /sessions lists the sessions of every worker, oldest first."""
    mport = T.free_port()
    c = config(max_sessions_per_ip=0)
    c['global']['metrics_listen'] = '127.0.0.1:%d' % mport
    g = T.Ftpgate(c)
    fs = []
    try:
        fs = [T.ftp_login(g.port) for _ in range(2 * N)]
        for f in fs[N:]:
            f.sendcmd('CWD up')
        conn = http.client.HTTPConnection('127.0.0.1', mport, timeout=10)
        conn.request('GET', '/sessions')
        r = conn.getresponse()
        doc = json.loads(r.read())
        conn.close()
        ss = doc['sessions']
        assert len(ss) == 2 * N and doc['count'] == 2 * N, doc
        ids = [x['id'] for x in ss]
        assert ids == sorted(ids), 'not oldest first: %r' % ids
        assert all(x['user'] == 'u' for x in ss), ss
        assert set(workers_of_log(g.log())) == set(range(N)), g.log()
    finally:
        for f in fs:
            f.close()
        g.stop()


def c10_clean():
    """Every ftpgate of this file exited 0 with no sanitizer or race report."""
    bad = []
    for g in T.started_gates:
        rc = g.stop()
        text = g.log()
        if rc != 0:
            bad.append('%s: exit status %s' % (g.conf, rc))
        for pat in ('AddressSanitizer', 'LeakSanitizer', 'runtime error:', 'ThreadSanitizer'):
            if pat in text:
                bad.append('%s: %s report:\n%s' % (g.conf, pat, text[text.index(pat) - 200:][:4000]))
    assert not bad, '\n'.join(bad)


t.case('workers = 4: four threads, sessions spread over every worker', c01_threads)
t.case('max_sessions_per_ip 2 / site max_sessions 3: exact with 10 connections at once',
       c02_limits)
t.case('global max_sessions 5: exact with 10 connections at once', c03_global_limit)
t.case('six passive ports, six sessions at once: six ports, a seventh refused, files right',
       c04_passive_ports, timeout=120)
t.case('metrics, xferlog and log lines sum every worker', c05_sums, timeout=120)
t.case('SIGHUP reaches every worker; a bad file keeps the old config in all', c06_reload)
t.case('SIGUSR1: every worker logs into the reopened file', c07_usr1)
if os.geteuid() == 0:
    t.case('user = nobody: every thread dropped', c08_privileges)
else:
    t.skip('user = nobody: every thread dropped', 'not root')
t.case('passthrough with 4 workers: forwarded port for a live session, not a stranger',
       c09_passthrough)
t.case('GET /sessions: the sessions of all four workers, oldest first', c11_sessions)
t.case('every ftpgate exited 0, no sanitizer (or ThreadSanitizer) report', c10_clean)
SRV.stop()
t.done()
