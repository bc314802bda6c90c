#!/usr/bin/python3
"""ftpgate passive-mode proxying against a real pyftpdlib backend, with real
clients (curl and Python's ftplib), loopback only.  TAP output."""

import ftplib
import hashlib
import io
import os
import random
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
BIG_MIB = 64

t = T.start_tap(('curl', T.CURL))

# --------------------------------------------------------------------------
# fixture: backend root, pyftpdlib server, ftpgate in front

ROOT, LOCAL, LISTDIR = T.backend_tree(
    (('a.txt', 10), ('b.bin', 4096), ('with space.txt', 7), ('empty', 0)), ('subdir',))
BIG = os.path.join(ROOT, 'big.bin')
MID = os.path.join(ROOT, 'mid.bin')
BIG_SHA = T.make_random_file(BIG, BIG_MIB)
MID_SHA = T.make_random_file(MID, 1)
with open(MID, 'rb') as _f:
    MID_DATA = _f.read()

try:
    SRV = T.PyftpdServer(ROOT, long_banner=True)
    # 50 concurrent sessions from 127.0.0.1 (c11): no per-address limit
    G = T.Ftpgate(T.gate_config(SRV, max_sessions_per_ip=0))
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])


def url(path, gate=None, host='127.0.0.1'):
    return 'ftp://u:p@%s:%d/%s' % (host, (gate or G).port, path)


def login(gate=None, host='127.0.0.1'):
    return T.ftp_login((gate or G).port, host=host)


def code(resp):
    return resp[:3]


def expect_fail_reply(fn, what):
    """fn() must raise a 4xx/5xx ftplib error; return the reply text."""
    try:
        r = fn()
    except (ftplib.error_temp, ftplib.error_perm) as e:
        return str(e)
    raise AssertionError('%s: expected a 4xx/5xx reply, got %r' % (what, r))


def parse_227(resp):
    host, port = ftplib.parse227(resp)
    return host, port


def list_names_from_LIST(lines):
    names = []
    for l in lines:
        f = l.split(None, 8)
        assert len(f) == 9, 'odd LIST line %r' % l
        names.append(f[8])
    return sorted(names)


# --------------------------------------------------------------------------
# cases

def c01_login():
    f = T.RecordingFTP()
    welcome = f.connect('127.0.0.1', G.port, timeout=20)
    assert welcome.startswith('220-') and welcome.endswith('\n220 '), \
        'multi-line greeting not relayed intact: %r' % welcome
    assert SRV.banner in welcome, 'backend banner %r not relayed: %r' % (SRV.banner, welcome)
    resp = f.login('u', 'p')
    assert resp.startswith('230'), resp
    assert f.sendcmd('PWD').startswith('257 "/"'), f.replies[-1]
    f.quit()
    # wrong password: the backend's 530 is relayed
    f = T.RecordingFTP()
    f.connect('127.0.0.1', G.port, timeout=20)
    r = expect_fail_reply(lambda: f.login('u', 'wrong'), 'bad password')
    assert r.startswith('530'), r
    f.close()
    # anonymous works and is read-only (backend's 550 relayed)
    f = T.RecordingFTP()
    f.connect('127.0.0.1', G.port, timeout=20)
    assert f.login().startswith('230'), f.replies[-1]
    r = expect_fail_reply(lambda: f.sendcmd('MKD nope'), 'anonymous MKD')
    assert r.startswith('550'), r
    f.quit()


def c02_list():
    expected = sorted(os.listdir(LISTDIR))
    f = login()
    lines = []
    f.retrlines('LIST list', lines.append)
    assert list_names_from_LIST(lines) == expected, (lines, expected)
    facts = {n: fa for n, fa in f.mlsd('list', facts=['type', 'size'])
             if n not in ('.', '..')}
    assert sorted(facts) == expected, (sorted(facts), expected)
    for n, fa in facts.items():
        p = os.path.join(LISTDIR, n)
        if os.path.isdir(p):
            assert fa['type'] == 'dir', (n, fa)
        else:
            assert fa['type'] == 'file' and int(fa['size']) == os.path.getsize(p), (n, fa)
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()
    r = T.curl([url('list/')])
    lines = r.stdout.decode('utf-8', 'replace').splitlines()
    assert list_names_from_LIST(lines) == expected, (lines, expected)


