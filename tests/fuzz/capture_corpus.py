#!/usr/bin/python3
"""Write the fuzz seed corpus (tests/fuzz/corpus/) from real sessions.

curl, lftp and ftplib talk to pyftpdlib, vsftpd, Pure-FTPd (beside
ftpgate) and to ProFTPD and pyftpdlib through ftpgate (ProFTPD requires TLS,
which ftpgate speaks toward it with backend_tls = on, so the control stream
the client sees is plaintext). A recording relay in front of each records
both directions of every control connection:
  corpus/ftp_cmd/SERVER-CLIENT    what the client sent (all its sessions)
  corpus/ftp_reply/SERVER-CLIENT  what came back
  corpus/ftp_addr/...             every distinct 227/229 reply line and PORT/EPRT
                                  argument seen
  corpus/conf/...                 etc/ftpgate.ini and the configurations ftpgate ran with
  corpus/proxyproto/haproxy-*     the first bytes Debian's haproxy sends with
                                  send-proxy, send-proxy-v2 (+ unique-id, crc32c
                                  TLVs) and a v2 LOCAL health check (check-send-proxy)
Each file is cut at a line end to at most 4 KiB. Run as root from the source
tree after a build (FTPGATE=path/to/ftpgate, default build/src/ftpgate), with
/usr/bin/python3; needs curl, lftp, vsftpd, haproxy, python3-pyftpdlib, and
apt-get/dpkg for ProFTPD and Pure-FTPd (skipped with a note if unavailable).
The corpus it wrote is committed; run it again only to refresh it."""

import ftplib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, 'tests', 'integration'))
os.environ.setdefault('FTPGATE', os.path.join(SRC, 'build', 'src', 'ftpgate'))
import ftptest as T  # noqa: E402
import ftpservers as S  # noqa: E402

CORPUS = os.path.join(HERE, 'corpus')
MAX_FILE = 4096
TIMEOUT = 60


