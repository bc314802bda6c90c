#!/usr/bin/python3
"""ftpgate behind a balancer: PROXY protocol in (proxy_protocol,
proxy_trusted) and out (backend_proxy_protocol).  The header's client
address is the client everywhere: logs, per-IP limits, allow/deny, bans,
the PORT check, who may connect to a passive port.  Untrusted peers,
malformed, slow and unaccepted headers are closed and counted.  Out:
Debian's haproxy with accept-proxy in front of pyftpdlib logs the client's
own address, also when it is a pool's second server or a user's route.
Real clients: ftplib (with the header a balancer would send), curl through
haproxy.  Loopback only (127.0.0.0/8).  TAP output."""

import ftplib
import hashlib
import http.client
import os
import re
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)
HAPROXY = T.HAPROXY

ROOT = T.tmpdir('ftproot-')
os.chmod(ROOT, 0o755)
FILE = os.path.join(ROOT, 'four.bin')
FILE_SHA = T.make_random_file(FILE, 4)
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)


def v1(src, dst, sport=40000, dport=21):
    fam = 'TCP6' if ':' in src else 'TCP4'
    return ('PROXY %s %s %s %d %d\r\n' % (fam, src, dst, sport, dport)).encode()


V2_SIG = b'\r\n\r\n\x00\r\nQUIT\n'


def v2(src, dst, sport=40000, dport=21, local=False, tlvs=b''):
    """A v2 header (IPv4 over TCP), with raw TLV bytes appended."""
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack('!H', 0)
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!HH', sport, dport) + tlvs
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack('!H', len(body)) + body