def curl_download(extra, out, want_cmd, want_reply):
    r = T.curl(['-v'] + extra + ['-o', out, url('big.bin')])
    err = r.stderr.decode('utf-8', 'replace')
    assert re.search(r'^> %s\r?$' % want_cmd, err, re.M), 'curl did not send %s:\n%s' % (want_cmd, err)
    assert re.search(r'^< %s ' % want_reply, err, re.M), 'no %s reply:\n%s' % (want_reply, err)
    got = T.sha256_file(out)
    os.unlink(out)
    assert got == BIG_SHA, 'sha256 mismatch'
    return err


def c03_curl_pasv():
    err = curl_download(['--disable-epsv', '--no-ftp-skip-pasv-ip'],
                        os.path.join(LOCAL, 'c03.bin'), 'PASV', '227')
    assert re.search(r'^< 227 .*\(127,0,0,1,\d+,\d+\)', err, re.M), err


def c04_curl_epsv():
    curl_download([], os.path.join(LOCAL, 'c04.bin'), 'EPSV', '229')


def c05_upload():
    src = os.path.join(LOCAL, 'c05-up.bin')
    sha = T.make_random_file(src, BIG_MIB)
    try:
        T.curl(['-T', src, url('up/big_up.bin')])
    finally:
        os.unlink(src)
    dst = os.path.join(ROOT, 'up', 'big_up.bin')
    assert os.path.getsize(dst) == BIG_MIB * MiB, os.path.getsize(dst)
    assert T.sha256_file(dst) == sha, 'uploaded file differs'
    os.unlink(dst)
    # ftplib STOR then APPE
    a = os.urandom(3 * MiB + 5)
    b = os.urandom(MiB + 17)
    f = login()
    assert f.storbinary('STOR up/s.bin', io.BytesIO(a)).startswith('226'), f.replies[-1]
    assert f.storbinary('APPE up/s.bin', io.BytesIO(b)).startswith('226'), f.replies[-1]
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()
    with open(os.path.join(ROOT, 'up', 's.bin'), 'rb') as fh:
        got = fh.read()
    assert got == a + b, 'STOR+APPE content differs (len %d, want %d)' % (len(got), len(a + b))


def c06_ftplib_pasv_trust():
    f = login()
    f.trust_server_pasv_ipv4_address = True
    f.set_pasv(True)
    sha, n = T.sha_retr(f, 'big.bin')
    assert 'PASV' in f.sent and 'EPSV' not in f.sent, f.sent
    r227 = [r for r in f.replies if r.startswith('227')]
    assert r227 and parse_227(r227[0])[0] == '127.0.0.1', r227
    assert n == BIG_MIB * MiB and sha == BIG_SHA, (n, sha)
    f.quit()


def c07_nat_backend():
    # Without EPSV at the backend the proxy has to use PASV and its bogus
    # address; with EPSV available, whatever the proxy prefers.
    nat_variant(no_epsv=True)
    nat_variant(no_epsv=False)


def nat_variant(no_epsv):
    nat = T.PyftpdServer(ROOT, masquerade_address='198.51.100.77', no_epsv=no_epsv)
    try:
        # sanity: the backend itself announces the bogus address
        d = T.ftp_login(nat.port)
        r = d.sendcmd('PASV')
        assert '198,51,100,77' in r, r
        d.close()
        g = T.Ftpgate(T.gate_config(nat))
        try:
            out = os.path.join(LOCAL, 'c07.bin')
            T.curl(['--disable-epsv', '--no-ftp-skip-pasv-ip', '-o', out, url('mid.bin', g)])
            assert T.sha256_file(out) == MID_SHA
            os.unlink(out)
            f = login(g)
            resp = f.sendcmd('PASV')
            host, port = parse_227(resp)
            assert host == '127.0.0.1' and '198,51,100,77' not in resp, resp
            with socket.create_connection((host, port), timeout=10) as s:
                r = f.sendcmd('NLST list')
                assert r[:1] == '1', r
                data, how = T.recv_until_closed(s, 10)
                assert how == 'eof', how
            assert f.voidresp().startswith('226')
            names = sorted(x for x in data.decode().split('\r\n') if x)
            assert [os.path.basename(x) for x in names] == sorted(os.listdir(LISTDIR)), names
            f.quit()
            # What did the proxy ask the backend?  (Informational: the bogus
            # address only matters if the proxy used PASV towards it.)
            blog = nat.log()
            npasv = len(re.findall(r'<- PASV', blog)) - 1  # minus our direct one
            T.diag('no_epsv=%s: proxy->backend: PASV %d, EPSV %d' % (
                no_epsv, npasv, len(re.findall(r'<- EPSV', blog))))
            if no_epsv:
                assert npasv >= 2, 'proxy did not use PASV towards the backend'
        finally:
            g.stop()
    finally:
        nat.stop()