class Recorder:
    """TCP relay 127.0.0.1:port -> target that records both directions of
    each connection: .sessions is a list of (client bytes, server bytes)."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.sessions = []
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            th = threading.Thread(target=self._session, args=(c,), daemon=True)
            th.start()
            self.threads.append(th)

    def _session(self, c):
        # ftplib's abort() sends ABOR's last byte as urgent data: keep it in the stream.
        c.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        s = socket.create_connection(self.target, timeout=TIMEOUT)
        rec = [bytearray(), bytearray()]

        def pump(a, b, buf):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    buf += d
                    b.sendall(d)
            except OSError:
                pass
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(c, s, rec[0]), daemon=True)
        t.start()
        pump(s, c, rec[1])
        t.join(TIMEOUT)
        c.close()
        s.close()
        self.sessions.append((bytes(rec[0]), bytes(rec[1])))

    def close(self):
        self.sock.close()
        for th in self.threads:
            th.join(TIMEOUT)


def run(cmd, **kw):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, **kw)
    if r.returncode != 0:
        print('  (%s exited %d: %s)' % (cmd[0], r.returncode,
                                        S.one_line(r.stderr.decode('utf-8', 'replace'), 200)))


def curl_sessions(port, user, pw, local, up):
    base = 'ftp://127.0.0.1:%d/' % port
    u = ['-u', '%s:%s' % (user, pw)]
    run(['curl', '-sS'] + u + [base])
    run(['curl', '-sS', '--disable-epsv', '-o', '/dev/null'] + u + [base + 'file.bin'])
    run(['curl', '-sS', '--ftp-port', '127.0.0.1', '-T', local] + u + [base + up + 'c1.bin'])
    run(['curl', '-sS', '--ftp-port', '127.0.0.1', '--disable-eprt', '-C', '100', '-o',
         '/dev/null'] + u + [base + 'file.bin'])
    run(['curl', '-sS', '-l', '-Q', 'NOOP', '-Q', '-SYST'] + u + [base])


def lftp_session(port, user, pw, local, up):
    script = ('set net:max-retries 1; set net:timeout 20; set ftp:ssl-allow no; '
              'set ftp:passive-mode on; ls; get file.bin -o /dev/null; put %s -o %sl1.bin; '
              'set ftp:passive-mode off; ls; quote HELP; quote STAT; mkdir %sd; rmdir %sd; bye'
              % (local, up, up, up))
    run(['lftp', '-u', '%s,%s' % (user, pw), '-e', script, 'ftp://127.0.0.1:%d' % port])


def ftplib_session(port, user, pw, local, up):
    f = ftplib.FTP()
    f.connect('127.0.0.1', port, timeout=15)
    steps = [
        lambda: f.login(user, pw), lambda: f.sendcmd('FEAT'), lambda: f.sendcmd('SYST'),
        lambda: f.pwd(), lambda: f.sendcmd('TYPE I'), lambda: f.size('file.bin'),
        lambda: f.sendcmd('MDTM file.bin'), lambda: f.retrlines('LIST', lambda l: None),
        lambda: f.nlst(), lambda: list(f.mlsd()),
        lambda: f.retrbinary('RETR file.bin', lambda b: None, rest=1000),
        lambda: f.set_pasv(False), lambda: f.retrlines('LIST', lambda l: None),
        lambda: f.storbinary('STOR %sp1.bin' % up, open(local, 'rb')),
        lambda: f.set_pasv(True), lambda: f.rename('%sp1.bin' % up, '%sp2.bin' % up),
        lambda: f.delete('%sp2.bin' % up), lambda: f.sendcmd('EPSV'),
        lambda: f.sendeprt('127.0.0.1', 40000), lambda: f.sendport('127.0.0.1', 40001),
        lambda: f.sendcmd('HELP'), lambda: f.sendcmd('STAT'), lambda: f.abort(),
        lambda: f.sendcmd('NOOP'), lambda: f.sendcmd('BOGUS x'), lambda: f.quit(),
    ]
    for step in steps:
        try:
            step()
        except (ftplib.Error, EOFError, OSError) as e:
            print('  (ftplib: %s)' % str(e).strip()[:100])
    f.close()


CLIENTS = (('curl', curl_sessions), ('lftp', lftp_session), ('ftplib', ftplib_session))


def cut(data):
    """At most MAX_FILE bytes, ending at a line end."""
    if len(data) <= MAX_FILE:
        return data
    end = data.rfind(b'\n', 0, MAX_FILE)
    return data[:end + 1] if end > 0 else data[:MAX_FILE]


def write(kind, name, data):
    d = os.path.join(CORPUS, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


ADDRS = {}


def record_server(name, host, port, user, pw, local, up):
    for cname, fn in CLIENTS:
        rec = Recorder(host, port)
        try:
            fn(rec.port, user, pw, local, up)
        finally:
            time.sleep(0.5)
            rec.close()
        cmds = b''.join(c for c, _ in rec.sessions)
        replies = b''.join(r for _, r in rec.sessions)
        write('ftp_cmd', '%s-%s' % (name, cname), cut(cmds))
        write('ftp_reply', '%s-%s' % (name, cname), cut(replies))
        for line in replies.splitlines(True):
            if line[:4] in (b'227 ', b'229 '):
                ADDRS.setdefault(re.sub(rb'\d+', b'N', line), line)
        for line in cmds.splitlines(True):
            m = re.match(rb'(PORT|EPRT) (.*?)\r?\n', line)
            if m:
                ADDRS.setdefault(re.sub(rb'\d+', b'N', line), m.group(2))
        print('%s/%s: %d sessions, %d + %d bytes' % (name, cname, len(rec.sessions),
                                                    len(cmds), len(replies)))


def gate(backend, **site):
    cfg = T.gate_config(backend, log_level='info', **site)
    g = T.Ftpgate(cfg)
    write('conf', 'capture-%s.ini' % ('tls' if site else 'plain'), g.text.encode())
    return g


def capture_haproxy():
    """The first bytes haproxy sends to a server with each PROXY option."""
    kinds = {'v1': 'send-proxy', 'v2': 'send-proxy-v2',
             'v2-tlv': 'send-proxy-v2 proxy-v2-options unique-id,crc32c',
             'v1-ipv6': 'send-proxy', 'v2-ipv6': 'send-proxy-v2'}
    got, socks, cfg = {}, [], ['defaults', '  mode tcp', '  timeout connect 5s',
                               '  timeout client 5s', '  timeout server 5s']
    for k in list(kinds) + ['v2-local']:
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        s.listen(4)
        s.settimeout(10)
        socks.append((k, s))
        fport = T.free_port()
        if k == 'v2-local':   # no frontend: only the health check connects
            cfg += ['backend b_local', '  option tcp-check',
                    '  server s 127.0.0.1:%d send-proxy-v2 check check-send-proxy inter 300ms'
                    % s.getsockname()[1]]
            continue
        bind = '[::1]:%d' % fport if k.endswith('ipv6') else '127.0.0.1:%d' % fport
        cfg += ['frontend f_%s' % k.replace('-', '_'), '  bind %s' % bind,
                '  unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid',
                '  default_backend b_%s' % k.replace('-', '_'),
                'backend b_%s' % k.replace('-', '_'),
                '  server s 127.0.0.1:%d %s' % (s.getsockname()[1], kinds[k])]
        kinds[k] = (bind, kinds[k])
    d = T.tmpdir('haproxy-')
    with open(os.path.join(d, 'h.cfg'), 'w') as f:
        f.write('\n'.join(cfg) + '\n')
    p = subprocess.Popen(['haproxy', '-db', '-f', os.path.join(d, 'h.cfg')],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        T.wait_listening(p, [int(v[0].rsplit(':', 1)[1]) for v in kinds.values()], 10,
                         'haproxy')
        for k, s in socks:
            if k != 'v2-local':
                host, port = kinds[k][0].rsplit(':', 1)
                c = socket.create_connection((host.strip('[]'), int(port)), timeout=10)
                c.sendall(b'USER anonymous\r\n')
            a, _ = s.accept()
            a.settimeout(2)
            data = b''
            try:
                while len(data) < 512:
                    b = a.recv(512)
                    if not b:
                        break
                    data += b
            except OSError:   # timeout, or the health check's reset
                pass
            a.close()
            if k != 'v2-local':
                c.close()
            got[k] = data
            s.close()
    finally:
        T._stop_proc(p)
    for k, data in got.items():
        write('proxyproto', 'haproxy-%s' % k, data)
        print('proxyproto/haproxy-%s: %d bytes' % (k, len(data)))


def main():
    for kind in ('ftp_cmd', 'ftp_reply', 'ftp_addr', 'conf', 'proxyproto'):
        shutil.rmtree(os.path.join(CORPUS, kind), ignore_errors=True)
    work = T.tmpdir('corpus-')
    local = os.path.join(work, 'up.bin')
    T.make_random_file(local, nbytes=3000)
    os.chmod(local, 0o644)
    big = os.path.join(work, 'file.bin')
    T.make_random_file(big, nbytes=20000)
    os.chmod(big, 0o644)

    root = T.tmpdir('corpus-pyftpd-')
    shutil.copy(big, root)
    os.makedirs(os.path.join(root, 'up'))
    with T.PyftpdServer(root) as py:
        record_server('pyftpdlib', '127.0.0.1', py.port, 'u', 'p', local, 'up/')
        g = gate(py.addr())
        try:
            record_server('ftpgate-pyftpdlib', '127.0.0.1', g.port, 'u', 'p', local, 'up/')
        finally:
            g.stop()

    vs = T.VsftpdServer()
    try:
        shutil.copy(big, vs.root)
        os.chmod(os.path.join(vs.root, 'file.bin'), 0o644)
        record_server('vsftpd', '127.0.0.1', vs.port, 'anonymous', '', local, 'up/')
    finally:
        vs.stop()

    why = S.why_not_here()
    pkgroot = None
    if not why:
        pkgroot, why = S.fetch_servers()
    if why:
        print('ProFTPD and Pure-FTPd skipped: %s' % why)
    else:
        certdir = T.tmpdir('corpus-cert-')
        os.chmod(certdir, 0o755)
        cert, key, bundle = S.make_self_signed(certdir)
        pf = S.ProFTPD(pkgroot, cert, key, T.port_range(20), masquerade='127.0.0.1')
        try:
            pf.put(big)
            g = gate(pf.addr(), backend_tls='on', backend_ca=cert)
            try:
                record_server('ftpgate-proftpd', '127.0.0.1', g.port, 'u', pf.password,
                              local, 'up/')
            finally:
                g.stop()
        finally:
            pf.stop()
        pu = S.PureFTPd(pkgroot, bundle, T.port_range(20), masquerade='127.0.0.1')
        try:
            pu.put(big)
            record_server('pure-ftpd', '127.0.0.1', pu.port, 'u', pu.password, local, 'up/')
        finally:
            pu.stop()

    for i, (shape, line) in enumerate(sorted(ADDRS.items())):
        write('ftp_addr', 'seen-%02d' % i, line)
    shutil.copy(os.path.join(SRC, 'etc', 'ftpgate.ini'), os.path.join(CORPUS, 'conf'))
    capture_haproxy()


if __name__ == '__main__':
    main()
