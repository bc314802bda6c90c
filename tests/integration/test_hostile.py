#!/usr/bin/python3
"""ftpgate against hostile or broken peers: raw-socket clients that send
over-long lines, control characters, Telnet sequences, pipelined commands,
that never log in or stop reading; small fake backends that never greet,
send malformed or huge replies, point 227 elsewhere, send unsolicited
replies, reset the data connection; a proxy out of file descriptors (run
under a low RLIMIT_NOFILE).  Exact replies are asserted, and after each case
a normal client must still be served.  Loopback only.  TAP."""

import ftplib
import hashlib
import itertools
import os
import re
import shutil
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
RSS_LIMIT_KB = 50 * 1024
TOO_LONG = b'500 Command line too long.\r\n'
SYNTAX = b'500 Syntax error, command unrecognized.\r\n'

t = T.start_tap()

ROOT = T.tmpdir('ftproot-')
MID = os.path.join(ROOT, 'mid.bin')
MID_SHA = T.make_random_file(MID, 1)
BIG_MIB = 64
BIG_SHA = T.make_random_file(os.path.join(ROOT, 'big.bin'), BIG_MIB)

try:
    SRV = T.PyftpdServer(ROOT)
    G = T.Ftpgate(T.gate_config(SRV))
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])


def still_serves(gate=None):
    """A normal client: ftplib login + 1 MiB download with sha256 check."""
    g = gate or G
    assert g.alive(), 'ftpgate died'
    f = T.ftp_login(g.port)
    h = hashlib.sha256()
    f.retrbinary('RETR mid.bin', h.update)
    assert h.hexdigest() == MID_SHA, 'download after the hostile case differs'
    assert f.sendcmd('NOOP').startswith('200'), f.replies[-1]
    f.quit()


def direct_replies(cmds):
    """The backend's own replies (bytes) to cmds, without the proxy."""
    with T.RawCtl('127.0.0.1', SRV.port) as c:
        c.reply()
        return [c.cmd(x) for x in cmds]


def ctl(gate=None, source=None):
    return T.raw_greeted((gate or G).port, source=source)


raw_login = T.raw_login


def rss(gate=None):
    return T.vm_rss_kb((gate or G).proc.pid) or 0


def check_rss(peak, base):
    """ftpgate's RSS stays under RSS_LIMIT_KB (not checked under ASan, whose
    quarantine keeps freed memory resident by design)."""
    if T.ftpgate_sanitized():
        T.diag('ASan build: RSS limit not checked (peak %d KiB, %d KiB before)' % (peak, base))
        return
    assert peak < RSS_LIMIT_KB, 'ftpgate RSS %d KiB (%d KiB before)' % (peak, base)


NOOP_REPLY = None


def noop_reply():
    global NOOP_REPLY
    if NOOP_REPLY is None:
        NOOP_REPLY = direct_replies(['NOOP'])[0]
    return NOOP_REPLY


# --------------------------------------------------------------------------
# 1. over-long lines

def c_long_line():
    mark = G.log_mark()
    smark = os.path.getsize(SRV.log_path)
    with ctl() as c:
        c.send(b'NOOP ' + b'A' * 9995 + b'\r\n')          # 10000 bytes + CRLF
        r = c.reply()
        assert r == TOO_LONG, r
        assert c.pending(0.3) == b'', 'more than one reply to one long line'
        assert c.cmd('NOOP') == noop_reply(), 'session broken after a long line'
        raw_login(c)
        assert c.cmd('NOOP') == noop_reply()
    assert G.wait_log(r'command line too long', mark), G.log_since(mark)
    time.sleep(0.2)
    with open(SRV.log_path, 'rb') as f:
        f.seek(smark)
        assert b'A' * 100 not in f.read(), 'the long line reached the backend'
    still_serves()


def c_huge_line():
    base = rss()
    peak = [base]
    with ctl() as c:
        chunk = b'B' * 65536
        c.sock.settimeout(20)
        for i in range(16):                        # 1 MiB, no LF
            c.send(chunk)
            if i % 4 == 3:
                peak[0] = max(peak[0], rss())
        time.sleep(0.3)
        peak[0] = max(peak[0], rss())
        assert c.pending(0.2) == b'', 'reply before the line ended'
        c.send(b'\r\n')
        r = c.reply()
        assert r == TOO_LONG, r
        assert c.pending(0.3) == b'', 'more than one reply to one huge line'
        assert c.cmd('NOOP') == noop_reply(), 'session broken after a 1 MiB line'
        # a huge line with a bare LF, then a command in the same send
        c.send(b'C' * 200000 + b'\nNOOP\r\n')
        assert c.reply() == TOO_LONG
        assert c.reply() == noop_reply()
    T.diag('ftpgate RSS %d KiB before, peak %d KiB' % (base, peak[0]))
    check_rss(peak[0], base)
    still_serves()


def echo_backend():
    """A fake backend that answers every line with its length."""
    def handler(c, fb):
        c.send('220 echo ready\r\n')
        while True:
            line = c.readline()
            if line is None:
                return
            if line.upper() == 'QUIT':
                c.send('221 bye\r\n')
                return
            c.send('200 len %d\r\n' % len(line))
    return T.FakeBackend(handler)