def c08_rest():
    size = BIG_MIB * MiB
    n = 10 * MiB + 12345
    # part 1: read the first n bytes through the proxy, then drop the session
    a = login()
    assert a.sendcmd('TYPE I').startswith('200')
    conn = a.transfercmd('RETR big.bin')
    part1 = bytearray()
    while len(part1) < n:
        b = conn.recv(min(65536, n - len(part1)))
        assert b, 'data connection closed early at %d' % len(part1)
        part1.extend(b)
    conn.close()
    a.close()
    # part 2: REST n + RETR in a new session
    f = login()
    h = hashlib.sha256(bytes(part1))
    cnt = [0]

    def cb(b):
        h.update(b)
        cnt[0] += len(b)
    f.retrbinary('RETR big.bin', cb, rest=n)
    r = f.reply_to('REST %d' % n)
    assert r is not None and r.startswith('350'), (f.sent, f.replies)
    assert cnt[0] == size - n, cnt[0]
    assert h.hexdigest() == BIG_SHA, 'REST download: combined sha256 differs'
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()
    # curl -C - resumes a partial file
    m = 5 * MiB + 1
    out = os.path.join(LOCAL, 'c08.bin')
    with open(out, 'wb') as fh:
        fh.write(part1[:m])
    r = T.curl(['-v', '-C', '-', '-o', out, url('big.bin')])
    err = r.stderr.decode('utf-8', 'replace')
    assert re.search(r'^> REST %d\r?$' % m, err, re.M), err
    assert T.sha256_file(out) == BIG_SHA, 'curl -C - result differs'
    os.unlink(out)


def abort_case(urgent):
    def fn():
        size = BIG_MIB * MiB
        f = login()
        assert f.sendcmd('TYPE I').startswith('200')
        conn = f.transfercmd('RETR big.bin')
        got = 0
        while got < MiB:
            b = conn.recv(65536)
            assert b, 'data closed early'
            got += len(b)
        drained = {'n': 0, 'how': None}

        def drain():
            time.sleep(0.3)   # let ABOR reach the backend first
            data, how = T.recv_until_closed(conn, 20)
            drained['n'], drained['how'] = len(data), how
        th = threading.Thread(target=drain, daemon=True)
        th.start()
        if urgent:
            r1 = f.abort()        # ftplib: "ABOR\r\n" sent with MSG_OOB
        else:
            f.putcmd('ABOR')
            r1 = f.getmultiline()
        assert code(r1) in ('426', '225', '226'), 'ABOR reply: %r' % r1
        replies = [r1]
        if r1.startswith('426'):
            r2 = f.getmultiline()
            replies.append(r2)
            assert code(r2) in ('226', '225'), 'second ABOR reply: %r' % r2
        th.join(25)
        assert not th.is_alive(), 'client data connection not closed after ABOR'
        conn.close()
        total = got + drained['n']
        T.diag('ABOR replies %r; %d of %d bytes received (%s)' % (replies, total, size, drained['how']))
        if r1.startswith('426'):
            assert total < size, 'transfer was not cut short'
        r = f.sendcmd('NOOP')
        assert r.startswith('200'), 'reply stream out of step after ABOR: NOOP -> %r' % r
        sha, n = T.sha_retr(f, 'big.bin')
        assert n == size and sha == BIG_SHA, 'download after ABOR differs (%d bytes)' % n
        r = f.sendcmd('NOOP')
        assert r.startswith('200'), r
        f.quit()
    return fn