class ProxyFTP(T.RecordingFTP):
    """ftplib client that sends a PROXY header first (as a balancer would
    for it) and opens its data connections from data_src."""

    header = b''
    data_src = None

    def connect(self, host='', port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((host, port), self.timeout)
        self.sock.sendall(self.header)
        self.af = self.sock.family
        self.file = self.sock.makefile('r', encoding=self.encoding)
        self.welcome = self.getresp()
        if self.data_src:
            self.source_address = (self.data_src, 0)
        return self.welcome


def proxy_login(port, header, data_src=None):
    f = ProxyFTP()
    f.header = header
    f.data_src = data_src
    f.connect('127.0.0.1', port, timeout=20)
    f.login('u', 'p')
    return f


def site(**kw):
    d = dict(proxy_protocol='any', proxy_trusted='127.0.0.1/32')
    d.update(kw)
    return d


def gate(backend=None, **kw):
    return T.Ftpgate(T.gate_config(backend or SRV, passive_ports=GP, **kw))


def metric(mport, name, site_name='test'):
    c = http.client.HTTPConnection('127.0.0.1', mport, timeout=10)
    try:
        c.request('GET', '/metrics')
        text = c.getresponse().read().decode()
    finally:
        c.close()
    m = re.search(r'^%s\{site="%s"\} (\d+)$' % (re.escape(name), site_name), text, re.M)
    assert m, 'no %s in /metrics' % name
    return int(m.group(1))


def sha_retr(f, name):
    h = hashlib.sha256()
    f.retrbinary('RETR ' + name, h.update)
    return h.hexdigest()


def closed_without_greeting(port, payload, timeout=10.0):
    with T.RawCtl('127.0.0.1', port) as c:
        if payload:
            c.send(payload)
        data, how = c.until_closed(timeout)
        return data, how


# --------------------------------------------------------------------------

def c01_config():
    d = T.tmpdir('ppconf-')
    cases = [
        ('proxy_protocol = v1\n', r':\d+: proxy_protocol: needs proxy_trusted'),
        ('proxy_protocol = v3\n', r':\d+: proxy_protocol: "v3" is not one of off, v1, v2, any'),
        ('proxy_protocol = v2\nproxy_trusted = 192.0.2.1/24\n',
         r':\d+: proxy_trusted: "192.0.2.1/24": bits set after the prefix'),
        ('proxy_protocol = v2\nproxy_trusted = 192.0.2.0/33\n',
         r':\d+: proxy_trusted: "192.0.2.0/33": the prefix length must be 0-32'),
        ('proxy_protocol = v2\nproxy_trusted = balancer\n',
         r':\d+: proxy_trusted: "balancer" is not an IPv4 or IPv6 address'),
        ('backend_proxy_protocol = yes\n',
         r':\d+: backend_proxy_protocol: "yes" is not one of off, v1, v2'),
    ]
    for i, (extra, want) in enumerate(cases):
        p = os.path.join(d, 'c%d.ini' % i)
        with open(p, 'w') as f:
            f.write('[site:a]\nlisten = 127.0.0.1:2121\nbackend = 127.0.0.1:21\n' + extra)
        r = T.run_ftpgate(['-t', '-c', p])
        assert r.returncode == 1 and re.search(re.escape(p) + want, r.stderr), \
            (extra, r.returncode, r.stderr)
    p = os.path.join(d, 'ok.ini')
    with open(p, 'w') as f:
        f.write('[site:a]\nlisten = 127.0.0.1:2121\nbackend = 127.0.0.1:21\n'
                'proxy_protocol = any\nproxy_trusted = 192.0.2.10, 2001:db8::/32, 127.0.0.1/32\n'
                'backend_proxy_protocol = v2\n')
    r = T.run_ftpgate(['-t', '-c', p])
    assert r.returncode == 0, r.stderr


def c02_v1_client_address():
    with gate(**site(max_sessions_per_ip=2)) as g:
        mark = g.log_mark()
        f = proxy_login(g.port, v1('127.0.0.2', '127.0.0.1', 40001, g.port), data_src='127.0.0.2')
        assert sha_retr(f, 'four.bin') == FILE_SHA
        # PORT must name the header's client, not the balancer.
        try:
            r = f.sendcmd('PORT 127,0,0,1,200,1')
        except ftplib.error_perm as e:
            r = str(e)
        assert r.startswith('504'), r
        f.quit()
        assert g.wait_log(r'end: client 127\.0\.0\.2:40001 ', mark), g.log_since(mark)
        assert re.search(r'start: client 127\.0\.0\.2:40001 to 127\.0\.0\.1',
                         g.log_since(mark)), g.log_since(mark)
        # The passive port takes the header's client only: a data connection
        # from the balancer's address is a stranger.
        mark = g.log_mark()
        f = proxy_login(g.port, v1('127.0.0.2', '127.0.0.1', 40002, g.port))
        f.sendcmd('TYPE I')
        _, port = ftplib.parse227(f.sendcmd('PASV'))
        s1 = socket.create_connection(('127.0.0.1', port), timeout=10)
        assert g.wait_log(r'refused data connection from 127\.0\.0\.1:\d+ on port %d' % port, mark)
        s1.close()
        s2 = socket.create_connection(('127.0.0.1', port), timeout=10,
                                      source_address=('127.0.0.2', 0))
        f.putcmd('RETR four.bin')
        assert f.getresp().startswith('1')
        h = hashlib.sha256()
        while True:
            b = s2.recv(1 << 20)
            if not b:
                break
            h.update(b)
        s2.close()
        assert h.hexdigest() == FILE_SHA
        assert f.voidresp().startswith('226')
        f.quit()


def c03_per_ip_limit():
    with gate(**site(max_sessions_per_ip=2)) as g:
        held = []
        for i in range(2):
            c = T.RawCtl('127.0.0.1', g.port)
            c.send(v1('127.0.0.5', '127.0.0.1', 41000 + i, g.port))
            assert c.reply().startswith(b'220')
            held.append(c)
        c = T.RawCtl('127.0.0.1', g.port)
        c.send(v1('127.0.0.5', '127.0.0.1', 41002, g.port))
        r = c.reply()
        assert r.startswith(b'421'), r
        c.close()
        # Another client behind the same balancer is not affected.
        c = T.RawCtl('127.0.0.1', g.port)
        c.send(v1('127.0.0.6', '127.0.0.1', 41003, g.port))
        assert c.reply().startswith(b'220')
        c.close()
        for c in held:
            c.close()
        assert re.search(r'refused 127\.0\.0\.5:41002: max_sessions_per_ip \(2\)', g.log())


def c04_v2_and_local():
    with gate(**site(proxy_protocol='v2')) as g:
        mark = g.log_mark()
        # TLVs (ALPN, authority, a custom one) are skipped.
        tlvs = b'\x01\x00\x03ftp' + b'\x02\x00\x0bexample.org' + b'\xe0\x00\x00'
        f = proxy_login(g.port, v2('127.0.0.7', '127.0.0.1', 40007, g.port, tlvs=tlvs),
                        data_src='127.0.0.7')
        assert sha_retr(f, 'four.bin') == FILE_SHA
        f.quit()
        assert g.wait_log(r'start: client 127\.0\.0\.7:40007 ', mark), g.log_since(mark)
        # LOCAL: the balancer's own health check is served as itself.
        mark = g.log_mark()
        with T.RawCtl('127.0.0.1', g.port) as c:
            c.send(v2(None, None, local=True))
            assert c.reply().startswith(b'220')
            assert c.cmd('QUIT').startswith(b'221')
        assert g.wait_log(r'start: client 127\.0\.0\.1:\d+ ', mark), g.log_since(mark)
        # A v1 header on a v2 site is refused.
        data, how = closed_without_greeting(g.port, v1('127.0.0.8', '127.0.0.1'))
        assert data == b'', data
        assert g.wait_log(r'closed 127\.0\.0\.1:\d+: PROXY protocol: ', mark)


def c05_refused_and_counted():
    mport = T.free_port()
    cfg = T.gate_config(SRV, passive_ports=GP, **site(proxy_trusted='192.0.2.0/24, 2001:db8::/32',
                                                      connect_timeout=2))
    cfg['global']['metrics_listen'] = '127.0.0.1:%d' % mport
    with T.Ftpgate(cfg) as g:
        data, how = closed_without_greeting(g.port, b'')
        assert data == b'', 'an untrusted peer got %r' % data
        assert g.wait_log(r'closed 127\.0\.0\.1:\d+: not in proxy_trusted'), g.log()
    cfg = T.gate_config(SRV, passive_ports=GP, **site(connect_timeout=2))
    cfg['global']['metrics_listen'] = '127.0.0.1:%d' % mport
    with T.Ftpgate(cfg) as g:
        for payload, why in ((b'USER anonymous\r\n', 'not a PROXY protocol header'),
                             (b'PROXY TCP4 127.0.0.9\r\n', ''),
                             (b'PROXY TCP4 300.0.0.1 127.0.0.1 1 21\r\n', ''),
                             (b'PROXY TCP4 127.0.0.9 127.0.0.1 1', 'slow')):
            data, how = closed_without_greeting(g.port, payload, timeout=15)
            assert data == b'', (payload, data)
        assert g.wait_log(r'PROXY protocol: (header incomplete|no header) within connect_timeout')
        n = metric(mport, 'ftpgate_proxy_protocol_refused_total')
        assert n == 4, 'counted %d' % n
        assert metric(mport, 'ftpgate_sessions_total') == 0


class Haproxy(T.Haproxy):
    """Debian's haproxy on a free port with accept-proxy in front of SRV,
    logging each connection with the client address its header named."""

    def __init__(self):
        self.port = T.free_port()
        super().__init__('global\n  log stdout format raw local0 info\n'
                         'defaults\n  mode tcp\n  log global\n  option tcplog\n'
                         '  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n'
                         'frontend ftp\n  bind 127.0.0.1:%d accept-proxy\n  default_backend b\n'
                         'backend b\n  server s1 %s\n' % (self.port, SRV.addr()), [self.port])

    def addr(self):
        return '127.0.0.1:%d' % self.port

    def logged(self, client):
        """Asserts haproxy logged a connection from client (ip:port)."""
        self.wait_log(r'%s .* ftp b/s1 ' % re.escape(client))


def download_as(port, src, sport):
    f = proxy_login(port, v1(src, '127.0.0.1', sport, port), data_src=src)
    assert sha_retr(f, 'four.bin') == FILE_SHA
    f.quit()


def c06_backend_header_haproxy(version):
    def fn():
        with Haproxy() as hp, gate(hp.addr(), **site(backend_proxy_protocol=version)) as g:
            download_as(g.port, '127.0.0.3', 40003)
            hp.logged('127.0.0.3:40003')
    return fn


def c07_backend_header_pool_and_route():
    """The header goes to the server the pool chose after a refused one, and
    to the server a user's route names."""
    with Haproxy() as hp:
        dead = '127.0.0.1:%d' % T.free_port()
        with gate('%s, %s' % (dead, hp.addr()), **site(backend_proxy_protocol='v2')) as g:
            download_as(g.port, '127.0.0.4', 40004)
            hp.logged('127.0.0.4:40004')
            assert re.search(r'backend server %s: .*; trying the next' % re.escape(dead),
                             g.log()), g.log()
        cfg = T.gate_config(dead, passive_ports=GP, **site(backend_proxy_protocol='v1'))
        cfg['route:test'] = {'u': hp.addr()}
        with T.Ftpgate(cfg) as g:
            download_as(g.port, '127.0.0.5', 40005)
            hp.logged('127.0.0.5:40005')


def c08_access_and_bans_by_header():
    """deny and bans judge the header's client, never the balancer."""
    with gate(**site(deny='127.0.0.5/32', max_login_failures=2, login_failure_window=60,
                     ban_time=600)) as g:
        mark = g.log_mark()
        data, how = closed_without_greeting(g.port, v1('127.0.0.5', '127.0.0.1', 41005, g.port))
        assert data == b'', data
        assert g.wait_log(r'closed 127\.0\.0\.5:41005: refused by allow/deny', mark), \
            g.log_since(mark)
        for i in range(2):
            with T.RawCtl('127.0.0.1', g.port) as c:
                c.send(v1('127.0.0.6', '127.0.0.1', 41010 + i, g.port))
                assert c.reply().startswith(b'220')
                assert c.cmd('USER u').startswith(b'331')
                assert c.cmd('PASS wrong').startswith(b'530')
        mark = g.log_mark()
        data, how = closed_without_greeting(g.port, v1('127.0.0.6', '127.0.0.1', 41020, g.port))
        assert data == b'', 'a banned client got %r' % data
        assert g.wait_log(r'closed 127\.0\.0\.6:41020: banned', mark), g.log_since(mark)
        # Others behind the same balancer are served.
        download_as(g.port, '127.0.0.7', 41021)


t.case('config: proxy_protocol needs proxy_trusted; bad prefixes and values named with file:line',
       c01_config, 30)
t.case('v1 header: client address in logs, PORT check and passive port; 4 MiB sha256',
       c02_v1_client_address, 60)
t.case('max_sessions_per_ip counts the header\'s address (2 served, 3rd refused, others not)',
       c03_per_ip_limit, 30)
t.case('v2 header with TLVs; v2 LOCAL served as the balancer; v1 on a v2 site refused',
       c04_v2_and_local, 60)
t.case('untrusted peer, non-PROXY, truncated, malformed, slow header: closed, counted',
       c05_refused_and_counted, 60)
_hp_cases = [('backend_proxy_protocol=%s: haproxy accept-proxy logs the client' % _v,
              c06_backend_header_haproxy(_v)) for _v in ('v1', 'v2')]
_hp_cases.append(('backend_proxy_protocol to the pool\'s next server after a refused one '
                  'and to a user\'s route', c07_backend_header_pool_and_route))
for _name, _fn in _hp_cases:
    if HAPROXY:
        t.case(_name, _fn, 60)
    else:
        t.skip(_name, 'haproxy not installed')
t.case('deny and bans judge the header\'s client address, not the balancer\'s',
       c08_access_and_bans_by_header, 60)
SRV.stop()
t.done()