def c_line_limit_boundary():
    """4096 bytes including CRLF pass (intact); 4097 do not."""
    fb = echo_backend()
    g = T.Ftpgate(T.gate_config(fb.addr()))
    try:
        with ctl(g) as c:
            ok = b'SITE ' + b'x' * (4096 - 5 - 2)
            assert len(ok) + 2 == 4096
            r = c.cmd(ok)
            assert r == b'200 len 4094\r\n', '4096-byte line: %r' % r[:100]
            assert fb.conns[0].lines[-1] == ok.decode(), 'line not passed intact'
            r = c.cmd(ok + b'y')
            assert r == TOO_LONG, '4097-byte line: %r' % r[:100]
            c.send(ok + b'z\n')                      # 4096 with a bare LF
            r = c.reply()
            assert r == b'200 len 4095\r\n', '4096-byte LF line: %r' % r[:100]
            r = c.cmd('NOOP')
            assert r == b'200 len 4\r\n', r
    finally:
        g.stop()
        fb.stop()
    still_serves()


def c_iac_data_byte():
    """A 0xff data byte travels as IAC IAC on a Telnet control connection
    (RFC 959 4.1.3 / RFC 854): the proxy decodes it from the client and must
    encode it again toward the backend, or the backend's Telnet layer eats
    it and the byte after it."""
    fb = echo_backend()
    g = T.Ftpgate(T.gate_config(fb.addr()))
    try:
        with ctl(g) as c:
            r = c.cmd(b'SITE a\xff\xffb')
            got = fb.conns[0].lines[-1]
            assert got == 'SITE a\xff\xffb', \
                'client sent SITE a<IAC IAC>b; the backend received %r' % got.encode('latin-1')
            assert r == b'200 len 9\r\n', r  # 9 bytes: SITE a IAC IAC b
            r = c.cmd(b'SITE \xff\xf4c')          # IAC IP: a Telnet command, stripped
            assert r == b'200 len 6\r\n' and fb.conns[0].lines[-1] == 'SITE c', \
                (r, fb.conns[0].lines[-1])
    finally:
        g.stop()
        fb.stop()


# --------------------------------------------------------------------------
# 2. control characters, Telnet, LF, pipelining

def c_control_chars():
    with ctl() as c:
        for bad in (b'NO\x00OP\r\n', b'NOOP\x00\r\n', b'NOOP \x07x\r\n', b'NO\x7fOP\r\n',
                    b'\x1b[2JNOOP\r\n', b'NOOP\rX\r\n'):
            c.send(bad)
            r = c.reply()
            assert r == SYNTAX, '%r -> %r' % (bad, r)
        assert c.pending(0.3) == b'', 'extra replies'
        c.send(b'NOOP\n')
        assert c.reply() == noop_reply(), 'bare LF'
        c.send(b'\xff\xf4\xff\xf2NOOP\r\n')          # IAC IP IAC DM
        assert c.reply() == noop_reply(), 'IAC IP IAC DM NOOP'
        c.send(b'\xff\xfb\x01NO\xff\xf1OP\r\n')      # IAC WILL ECHO, IAC NOP inside
        assert c.reply() == noop_reply(), 'Telnet negotiation inside NOOP'
        c.send(b'\r\n')
        assert c.reply() == SYNTAX, 'empty line'
        assert c.cmd('NOOP') == noop_reply()
    still_serves()


def c_pipelined():
    cmds = ['USER u', 'PASS p', 'PWD', 'NOOP', 'TYPE I', 'SIZE mid.bin', 'CWD /', 'NOOP']
    want = direct_replies(cmds)
    with ctl() as c:
        c.send(b''.join(x.encode() + b'\r\n' for x in cmds))
        got = []
        for x in cmds:
            try:
                got.append(c.reply(5))
            except AssertionError as e:
                raise AssertionError('%d commands sent in one segment, %d replies within 5 s '
                                     'each: %r\nthen: %s' % (len(cmds), len(got), got, e))
        assert got == want, 'pipelined replies:\n%r\nwant\n%r' % (got, want)
        assert c.pending(0.3) == b'', 'extra replies'
        # byte-by-byte delivery of a pipelined batch
        for b in b'NOOP\r\nPWD\r\n':
            c.send(bytes([b]))
        assert c.reply() == noop_reply()
        assert c.reply() == want[2]
    with ctl() as c:
        # pipelining with a proxy-answered command in between
        c.send(b'USER u\r\nPASS p\r\nLPSV\r\nNOOP\r\nAUTH TLS\r\nPWD\r\n')
        got = [c.reply() for _ in range(6)]
        assert got[:2] == want[:2] and got[3] == want[3] and got[5] == want[2], got
        assert got[2].startswith(b'502 ') and got[4].startswith(b'502 '), got
    still_serves()


# --------------------------------------------------------------------------
# 3. login timeout