def c10_many_transfers():
    f = login()
    rnd = random.Random(10)
    for i in range(50):
        data = os.urandom(rnd.randint(1, 200 * 1024))
        name = 'up/t10-%02d.bin' % i
        r = f.storbinary('STOR ' + name, io.BytesIO(data))
        assert r.startswith('226'), (i, r)
        with open(os.path.join(ROOT, name), 'rb') as fh:
            assert fh.read() == data, 'STOR %d: server content differs' % i
        back = T.retr_bytes(f, name)
        assert back == data, 'RETR %d: content differs (%d vs %d bytes)' % (i, len(back), len(data))
        os.unlink(os.path.join(ROOT, name))
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()


def c11_concurrent():
    N = 50
    barrier = threading.Barrier(N, timeout=30)
    errors = []
    ok = [0]
    lock = threading.Lock()

    def worker(i):
        try:
            f = login()
            barrier.wait()    # all N sessions open at once
            sha, n = T.sha_retr(f, 'mid.bin')
            assert sha == MID_SHA and n == MiB, 'sha256 mismatch (%d bytes)' % n
            f.quit()
            with lock:
                ok[0] += 1
        except Exception as e:  # noqa
            with lock:
                errors.append('session %d: %r' % (i, e))
            try:
                barrier.abort()
            except Exception:
                pass
    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(50)
    assert not errors, '\n'.join(errors[:10])
    assert ok[0] == N, '%d of %d sessions finished' % (ok[0], N)


def c12_ipv6():
    g = T.Ftpgate(T.gate_config(SRV, listen_host='::1'))
    try:
        f = login(g, host='::1')
        sha, n = T.sha_retr(f, 'big.bin')
        assert 'EPSV' in f.sent, f.sent
        assert any(r.startswith('229') for r in f.replies), f.replies
        assert sha == BIG_SHA, 'sha256 mismatch'
        f.quit()
        out = os.path.join(LOCAL, 'c12.bin')
        T.curl(['-o', out, url('mid.bin', g, host='[::1]')])
        assert T.sha256_file(out) == MID_SHA
        os.unlink(out)
    finally:
        g.stop()


def c13_backend_down():
    g = T.Ftpgate(T.gate_config('127.0.0.1:%d' % T.closed_port(), connect_timeout=5))
    try:
        mark = g.log_mark()
        with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
            data, how = T.recv_until_closed(s, 15)
        text = data.decode('utf-8', 'replace')
        assert text.startswith('421'), 'expected 421, got %r' % text
        assert text.endswith('\r\n') and text.count('\r\n') == 1, repr(text)
        assert how in ('eof', 'reset'), 'connection not closed after 421 (%s)' % how
        assert g.wait_log(r'(?i)backend', mark), 'log does not say why:\n' + g.log_since(mark)
        assert g.alive(), 'ftpgate died'
    finally:
        g.stop()


def c14_stranger():
    f = login()
    assert f.sendcmd('TYPE I').startswith('200')
    mark = G.log_mark()
    host, port = parse_227(f.sendcmd('PASV'))
    assert host == '127.0.0.1', host
    with socket.socket() as st:
        st.bind(('127.0.0.2', 0))
        st.settimeout(5)
        st.connect((host, port))
        data, how = T.recv_until_closed(st, 5)
    assert how in ('eof', 'reset'), 'stranger connection from 127.0.0.2 not closed (%s)' % how
    assert data == b'', 'stranger received data: %r' % data[:100]
    with socket.create_connection((host, port), timeout=10) as s:
        assert s.getsockname()[0] == '127.0.0.1'
        r = f.sendcmd('RETR mid.bin')
        assert r[:1] == '1', r
        data, how = T.recv_until_closed(s, 20)
        assert how == 'eof', how
    assert f.voidresp().startswith('226')
    assert T.sha256_bytes(data) == MID_SHA, 'data differs (%d bytes)' % len(data)
    assert f.sendcmd('NOOP').startswith('200')
    f.quit()
    assert G.wait_log(r'127\.0\.0\.2', mark), 'log does not mention the refused address'


def c15_no_pasv():
    f = login()
    r = expect_fail_reply(lambda: f.sendcmd('RETR mid.bin'), 'RETR without PASV')
    T.diag('RETR without PASV -> %s' % r)
    assert f.sendcmd('PWD').startswith('257'), f.replies[-1]
    r = expect_fail_reply(lambda: f.sendcmd('LIST'), 'LIST without PASV')
    assert f.sendcmd('NOOP').startswith('200'), f.replies[-1]
    # a PASV is good for one transfer only
    sha, n = T.sha_retr(f, 'mid.bin')
    assert sha == MID_SHA
    r = expect_fail_reply(lambda: f.sendcmd('RETR mid.bin'), 'second RETR after one PASV')
    assert f.sendcmd('PWD').startswith('257'), f.replies[-1]
    sha, n = T.sha_retr(f, 'mid.bin')
    assert sha == MID_SHA
    f.quit()


def c16_data_timeout():
    g = T.Ftpgate(T.gate_config(SRV, data_timeout=2))
    try:
        f = login(g)
        host, port = parse_227(f.sendcmd('PASV'))
        time.sleep(4)
        try:
            s = socket.create_connection((host, port), timeout=5)
        except ConnectionRefusedError:
            pass
        else:
            s.settimeout(2)
            try:
                extra = s.recv(10)
            except OSError as e:
                extra = e
            s.close()
            raise AssertionError('passive port %d still accepts after data_timeout '
                                 '(then recv -> %r)' % (port, extra))
        r = f.sendcmd('NOOP')
        assert r.startswith('200'), 'after data timeout NOOP -> %r' % r
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA
        f.quit()
    finally:
        g.stop()


def c17_misc():
    f = login()
    names = f.nlst('list')
    assert sorted(os.path.basename(x) for x in names) == sorted(os.listdir(LISTDIR)), names
    # STOU
    data = os.urandom(12345)
    f.cwd('up')
    assert f.sendcmd('TYPE I').startswith('200')
    conn = f.transfercmd('STOU')
    r150 = f.replies[-1]
    m = re.search(r'FILE: (\S+)', r150)
    assert r150[:1] == '1' and m, r150
    conn.sendall(data)
    conn.close()
    assert f.voidresp().startswith('226'), f.replies[-1]
    with open(os.path.join(ROOT, 'up', os.path.basename(m.group(1))), 'rb') as fh:
        assert fh.read() == data, 'STOU content differs'
    # APPE
    f.storbinary('STOR appe.txt', io.BytesIO(b'first\n'))
    f.storbinary('APPE appe.txt', io.BytesIO(b'second\n'))
    with open(os.path.join(ROOT, 'up', 'appe.txt'), 'rb') as fh:
        assert fh.read() == b'first\nsecond\n'
    f.cwd('/')
    # 550 then the reply stream stays in step
    r = expect_fail_reply(lambda: f.retrbinary('RETR no-such-file', lambda b: None), 'RETR missing')
    assert r.startswith('550'), r
    r = f.sendcmd('PWD')
    assert r.startswith('257 "/"'), 'reply after 550 out of step: %r' % r
    r = expect_fail_reply(lambda: f.sendcmd('CWD /no-such-dir'), 'CWD missing')
    assert r.startswith('550'), r
    assert f.sendcmd('TYPE I').startswith('200'), f.replies[-1]
    sha, n = T.sha_retr(f, 'mid.bin')
    assert sha == MID_SHA
    assert f.sendcmd('PWD').startswith('257'), f.replies[-1]
    # multi-line replies relayed whole, replies stay in step
    r = f.sendcmd('HELP')
    assert r.startswith('214-') and r.splitlines()[-1].startswith('214 '), r
    assert 'RETR' in r, r
    r = f.sendcmd('FEAT')
    assert r.startswith('211-') and r.splitlines()[-1].startswith('211'), r
    r = f.sendcmd('STAT')
    assert r.startswith('211-') and r.splitlines()[-1].startswith('211 '), r
    assert f.sendcmd('PWD').startswith('257'), f.replies[-1]
    f.quit()


def c19_public_address():
    g = T.Ftpgate(T.gate_config(SRV, public_address='127.0.0.3'))
    try:
        f = login(g)
        host, port = parse_227(f.sendcmd('PASV'))
        assert host == '127.0.0.3', 'PASV announced %s, want public_address 127.0.0.3' % host
        # ftplib (default) ignores the 227 address and connects to 127.0.0.1
        sha, n = T.sha_retr(f, 'mid.bin')
        assert sha == MID_SHA
        assert f.sendcmd('NOOP').startswith('200'), f.replies[-1]
        f.quit()
    finally:
        g.stop()