def c_login_timeout():
    g = T.Ftpgate(T.gate_config(SRV, login_timeout=2, idle_timeout=30))
    try:
        want = b'421 Login timeout (2 seconds): closing control connection.\r\n'
        # silent client
        t0 = time.monotonic()
        c = ctl(g)
        data, how = c.until_closed(6)
        dt = time.monotonic() - t0
        c.close()
        assert data == want, 'silent client: %r (%s)' % (data, how)
        assert how in ('eof', 'reset'), 'not closed after 421 (%s)' % how
        assert 1.5 <= dt <= 4.0, 'closed after %.2f s' % dt
        # USER only, then commands that are not a login: still cut at 2 s
        t0 = time.monotonic()
        c = ctl(g)
        assert c.cmd('USER u').startswith(b'331')
        buf = b''
        while time.monotonic() - t0 < 6:
            try:
                c.send(b'NOOP\r\n')
            except OSError:
                break
            d = c.pending(0.4)
            buf += d
            if b'421' in buf:
                break
        rest, how = c.until_closed(3)
        c.close()
        buf += rest
        dt = time.monotonic() - t0
        assert buf.endswith(want), 'busy client without login: %r' % buf[-200:]
        assert dt <= 4.5, 'busy unauthenticated client cut after %.2f s' % dt
        assert g.wait_log(r'not logged in after 2 s'), g.log()[-2000:]
        # a logged-in session outlives login_timeout
        with ctl(g) as c:
            raw_login(c)
            time.sleep(3)
            assert c.cmd('NOOP') == noop_reply(), 'logged-in session cut'
        still_serves(g)
    finally:
        g.stop()
    still_serves()


# --------------------------------------------------------------------------
# 4. a client that stops reading

def c_stops_reading():
    mark = G.log_mark()
    base = rss()
    c = ctl()
    cport = c.sock.getsockname()[1]
    try:
        raw_login(c)
        assert c.cmd('TYPE I').startswith(b'200')
        r = c.cmd('PASV')
        host, port = ftplib.parse227(r.decode())
        d = socket.socket()
        d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        d.settimeout(10)
        d.connect(('127.0.0.1', port))
        c.send(b'RETR big.bin\r\n')
        peak = base
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:           # read neither socket
            peak = max(peak, rss())
            time.sleep(0.25)
        T.diag('ftpgate RSS %d KiB before, peak %d KiB while the client did not read'
               % (base, peak))
        assert G.alive(), 'ftpgate died'
        check_rss(peak, base)
        # it is still a working session: read a bit, then walk away
        got = d.recv(65536)
        assert got, 'no data at all'
        d.close()
    finally:
        c.close()
    assert G.wait_log(r'end: client 127\.0\.0\.1:%d ' % cport, mark, 10), \
        'session not ended after the client left:\n' + G.log_since(mark)[-2000:]
    still_serves()


def c_command_flood():
    """A client that pipelines commands and never reads a reply: the proxy
    stops reading it (bounded memory) instead of buffering everything."""
    base = rss()
    c = ctl()
    sent = [0]
    stop = [False]

    def flood():
        blob = b'NOOP\r\n' * 10000
        c.sock.settimeout(1)
        while not stop[0] and sent[0] < 200 * MiB:
            try:
                c.sock.sendall(blob)
                sent[0] += len(blob)
            except socket.timeout:
                continue
            except OSError:
                return
    th = threading.Thread(target=flood, daemon=True)
    th.start()
    peak = base
    t_end = time.monotonic() + 4
    while time.monotonic() < t_end:
        peak = max(peak, rss())
        time.sleep(0.2)
    stop[0] = True
    th.join(3)
    c.close()
    T.diag('flood: %.1f MiB of NOOPs written; ftpgate RSS %d KiB before, peak %d KiB'
           % (sent[0] / MiB, base, peak))
    assert G.alive(), 'ftpgate died'
    check_rss(peak, base)
    still_serves()


# --------------------------------------------------------------------------
# 5. max_sessions_per_ip

def c_per_ip():
    g = T.Ftpgate(T.gate_config(SRV, max_sessions_per_ip=2))
    try:
        mark = g.log_mark()
        a = ctl(g)
        b = ctl(g)
        with T.RawCtl('127.0.0.1', g.port) as c:
            data, how = c.until_closed(5)
        assert data == b'421 Too many connections, try again later.\r\n', data
        assert how in ('eof', 'reset'), how
        assert g.wait_log(r'max_sessions_per_ip \(2\)', mark), g.log_since(mark)
        # another address is not limited by 127.0.0.1's sessions
        with ctl(g, source='127.0.0.2') as o:
            assert o.cmd('NOOP') == noop_reply()
        assert a.cmd('NOOP') == noop_reply() and b.cmd('NOOP') == noop_reply()
        a.close()
        deadline = time.monotonic() + 5
        while True:
            c = T.RawCtl('127.0.0.1', g.port)
            r = c.pending(1.0)
            if r.startswith(b'220') or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.2)
        assert r.startswith(b'220'), 'no slot after one session ended: %r' % r
        c.close()
        b.close()
        wait_all_ended(g, mark)
        still_serves(g)
    finally:
        g.stop()


def c_per_ip_default():
    """max_sessions_per_ip not set: 16 sessions from one address, the 17th
    gets 421; another address is not limited by them (issue 10.12)."""
    cfg = T.gate_config(SRV)
    assert 'max_sessions_per_ip' not in T.render_config(cfg)
    g = T.Ftpgate(cfg)
    conns = []
    try:
        mark = g.log_mark()
        for i in range(16):
            conns.append(ctl(g))
        with T.RawCtl('127.0.0.1', g.port) as c:
            data, how = c.until_closed(5)
        assert data == b'421 Too many connections, try again later.\r\n', \
            '17th session from 127.0.0.1: %r' % data
        assert g.wait_log(r'max_sessions_per_ip \(16\)', mark), g.log_since(mark)
        with ctl(g, source='127.0.0.2') as o:
            assert o.cmd('NOOP') == noop_reply()
    finally:
        for c in conns:
            c.close()
        g.stop()