def c20_idle_timeout():
    g = T.Ftpgate(T.gate_config(SRV, idle_timeout=2))
    try:
        # a slow transfer lasting longer than idle_timeout must survive
        f = login(g)
        assert f.sendcmd('TYPE I').startswith('200')
        conn = f.transfercmd('RETR big.bin')
        h = hashlib.sha256()
        n = 0
        t_end = time.monotonic() + 3.5
        while time.monotonic() < t_end:
            b = conn.recv(16384)
            assert b, 'data closed early'
            h.update(b)
            n += len(b)
            time.sleep(0.05)
        data, how = T.recv_until_closed(conn, 20)
        conn.close()
        assert how == 'eof', how
        h.update(data)
        n += len(data)
        assert f.voidresp().startswith('226'), f.replies[-1]
        assert n == BIG_MIB * MiB and h.hexdigest() == BIG_SHA, 'slow download differs'
        # then an idle control connection is closed with 421
        time.sleep(0.5)
        f.sock.settimeout(10)
        t0 = time.monotonic()
        data, how = T.recv_until_closed(f.sock, 8)
        text = data.decode('utf-8', 'replace')
        assert text.startswith('421'), 'expected 421 after idle_timeout, got %r (%s)' % (text, how)
        assert how in ('eof', 'reset'), 'not closed after 421 (%s)' % how
        T.diag('idle close after %.1f s more: %r' % (time.monotonic() - t0, text.strip()))
        f.close()
    finally:
        g.stop()


def c21_max_sessions():
    g = T.Ftpgate(T.gate_config(SRV, max_sessions=2))
    try:
        a = login(g)
        b = login(g)
        with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
            data, how = T.recv_until_closed(s, 10)
        assert data.startswith(b'421'), 'third session: %r' % data
        assert how in ('eof', 'reset'), how
        b.quit()
        # a slot is free again once the proxy has seen the QUIT
        deadline = time.monotonic() + 5
        while True:
            c = T.RecordingFTP()
            try:
                w = c.connect('127.0.0.1', g.port, timeout=10)
            except ftplib.error_temp as e:   # the 421 (ftplib raises on it)
                w = str(e)
                c.close()
            if w.startswith('220') or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert w.startswith('220'), 'no slot after a session ended: %r' % w
        c.login('u', 'p')
        assert c.sendcmd('NOOP').startswith('200')
        assert a.sendcmd('NOOP').startswith('200')
        c.quit()
        a.quit()
    finally:
        g.stop()


def c18_healthy():
    assert G.alive(), 'ftpgate died'
    log = G.log()
    for bad in ('AddressSanitizer', 'runtime error:', 'LeakSanitizer'):
        assert bad not in log, 'sanitizer report in log'
    rc = G.stop()
    T.diag('ftpgate exit status after SIGTERM: %s' % rc)


def c22_stranger_log_limit():
    """Issue 10.12: 300 strangers on a passive port: the refusal log lines
    are rate-limited (one a second per site, with the count left out); the
    real client still gets its data."""
    f = login()
    assert f.sendcmd('TYPE I').startswith('200')
    mark = G.log_mark()
    host, port = parse_227(f.sendcmd('PASV'))
    for i in range(300):
        with socket.socket() as st:
            st.bind(('127.0.0.2', 0))
            st.settimeout(5)
            st.connect((host, port))
            try:
                st.recv(1)
            except OSError:
                pass
    time.sleep(1.2)
    with socket.socket() as st:       # the next line carries the count
        st.bind(('127.0.0.2', 0))
        st.settimeout(5)
        st.connect((host, port))
        T.recv_until_closed(st, 2)
    m = G.wait_log(r'refused data connection from .* \((\d+) more suppressed', mark, 5)
    log = G.log_since(mark)
    n = len(re.findall(r'refused data connection from', log))
    T.diag('%d refusal lines for 301 strangers' % n)
    assert n <= 10, '%d refusal lines for 301 strangers' % n
    assert m and int(m.group(1)) >= 250, 'no count of suppressed lines:\n%s' % log[-1500:]
    with socket.create_connection((host, port), timeout=10) as s:
        r = f.sendcmd('RETR mid.bin')
        assert r[:1] == '1', r
        data, how = T.recv_until_closed(s, 20)
    assert f.voidresp().startswith('226')
    assert T.sha256_bytes(data) == MID_SHA, 'data differs (%d bytes)' % len(data)
    f.quit()


def c23_226_before_close():
    """Issue 17.6: a client that reads the whole download and waits for
    226 before it closes its data socket gets its 226 (the proxy no longer
    waits for the client's close: "delivered" is every byte written, the
    EOF passed on and the socket's send queue drained).  RETR of 1 MiB and
    of an empty file, and a LIST, on one session, each checked."""
    c = T.raw_greeted(G.port, timeout=20)
    T.raw_login(c)
    assert c.cmd('TYPE I').startswith(b'200')
    for what, want in (('RETR mid.bin', MID_SHA), ('RETR list/empty', T.sha256_bytes(b'')),
                       ('LIST', None)):
        r = c.cmd('EPSV')
        m = re.search(rb'\(\|\|\|(\d+)\|\)', r)
        assert m, 'EPSV: %r' % r
        d = socket.create_connection(('127.0.0.1', int(m.group(1))), timeout=10)
        try:
            r = c.cmd(what)
            assert r[:1] == b'1', '%s: %r' % (what, r)
            data, how = T.recv_until_closed(d, 20)
            assert how == 'eof', '%s: data ended by %s after %d bytes' % (what, how, len(data))
            # The data socket stays open until the final reply is in.
            r = c.reply(timeout=10)
            assert r.startswith(b'226'), '%s: %r (after %d bytes)' % (what, r, len(data))
        finally:
            d.close()
        if want:
            assert T.sha256_bytes(data) == want, '%s: data differs (%d bytes)' % (what, len(data))
        else:
            assert b'mid.bin' in data, 'LIST: %r' % data[:300]
    assert c.cmd('NOOP').startswith(b'200')
    c.close()


t.case('login, backend greeting relayed', c01_login, 30)
t.case('LIST/MLSD (ftplib) and LIST (curl) match the directory', c02_list, 30)
t.case('curl PASV download 64 MiB, sha256', c03_curl_pasv, 60)
t.case('curl EPSV download 64 MiB, sha256', c04_curl_epsv, 60)
t.case('curl upload 64 MiB; ftplib STOR + APPE', c05_upload, 90)
t.case('ftplib PASV (trust 227 address) download', c06_ftplib_pasv_trust, 60)
t.case('backend behind NAT (bogus 227 address)', c07_nat_backend, 60)
t.case('REST resume: ftplib rest= and curl -C -', c08_rest, 60)
t.case('ABOR (ftplib.abort, urgent) mid-download, session reusable', abort_case(True), 60)
t.case('ABOR (in-band) mid-download, session reusable', abort_case(False), 60)
t.case('100 transfers in one session', c10_many_transfers, 90)
t.case('50 concurrent sessions', c11_concurrent, 60)
if T.ipv6_loopback_ok():
    t.case('IPv6 client, IPv4 backend (EPSV)', c12_ipv6, 60)
else:
    t.skip('IPv6 client, IPv4 backend (EPSV)', '::1 not available')
t.case('backend down -> 421 and close', c13_backend_down, 30)
t.case('stranger on the passive port is refused', c14_stranger, 30)
t.case('300 strangers on a passive port: a few log lines with a suppressed count',
       c22_stranger_log_limit, 60)
t.case('transfer without PASV -> 4xx/5xx, session usable', c15_no_pasv, 30)
t.case('passive listener closes after data_timeout', c16_data_timeout, 30)
t.case('NLST, STOU, APPE; 550 keeps replies in step', c17_misc, 30)
t.case('public_address announced in 227', c19_public_address, 30)
t.case('idle_timeout: slow transfer survives, idle session gets 421', c20_idle_timeout, 40)
t.case('site max_sessions: extra session gets 421', c21_max_sessions, 30)
t.case('client waits for 226 before closing its data socket (RETR, empty RETR, LIST)',
       c23_226_before_close, 60)
t.case('ftpgate alive, no sanitizer reports', c18_healthy, 15)
t.done()