# --------------------------------------------------------------------------
# 6. broken backends

def wait_all_ended(g, mark, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        log = g.log_since(mark)
        if log.count(': start: ') == log.count(': end: ') or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert log.count(': start: ') == log.count(': end: '), 'sessions not ended:\n' + log


def gate_for(fb, **kw):
    kw.setdefault('connect_timeout', 2)
    return T.Ftpgate(T.gate_config(fb.addr(), **kw))


def expect_421_close(g, within, send=None):
    """Connect, (optionally send), read until closed: exactly one 421 line."""
    t0 = time.monotonic()
    with T.RawCtl('127.0.0.1', g.port) as c:
        if send:
            c.send(send)
        data, how = c.until_closed(within + 3)
    dt = time.monotonic() - t0
    text = data.decode('latin-1')
    assert text.startswith('421') and text.endswith('\r\n') and text.count('\n') == 1, \
        'want one 421 line, got %r' % data[:300]
    assert how in ('eof', 'reset'), 'not closed after 421 (%s)' % how
    assert dt <= within + 1.5, '421 after %.2f s' % dt
    return text, dt


def c_fake_no_greeting():
    def handler(c, fb):
        fb.events.append('accepted')
        c.readline(timeout=15)   # never greet
    fb = T.FakeBackend(handler)
    g = gate_for(fb)
    try:
        text, dt = expect_421_close(g, 2.5)
        T.diag('silent backend: %r after %.2f s' % (text, dt))
        assert dt >= 1.5, '421 too early (%.2f s)' % dt
        assert fb.events == ['accepted'], fb.events
        assert g.wait_log(r'no greeting within 2 s'), g.log()[-2000:]
    finally:
        g.stop()
        fb.stop()
    still_serves()


def scripted_backend(script):
    """Fake backend: greeting script['greet'] (bytes), then for each command
    line the reply from script[VERB] (bytes or callable(conn, line, fb)),
    else '200 fake ok'.  QUIT -> 221."""
    def handler(c, fb):
        c.send(script.get('greet', b'220 fake ready\r\n'))
        while True:
            line = c.readline()
            if line is None:
                return
            verb = line.split(' ')[0].upper()
            act = script.get(verb)
            if callable(act):
                act(c, line, fb)
            elif act is not None:
                c.send(act)
            elif verb == 'QUIT':
                c.send(b'221 fake bye\r\n')
                return
            elif verb == 'USER':
                c.send(b'331 fake user ok\r\n')
            elif verb == 'PASS':
                c.send(b'230 fake logged in\r\n')
            else:
                c.send(b'200 fake ok\r\n')
    return T.FakeBackend(handler)


def c_fake_malformed_greeting():
    fb = scripted_backend({'greet': b'hello\r\n'})
    g = gate_for(fb)
    try:
        text, dt = expect_421_close(g, 2)
        assert 'hello' not in text, text
        assert g.wait_log(r'malformed.*hello'), g.log()[-2000:]
    finally:
        g.stop()
        fb.stop()
    # malformed reply in the middle of a session
    fb = scripted_backend({'USER': b'33 short code\r\n'})
    g = gate_for(fb)
    try:
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply() == b'220 fake ready\r\n'
            c.send(b'USER u\r\n')
            data, how = c.until_closed(5)
        assert data.startswith(b'421') and data.count(b'\n') == 1 and b'short' not in data, data
        assert how in ('eof', 'reset'), how
    finally:
        g.stop()
        fb.stop()
    still_serves()


def c_fake_long_reply():
    for name, script, send in (
            ('20000-byte reply to USER',
             {'USER': b'331 ' + b'x' * 19996 + b'\r\n'}, b'USER u\r\n'),
            ('20000-byte greeting', {'greet': b'220 ' + b'y' * 19996 + b'\r\n'}, None),
            ('20000 bytes and no LF, then silence',
             {'USER': b'331 ' + b'z' * 19996}, b'USER u\r\n'),
            ('multi-line reply with a 20000-byte line',
             {'USER': b'331-first\r\n' + b'w' * 20000 + b'\r\n331 end\r\n'}, b'USER u\r\n')):
        fb = scripted_backend(script)
        g = gate_for(fb)
        try:
            t0 = time.monotonic()
            with T.RawCtl('127.0.0.1', g.port) as c:
                if send:
                    assert c.reply() == b'220 fake ready\r\n'
                    c.send(send)
                data, how = c.until_closed(6)
            dt = time.monotonic() - t0
            assert data.startswith(b'421') and data.endswith(b'\r\n') and \
                data.count(b'\n') == 1, '%s: %r' % (name, data[:200])
            assert not re.search(rb'xxxx|yyyy|zzzz|wwww', data), '%s: junk relayed' % name
            assert how in ('eof', 'reset'), '%s: %s' % (name, how)
            assert dt < 4, '%s: 421 after %.2f s' % (name, dt)
            assert g.wait_log(r'longer than 8192|oversized'), g.log()[-1500:]
        finally:
            g.stop()
            fb.stop()
    still_serves()


def c_fake_227_elsewhere():
    payload = os.urandom(300000)
    state = {'data': None, 'trap': None}

    def pasv(c, line, fb):
        d = socket.socket()
        d.bind(('127.0.0.1', 0))
        d.listen(1)
        p = d.getsockname()[1]
        trap = socket.socket()
        trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        trap.bind(('127.0.0.9', p))
        trap.listen(1)
        state['data'], state['trap'] = d, trap
        c.send('227 Entering Passive Mode (127,0,0,9,%d,%d).\r\n' % (p >> 8, p & 255))

    def retr(c, line, fb):
        d = state['data']
        d.settimeout(10)
        c.send(b'150 Opening BINARY mode data connection.\r\n')
        conn, peer = d.accept()
        fb.events.append(('data-peer', peer[0]))
        conn.sendall(payload)
        conn.close()
        d.close()
        trap = state['trap']
        trap.setblocking(False)
        try:
            tc, tp = trap.accept()
            fb.events.append(('trap', tp))
            tc.close()
        except BlockingIOError:
            pass
        trap.close()
        c.send(b'226 Transfer complete.\r\n')

    fb = scripted_backend({'EPSV': b'500 EPSV not understood.\r\n', 'PASV': pasv,
                           'RETR': retr})
    g = gate_for(fb)
    try:
        f = T.ftp_login(g.port)
        f.trust_server_pasv_ipv4_address = True
        h = hashlib.sha256()
        f.retrbinary('RETR x', h.update)
        assert h.hexdigest() == T.sha256_bytes(payload), 'data differs'
        r227 = [r for r in f.replies if r.startswith('227')]
        assert r227 and ftplib.parse227(r227[0])[0] == '127.0.0.1', r227
        assert f.sendcmd('NOOP') == '200 fake ok'
        f.quit()
        assert ('data-peer', '127.0.0.1') in fb.events, fb.events
        assert not [e for e in fb.events if e[0] == 'trap'], \
            'the proxy connected to 127.0.0.9: %r' % fb.events
        assert g.wait_log(r'announced 127\.0\.0\.9'), g.log()[-1500:]
        assert not fb.errors, fb.errors
    finally:
        g.stop()
        fb.stop()
    still_serves()


def c_fake_unsolicited():
    fb = scripted_backend({
        'greet': b'220 fake ready\r\n200 \x1b[2Jspam\r\n',
        'USER': b'331 real-331\r\n', 'PASS': b'230 real-230\r\n', 'NOOP': b'200 real-noop\r\n',
        'SITE': b'200 site ok\r\n200 spam2\r\n',
    })
    g = gate_for(fb)
    try:
        mark = g.log_mark()
        with T.RawCtl('127.0.0.1', g.port) as c:
            assert c.reply() == b'220 fake ready\r\n'
            time.sleep(0.3)
            assert c.pending(0.2) == b'', 'unsolicited reply relayed'
            assert c.cmd('USER x') == b'331 real-331\r\n'
            assert c.cmd('PASS y') == b'230 real-230\r\n'
            assert c.cmd('SITE SPAM') == b'200 site ok\r\n'
            time.sleep(0.3)
            assert c.cmd('NOOP') == b'200 real-noop\r\n', 'reply stream out of step'
            assert c.pending(0.3) == b''
        log = g.log_since(mark)
        assert re.search(r'dropped a reply that answers nothing: "200 \\x1b\[2Jspam', log), log
        assert re.search(r'dropped a reply that answers nothing: "200 spam2', log), log
    finally:
        g.stop()
        fb.stop()
    # an unsolicited 421 is relayed and ends the session
    fb = scripted_backend({'NOOP': b'200 real-noop\r\n421 going down\r\n'})
    g = gate_for(fb)
    try:
        with T.RawCtl('127.0.0.1', g.port) as c:
            c.reply()
            assert c.cmd('NOOP') == b'200 real-noop\r\n'
            data, how = c.until_closed(5)
        assert data == b'421 going down\r\n' and how in ('eof', 'reset'), (data, how)
    finally:
        g.stop()
        fb.stop()
    still_serves()


def c_fake_extra_reply_in_flight():
    """A reply that cannot answer the command in flight (an extra 227 while
    TYPE I is in flight, an extra 200 while SIZE is) is logged and dropped;
    ftplib gets the real replies (issue 10.8)."""
    def type_i(c, line, fb):
        c.send(b'227 Entering Passive Mode (127,0,0,1,4,1).\r\n')   # TYPE is in flight
        c.send(b'200 Type set to I.\r\n')
    fb = scripted_backend({
        'TYPE': type_i,
        'SIZE': b'200 bogus\r\n213 4242\r\n',
        'MDTM': b'150 stray preliminary\r\n213 20200102030405\r\n',
        'PWD': b'257 "/" is the current directory.\r\n',
    })
    g = gate_for(fb)
    try:
        mark = g.log_mark()
        f = T.ftp_login(g.port)
        try:
            r = f.sendcmd('TYPE I')
            assert r == '200 Type set to I.', 'TYPE I answered %r' % r
            r = f.sendcmd('SIZE x')
            assert r == '213 4242', 'SIZE answered %r' % r
            r = f.sendcmd('MDTM x')
            assert r == '213 20200102030405', 'MDTM answered %r' % r
            assert f.pwd() == '/', f.replies[-1]
            assert f.sendcmd('NOOP') == '200 fake ok', f.replies[-1]
            f.quit()
        finally:
            f.close()
        log = g.log_since(mark)
        for code, verb in (('227', 'TYPE'), ('200', 'SIZE'), ('150', 'MDTM')):
            assert re.search(r'dropped a %s reply that cannot answer %s' % (code, verb), log), \
                'no log line for the %s during %s:\n%s' % (code, verb, log[-2000:])
        assert not fb.errors, fb.errors
    finally:
        g.stop()
        fb.stop()
    still_serves()


def c_long_lines_in_pieces():
    """Lines the proxy accepts (<= 4096 bytes) but the backend answers twice
    (pyftpdlib: a line over 2048 bytes gets "500 Command too long." and then
    "500 Command "" not understood."), sent pipelined in pieces of 2046 and
    2048 bytes with a normal command after them: each line gets one reply,
    the normal command its own (issue 10.9).  First a scripted backend that
    sends the second 500 late (after the proxy could have forwarded the next
    command): deterministic; then pyftpdlib itself, 20 times."""
    def long_line(c, line, fb):
        if len(line) > 2048:
            c.send(b'500 Command too long.\r\n')
            time.sleep(0.3)
            c.send(b'500 Command "" not understood.\r\n')
        else:
            c.send(b'200 site ok\r\n')
    fb = scripted_backend({'SITE': long_line, 'SYST': b'215 UNIX Type: L8\r\n'})
    g = gate_for(fb)
    lines = b''.join(b'SITE ' + b'a' * (n - 7) + b'\r\n' for n in (2046, 2048, 4096, 4096))
    want = b'200 site ok\r\n' * 2 + b'500 Command too long.\r\n' * 2 + b'215 UNIX Type: L8\r\n'

    def pieces(c, data):
        off, sizes = 0, itertools.cycle((2046, 2048))
        while off < len(data):
            n = next(sizes)
            c.send(data[off:off + n])
            off += n
            time.sleep(0.01)

    try:
        with ctl(g) as c:
            raw_login(c)
            pieces(c, lines + b'SYST\r\n')
            got = b''.join(c.reply(5) for _ in range(5))
            assert got == want, 'scripted backend: %r' % got
            assert c.pending(0.5) == b'', 'a reply too many'
        assert g.wait_log(r'dropped an extra 500 reply'), g.log()[-2000:]
    finally:
        g.stop()
        fb.stop()
    want = (b'500 Command too long.\r\n' * 3 + b'215 UNIX Type: L8\r\n')
    for i in range(20):
        with ctl() as c:
            raw_login(c)
            pieces(c, b'NOOP ' + b'a' * 4089 + b'\r\n' + lines[2046 + 2048:] + b'SYST\r\n')
            got = b''.join(c.reply(5) for _ in range(4))
            assert got == want, 'pyftpdlib, round %d: %r' % (i, got)
            assert c.pending(0.1) == b'', 'round %d: a reply too many' % i
    still_serves()


def rst_backend(final):
    """RETR bad: send 1 MB on the data connection, then RST it, then `final`
    on the control connection.  RETR good: 100 kB, clean close, 226."""
    state = {}
    good = os.urandom(100000)

    def epsv(c, line, fb):
        d = socket.socket()
        d.bind(('127.0.0.1', 0))
        d.listen(1)
        d.settimeout(10)
        state['d'] = d
        c.send('229 Entering extended passive mode (|||%d|).\r\n' % d.getsockname()[1])

    def retr(c, line, fb):
        c.send(b'150 Opening data connection.\r\n')
        conn, _ = state['d'].accept()
        state['d'].close()
        if line.endswith('good'):
            conn.sendall(good)
            conn.close()
            c.send(b'226 Transfer complete.\r\n')
            return
        conn.sendall(os.urandom(MiB))
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        conn.close()      # RST
        fb.events.append('rst')
        time.sleep(0.3)
        c.send(final)

    fb = scripted_backend({'EPSV': epsv, 'PASV': b'502 use EPSV\r\n', 'RETR': retr,
                           'NOOP': b'200 real-noop\r\n'})
    return fb, good


def rst_case(final, want_exact):
    def fn():
        fb, good = rst_backend(final)
        g = gate_for(fb)
        try:
            mark = g.log_mark()
            f = T.ftp_login(g.port)
            f.sendcmd('TYPE I')
            conn = f.transfercmd('RETR bad')
            data, how = T.recv_until_closed(conn, 10)
            conn.close()
            f.sock.settimeout(10)
            r = f.getmultiline()
            T.diag('backend RST after 1 MB, then %r: client got %d bytes (%s), reply %r'
                   % (final.strip(), len(data), how, r))
            assert 'rst' in fb.events, fb.events
            if want_exact:
                assert r == want_exact, 'want %r, got %r' % (want_exact, r)
            else:
                assert r[:1] == '4', 'data were cut by a reset, yet the client got %r' % r
            assert f.sendcmd('NOOP') == '200 real-noop', 'out of step: %r' % f.replies[-1]
            h = hashlib.sha256()
            f.retrbinary('RETR good', h.update)
            assert h.hexdigest() == T.sha256_bytes(good), 'clean RETR after the reset differs'
            f.quit()
            assert g.wait_log(r'transfer RETR bad: 4\d\d', mark), g.log_since(mark)[-1500:]
        finally:
            g.stop()
            fb.stop()
        still_serves()
    return fn


# --------------------------------------------------------------------------
# 7. log escaping

def c_log_escaping():
    mark = G.log_mark()
    with ctl() as c:
        c.send(b'USER ev\x1b[31mil\rx\r\n')
        assert c.reply() == SYNTAX
        c.send(b'USER \xc3\xa9vil\xff\xff\\\r\n')     # IAC IAC = one 0xff byte
        r = c.reply()
        assert r[:1] in b'35', r
        c.send(b'PASS S3cr3tZq\r\n')
        c.reply()
        c.send(b'QUIT\r\n')
        c.until_closed(5)
    assert G.wait_log(r'end: .*user ', mark, 5)
    with open(G.log_path, 'rb') as f:
        f.seek(mark)
        raw = f.read()
    text = raw.decode('ascii', 'replace')
    bad = sorted(set(b for b in raw if (b < 0x20 and b != 0x0a) or b >= 0x7f))
    assert not bad, 'raw bytes %s in the log:\n%r' % (bad, raw[-2000:])
    assert re.search(r'ev\\x1b\[31mil\\x0dx', text), 'escaped USER not in the log:\n' + text
    assert 'user "\\xc3\\xa9vil\\xff\\x5c"' in text, 'USER in the end: line:\n' + text
    assert 'S3cr3tZq' not in text, 'password in the log'
    still_serves()


def c_malformed_pass_not_logged():
    """A PASS line that does not parse is logged as "bad command" at debug
    level without its password (issue 10.12)."""
    mark = G.log_mark()
    lines = (b'PASS S3cr3tA\x01\r\n', b'PASS\tS3cr3tB\r\n', b' pass S3cr3tC\r\n',
             b'PASSS3cr3tD\r\n', b'\xff\xf4PaSs S3cr3tE\x7f\r\n')
    with ctl() as c:
        assert c.cmd('USER u').startswith(b'331')
        for line in lines:
            c.send(line)
            r = c.reply()
            assert r == SYNTAX, '%r: %r' % (line, r)
        raw_login(c)
    assert G.wait_log(r'(?s)(bad command.*){%d}' % len(lines), mark), G.log_since(mark)
    log = G.log_since(mark)
    for w in 'ABCDE':
        assert 'S3cr3t' + w not in log, 'password %s in the log:\n%s' % (w, log[-2000:])
    assert len(re.findall(r'bad command "(PASS|PaSs| pass)"', log)) == len(lines), log[-2000:]
    still_serves()


# --------------------------------------------------------------------------
# 8. out of file descriptors

PRLIMIT = shutil.which('prlimit')
NOFILE = 40


LowFdGate = T.LowFdGate


def nofile_limits(pid):
    with open('/proc/%d/limits' % pid) as f:
        for line in f:
            if line.startswith('Max open files'):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError('no "Max open files" in /proc/%d/limits' % pid)


def open_fds(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


cpu_seconds = T.cpu_seconds


def low_fd_gate():
    """A gate with NOFILE descriptors, or NOFILE + 1 so that the descriptors
    left after start-up are even: each session takes two (client and
    backend), so the last one free is then taken by accept() and the one
    after that fails with EMFILE, rather than accept() taking an odd last
    one and the backend socket failing."""
    for lim in (NOFILE, NOFILE + 1):
        # soft < hard: ftpgate must raise its soft limit itself
        g = LowFdGate(T.gate_config(SRV, connect_timeout=5, max_sessions_per_ip=0),
                      16, lim)
        left = lim - open_fds(g.proc.pid)
        if left % 2 == 0:
            return g, lim, left
        g.stop()
    raise AssertionError('odd number of free descriptors with both limits')


def c_out_of_fds():
    g, lim, left = low_fd_gate()
    pid = g.proc.pid
    conns = []
    waiting = None
    try:
        assert nofile_limits(pid) == (lim, lim), \
            'ftpgate did not raise its soft RLIMIT_NOFILE to the hard limit: %r' % (
                nofile_limits(pid),)
        mark = g.log_mark()
        # idle control connections (greeting only) until one is not served
        for i in range(lim):
            c = T.RawCtl('127.0.0.1', g.port, timeout=5)
            try:
                r = c.reply(2.0)
            except AssertionError as e:
                waiting = c
                why = str(e)
                break
            conns.append(c)
            assert r.startswith(b'220'), \
                'connection %d of %d (limit %d, %d free at start): %r' % (
                    i + 1, lim, lim, left, r)
        assert waiting is not None, '%d sessions served with %d descriptors' % (len(conns), lim)
        T.diag('limit %d (%d free after start-up): %d sessions served, the next one '
               'not (%s)' % (lim, left, len(conns), why.splitlines()[0][:120]))
        assert len(conns) == left // 2, \
            '%d sessions with %d free descriptors: expected 2 per session' % (
                len(conns), left)
        # the connection waits in the backlog: not greeted, not refused, not closed
        assert 'connection closed' not in why and 'reset' not in why.lower(), why
        assert g.alive(), 'ftpgate died (status %s)' % g.proc.returncode
        assert g.wait_log(r'site test: accept: Too many open files; pausing new '
                          r'connections for 1 s', mark, 3), g.log_since(mark)[-3000:]
        log = g.log_since(mark)
        assert 'Too many open files' in log and 'pausing' in log, log[-3000:]
        # not spinning: little CPU over 2 s, about one accept retry a second
        pmark = g.log_mark()
        cpu0 = cpu_seconds(pid)
        time.sleep(2.0)
        used = cpu_seconds(pid) - cpu0
        pauses = g.log_since(pmark).count('pausing new connections')
        T.diag('out of descriptors: %.2f s CPU in 2 s, %d pause messages' % (used, pauses))
        assert used < 0.5, 'ftpgate used %.2f s of CPU in 2 s while out of descriptors' % used
        assert pauses <= 5, '%d pause messages in 2 s' % pauses
        assert waiting.pending(0.1) == b'', 'the waiting connection got something'
        # sessions already open go on working
        assert conns[0].cmd('NOOP') == noop_reply(), 'an open session broke'
        raw_login(conns[-1])
        assert conns[-1].cmd('NOOP') == noop_reply()
        assert g.alive(), 'ftpgate died (status %s)' % g.proc.returncode
        # descriptors come back: the waiting connection is accepted and greeted
        for c in conns:
            c.close()
        conns = []
        t0 = time.monotonic()
        r = waiting.reply(4.0)
        dt = time.monotonic() - t0
        assert r.startswith(b'220'), 'the waiting connection got %r' % r
        T.diag('waiting connection greeted %.2f s after the others closed' % dt)
        waiting.close()
        waiting = None
        # and a normal client: login + download, within a few seconds
        deadline = time.monotonic() + 5
        while True:
            try:
                f = T.ftp_login(g.port, timeout=3)
                h = hashlib.sha256()
                f.retrbinary('RETR mid.bin', h.update)
                assert h.hexdigest() == MID_SHA, 'download differs'
                f.quit()
                break
            except (OSError, EOFError, ftplib.Error) as e:
                if time.monotonic() > deadline:
                    raise AssertionError('no normal session within 5 s after the '
                                         'descriptors came back: %r' % e)
                time.sleep(0.2)
        assert g.alive(), 'ftpgate died (status %s)' % g.proc.returncode
        wait_all_ended(g, mark)
        rc = g.stop()
        assert rc == 0, 'exit status %s after SIGTERM' % rc
    finally:
        for c in conns + ([waiting] if waiting else []):
            c.close()
        g.stop()
    still_serves()


def c_healthy():
    assert G.alive(), 'ftpgate died'
    log = G.log()
    for bad in ('AddressSanitizer', 'runtime error:', 'LeakSanitizer'):
        assert bad not in log, 'sanitizer report in the log'
    rc = G.stop()
    T.diag('ftpgate exit status after SIGTERM: %s' % rc)


t.case('10000-byte line -> 500 too long, session goes on', c_long_line, 20)
t.case('1 MiB line without LF -> one 500, bounded memory', c_huge_line, 30)
t.case('line limit: 4096 bytes incl. CRLF pass intact, 4097 refused', c_line_limit_boundary, 20)
t.case('0xff data byte (IAC IAC) reaches the backend as IAC IAC', c_iac_data_byte, 20)
t.case('NUL/control chars -> 500; bare LF, Telnet IAC stripped', c_control_chars, 20)
t.case('pipelined commands answered in order', c_pipelined, 20)
t.case('login_timeout=2: 421 Login timeout, then close', c_login_timeout, 30)
t.case('client stops reading a 64 MiB RETR: RSS bounded', c_stops_reading, 30)
t.case('client floods commands, never reads: RSS bounded', c_command_flood, 30)
t.case('max_sessions_per_ip = 2: third connection 421', c_per_ip, 30)
t.case('max_sessions_per_ip unset: 16 from one address, the 17th 421', c_per_ip_default, 30)
t.case('backend never greets: 421 within connect_timeout', c_fake_no_greeting, 20)
t.case('backend malformed reply: 421 and close', c_fake_malformed_greeting, 20)
t.case('backend reply line > 8192 bytes: 421 and close', c_fake_long_reply, 40)
t.case('backend 227 to 127.0.0.9: proxy uses the control address', c_fake_227_elsewhere, 20)
t.case('backend unsolicited replies dropped, stream in step', c_fake_unsolicited, 20)
t.case('backend extra reply while a command is in flight: dropped, ftplib in step',
       c_fake_extra_reply_in_flight, 20)
t.case('lines the backend answers twice, in 2 KiB pieces: one reply each, stream in step',
       c_long_lines_in_pieces, 60)
t.case('backend RSTs data mid-RETR then 426: client gets 426, session usable',
       rst_case(b'426 Connection reset; transfer aborted.\r\n',
                '426 Connection reset; transfer aborted.'), 30)
t.case('backend RSTs data mid-RETR then 226: client must get a 4xx',
       rst_case(b'226 Transfer complete.\r\n', None), 30)
t.case('log escaping: ESC, CR, 8-bit bytes; no password', c_log_escaping, 20)
t.case('malformed PASS lines: logged without the password', c_malformed_pass_not_logged, 20)
t.case('out of descriptors slows accepting, does not kill the proxy', c_out_of_fds, 40)
t.case('ftpgate alive, no sanitizer reports', c_healthy, 15)
t.done()
