#!/usr/bin/python3
"""ftpgate between two networks that cannot reach each other, in network
namespaces.  TAP output; see ftptest.py for the environment variables.

Topology (documentation address ranges only, created by this test, deleted
at exit):

  client ns fgc-PID          gateway ns fgg-PID               server ns fgs-PID
  203.0.113.2/24  --veth--  203.0.113.1/24 | 198.51.100.1/24  --veth--  198.51.100.2/24
  curl, ftplib              ftpgate, ip_forward = 0                     pyftpdlib :2121
                            192.0.2.1/24
  LAN client ns fgl-PID       |
  192.0.2.2/24  ----veth------+
  curl (public_address_for: told 192.0.2.1, which it can reach, not 203.0.113.1)

No namespace has a default route, and the gateway does not forward, so the
client can only reach the backend through ftpgate, and only if ftpgate
announces its own client-side address (203.0.113.1) in PASV/EPSV replies
while the backend announces its private 198.51.100.2.  In active mode
(PORT/EPRT 203.0.113.2) only ftpgate can open the data connection to the
client, from 203.0.113.1; toward the backend it uses EPSV (backend_data_mode
= passive) or PORT 198.51.100.1 (a second ftpgate, on port 2122, with
backend_data_mode = active).

Needs root (ip netns, veth).  Without it: "1..0 # SKIP reason"."""

import atexit
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

TOPO = T.NetnsTopology('fg')
NS_C, NS_G, NS_S = TOPO.client, TOPO.gate, TOPO.server
NS_L = 'fgl-%d' % os.getpid()  # a LAN behind the gateway (public_address_for)

CLIENT_IP = TOPO.CLIENT_IP
GATE_IP = TOPO.GATE_IP
GATE_BACK_IP = TOPO.GATE_BACK_IP
SERVER_IP = TOPO.SERVER_IP
LAN_IP = '192.0.2.2'
GATE_LAN_IP = '192.0.2.1'
FTP_PORT = 2121
GATE_PASV = (40000, 40100)
SERVER_PASV = (50000, 50100)
FILE_MIB = 8
CMD_TIMEOUT = 20          # bound on every command we run

IP = T.IP
nsexec = T.nsexec

# --------------------------------------------------------------------------
# process / namespace bookkeeping (cleanup runs before ftptest's own atexit
# handler, since atexit is LIFO and ftptest registered first)

_my_procs = []
NAT = T.Netns(CMD_TIMEOUT)   # README recipe 1's namespaces, made by its case


def _cleanup():
    for p in list(_my_procs):
        try:
            T._stop_proc(p, 2.0)
        except Exception:
            pass
        if p in _my_procs:
            _my_procs.remove(p)
    TOPO.delete()
    NAT.delete()


atexit.register(_cleanup)


skip_all = T.skip_all


def run(cmd, timeout=CMD_TIMEOUT, check=True):
    """Run cmd (list); return CompletedProcess (bytes)."""
    return T.run_cmd(cmd, timeout=timeout, check=check)


def make_topology():
    """None, or a reason to skip."""
    why = TOPO.build(CMD_TIMEOUT)
    if why:
        return why
    # the LAN: 192.0.2.0/24 on the gateway's third side, no route elsewhere
    TOPO.add(NS_L)
    TOPO.veth(NS_G, 'tolan', NS_L, 'eth0')
    TOPO.addr(NS_G, 'tolan', GATE_LAN_IP + '/24')
    TOPO.addr(NS_L, 'eth0', LAN_IP + '/24')
    # README recipe 4's sysctl: no connection the gateway opens (active mode)
    # takes one of the ports the passthrough recipe binds
    T.ns_sysctl(NS_G, 'net.ipv4.ip_local_reserved_ports', '50000-50999', CMD_TIMEOUT)
    return None


# --------------------------------------------------------------------------
# processes in namespaces

def ns_backend(root, ns=NS_S, host=SERVER_IP, port=FTP_PORT, pasv=SERVER_PASV):
    """pyftpdlib (ftptest's server) inside a namespace (default: the server's)."""
    srv = T.PyftpdServer(root, host=host, port=port, banner='ftptest-netns-backend ready',
                         timeout=30, pasv_ports=pasv, ns=ns)
    _my_procs.append(srv.proc)
    return srv


def ns_gate(text, ns=NS_G):
    """ftpgate -f -c FILE inside a namespace (default: the gateway's)."""
    g = T.Ftpgate(text, ns=ns)
    _my_procs.append(g.proc)
    return g


# --------------------------------------------------------------------------
# set-up

if not os.access(T.FTPGATE, os.X_OK):
    # checked before the topology so a missing build is not reported as a skip
    sys.stdout.write('Bail out! ftpgate binary not found: %s\n' % T.FTPGATE)
    sys.exit(1)
if not os.access(T.CURL, os.X_OK):
    skip_all('curl not found')
if subprocess.run([T.SERVER_PYTHON, '-c', 'import pyftpdlib'], capture_output=True,
                  stdin=subprocess.DEVNULL, timeout=CMD_TIMEOUT).returncode != 0:
    skip_all('pyftpdlib not importable by %s' % T.SERVER_PYTHON)

T.netns_or_skip(make_topology, _cleanup)

t = T.Tap()
ROOT = T.tmpdir('netns-root-')
LOCAL = T.tmpdir('netns-local-')
FILE = os.path.join(ROOT, 'file')
FILE_SHA = T.make_random_file(FILE, FILE_MIB)
UPSRC = os.path.join(LOCAL, 'upload.src')
UP_SHA = T.make_random_file(UPSRC, 3, nbytes=3 * T.MiB + 12345)
os.chmod(ROOT, 0o777)

GATE_CONF = '''; written by test_netns.py
[global]
log_level = debug

[site:nat]
listen = %s:%d
backend = %s:%d
passive_ports = %d-%d
data_timeout = 10
connect_timeout = 5
''' % (GATE_IP, FTP_PORT, SERVER_IP, FTP_PORT, GATE_PASV[0], GATE_PASV[1])

try:
    _reason = TOPO.wait_addresses()
    if _reason:
        raise AssertionError(_reason)
    SRV = ns_backend(ROOT)
    G = ns_gate(GATE_CONF)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:3000])

GATE_URL = 'ftp://u:p@%s:%d/' % (GATE_IP, FTP_PORT)


def in_client(cmd, timeout=CMD_TIMEOUT, check=True):
    return run(nsexec(NS_C, cmd), timeout=timeout, check=check)


def curl_client(args, timeout=CMD_TIMEOUT, check=True):
    return in_client([T.CURL, '-sS', '-v', '--max-time', str(timeout - 5)] + list(args),
                     timeout=timeout, check=check)


def with_server_log(fn):
    """Add the tail of the backend's log to a failure."""
    def wrapped():
        try:
            fn()
        except AssertionError as e:
            tail = '\n'.join(SRV.log().splitlines()[-25:])
            raise AssertionError('%s\n--- pyftpdlib log, last lines:\n%s' % (e, tail)) from None
    return wrapped


# Python ftplib client, run inside the client namespace
FTPLIB_SCRIPT = r'''
import ftplib, hashlib, json, sys
cfg = json.loads(sys.argv[1])
out = {}
f = ftplib.FTP()
f.trust_server_pasv_ipv4_address = True    # use the address in the 227
f.connect(cfg['host'], cfg['port'], timeout=10)
f.login('u', 'p')
if cfg['mode'] == 'pasv':
    out['pasv'] = f.sendcmd('PASV')
else:
    f.set_pasv(True)
    h = hashlib.sha256()
    n = [0]
    def cb(b):
        h.update(b)
        n[0] += len(b)
    f.retrbinary('RETR file', cb)
    out['sha'] = h.hexdigest()
    out['size'] = n[0]
    out['nlst'] = sorted(f.nlst())
    lines = []
    f.retrlines('LIST', lines.append)
    out['list'] = lines
try:
    f.quit()
except Exception:
    f.close()
print(json.dumps(out))
'''


def ftplib_client(mode):
    r = in_client(['/usr/bin/python3', '-c', FTPLIB_SCRIPT,
                   json.dumps(dict(host=GATE_IP, port=FTP_PORT, mode=mode))])
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


PASV_CURL_LOG = {}

# --------------------------------------------------------------------------
# cases


def case_topology():
    # no default route anywhere, only the connected /24s
    for ns, nets in ((NS_C, {'203.0.113.0/24'}),
                     (NS_S, {'198.51.100.0/24'}),
                     (NS_L, {'192.0.2.0/24'}),
                     (NS_G, {'203.0.113.0/24', '198.51.100.0/24', '192.0.2.0/24'})):
        out = run([IP, '-n', ns, '-4', 'route', 'show']).stdout.decode()
        got = {line.split()[0] for line in out.splitlines() if line.strip()}
        assert got == nets, '%s routes: %r' % (ns, out)
    fwd = run(nsexec(NS_G, ['/bin/cat', '/proc/sys/net/ipv4/ip_forward'])).stdout.strip()
    assert fwd == b'0', 'ip_forward in gateway ns is %r' % fwd
    # the backend has no route back to the client network
    r = run([IP, '-n', NS_S, 'route', 'get', CLIENT_IP], check=False)
    assert r.returncode != 0, 'server ns has a route to the client: %r' % r.stdout


def case_direct_fails():
    # control: the backend works from the gateway namespace
    r = run(nsexec(NS_G, [T.CURL, '-sS', '--max-time', '10',
                          'ftp://u:p@%s:%d/' % (SERVER_IP, FTP_PORT), '--list-only']),
            timeout=15)
    assert b'file' in r.stdout.split(), 'backend listing from gateway: %r' % r.stdout
    r = in_client([T.CURL, '-sS', '--max-time', '5',
                   'ftp://u:p@%s:%d/file' % (SERVER_IP, FTP_PORT),
                   '-o', os.path.join(LOCAL, 'direct.out')], timeout=15, check=False)
    assert r.returncode != 0, 'curl reached the backend directly from the client ns'
    T.diag('direct curl: exit %d: %s' % (r.returncode, r.stderr.decode().strip()))


def case_curl_pasv():
    out = os.path.join(LOCAL, 'pasv.out')
    r = curl_client(['--no-ftp-skip-pasv-ip', '--disable-epsv',
                     GATE_URL + 'file', '-o', out])
    err = r.stderr.decode('utf-8', 'replace')
    PASV_CURL_LOG['stderr'] = err
    assert '> PASV' in err, 'curl did not send PASV:\n%s' % err[-3000:]
    assert 'EPSV' not in err, 'curl sent EPSV despite --disable-epsv'
    got = T.sha256_file(out)
    assert got == FILE_SHA, 'sha256 mismatch: %s != %s (size %d)' % (
        got, FILE_SHA, os.path.getsize(out))


def case_curl_epsv():
    out = os.path.join(LOCAL, 'epsv.out')
    r = curl_client([GATE_URL + 'file', '-o', out])
    err = r.stderr.decode('utf-8', 'replace')
    assert '> EPSV' in err, 'curl did not send EPSV:\n%s' % err[-3000:]
    assert re.search(r'< 229 ', err), 'no 229 reply to EPSV:\n%s' % err[-3000:]
    assert '> PASV' not in err, 'curl fell back to PASV:\n%s' % err[-3000:]
    got = T.sha256_file(out)
    assert got == FILE_SHA, 'sha256 mismatch: %s != %s' % (got, FILE_SHA)


def case_curl_upload():
    dest = os.path.join(ROOT, 'uploaded.bin')
    curl_client(['-T', UPSRC, GATE_URL + 'uploaded.bin'])
    assert os.path.exists(dest), 'no uploaded file on the server'
    got = T.sha256_file(dest)
    assert got == UP_SHA, 'uploaded sha256 mismatch: %s != %s (size %d, want %d)' % (
        got, UP_SHA, os.path.getsize(dest), os.path.getsize(UPSRC))


def case_ftplib():
    res = ftplib_client('retr')
    assert res['sha'] == FILE_SHA and res['size'] == FILE_MIB * T.MiB, \
        'ftplib RETR: size %d sha %s' % (res['size'], res['sha'])
    assert 'file' in [os.path.basename(n) for n in res['nlst']], 'NLST: %r' % res['nlst']
    assert any(line.split()[-1:] == ['file'] and str(FILE_MIB * T.MiB) in line.split()
               for line in res['list']), 'LIST: %r' % res['list']


def case_227_address():
    res = ftplib_client('pasv')
    m = re.match(r'227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', res['pasv'])
    assert m, 'bad 227: %r' % res['pasv']
    ip = '.'.join(m.group(i) for i in range(1, 5))
    port = int(m.group(5)) * 256 + int(m.group(6))
    assert ip == GATE_IP, '227 announces %s, not %s: %r' % (ip, GATE_IP, res['pasv'])
    assert GATE_PASV[0] <= port <= GATE_PASV[1], '227 port %d outside %d-%d' % (
        port, GATE_PASV[0], GATE_PASV[1])
    # and what curl saw in the PASV download
    err = PASV_CURL_LOG.get('stderr', '')
    m = re.search(r'< 227 .*\((\d+,\d+,\d+,\d+),\d+,\d+\)', err)
    assert m, 'no 227 in curl -v output of the PASV download'
    assert m.group(1) == '203,0,113,1', 'curl got 227 with %s' % m.group(1)
    assert 'Connecting to %s' % GATE_IP in err or 'Trying %s' % GATE_IP in err, \
        'curl did not connect the data channel to %s' % GATE_IP
    assert SERVER_IP not in err and '198,51,100' not in err, \
        'backend address leaked to the client:\n%s' % err[-3000:]


# --------------------------------------------------------------------------
# active mode: a client with a public address opens the data port itself
# (PORT/EPRT).  The backend has no route to 203.0.113.2, so only the proxy
# can connect to it, from 203.0.113.1.  Toward the backend the proxy uses
# backend_data_mode: passive (the default; the gate above) or active (a
# second ftpgate; the backend connects to the proxy's 198.51.100.1).

ACTIVE_GATE_PORT = 2122
ACTIVE_GATE_PASV = (40200, 40300)
ACTIVE_GATE_CONF = '''; written by test_netns.py: active toward the backend
[global]
log_level = debug

[site:nat-active]
listen = %s:%d
backend = %s:%d
passive_ports = %d-%d
backend_data_mode = active
data_timeout = 10
connect_timeout = 5
''' % (GATE_IP, ACTIVE_GATE_PORT, SERVER_IP, FTP_PORT,
       ACTIVE_GATE_PASV[0], ACTIVE_GATE_PASV[1])

_active_gate = []


def active_gate():
    """The backend_data_mode = active ftpgate, started on first use."""
    if not _active_gate:
        _active_gate.append(ns_gate(ACTIVE_GATE_CONF))
    return _active_gate[0]


# backend_data_mode -> (gate, its port)
GATE_MODES = {
    'passive': lambda: (G, FTP_PORT),
    'active': lambda: (active_gate(), ACTIVE_GATE_PORT),
}


def server_log_mark():
    return os.path.getsize(SRV.log_path)


def server_log_since(mark):
    with open(SRV.log_path, 'rb') as f:
        f.seek(mark)
        return f.read().decode('utf-8', 'replace')


def check_backend_side(mark, mode, transfers):
    """The backend set up `transfers` data connections the way
    backend_data_mode says, EPSV/PASV (passive) or PORT 198,51,100,1,...
    with a port from passive_ports (active), and never saw the client's
    address."""
    log = server_log_since(mark)
    cmds = re.findall(r'<- (EPSV|PASV|PORT|EPRT)\b ?(\S*)', log)
    if mode == 'passive':
        assert cmds and all(c in ('EPSV', 'PASV') for c, _ in cmds), \
            'backend_data_mode = passive, the backend got: %r' % cmds
    else:
        assert cmds and all(c == 'PORT' for c, _ in cmds), \
            'backend_data_mode = active, the backend got: %r' % cmds
        for _, arg in cmds:
            assert arg.startswith('198,51,100,1,'), \
                'PORT to the backend names %r, not 198.51.100.1' % arg
            p = arg.split(',')
            port = int(p[4]) * 256 + int(p[5])
            assert ACTIVE_GATE_PASV[0] <= port <= ACTIVE_GATE_PASV[1], \
                'PORT to the backend: port %d outside passive_ports' % port
    assert len(cmds) == transfers, 'backend: %d data set-ups for %d transfers: %r' % (
        len(cmds), transfers, cmds)
    assert CLIENT_IP not in log and '203,0,113' not in log, \
        "the client's address reached the backend:\n%s" % log[-3000:]


# Python ftplib in active mode (set_pasv(False): PORT with the control
# socket's own address), inside the client namespace: RETR, then STOR.
FTPLIB_ACTIVE_SCRIPT = r'''
import ftplib, hashlib, json, sys
cfg = json.loads(sys.argv[1])
dialog = []


class F(ftplib.FTP):
    def putcmd(self, line):
        dialog.append('> ' + ('PASS ****' if line.startswith('PASS') else line))
        super().putcmd(line)

    def getmultiline(self):
        r = super().getmultiline()
        dialog.append('< ' + r)
        return r


out = {'dialog': dialog}
try:
    f = F()
    f.connect(cfg['host'], cfg['port'], timeout=10)
    f.login('u', 'p')
    f.set_pasv(False)
    f.voidcmd('TYPE I')
    conn, _ = f.ntransfercmd('RETR file')
    out['retr_peer'] = conn.getpeername()[0]
    h = hashlib.sha256()
    n = 0
    with conn:
        while True:
            b = conn.recv(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
    out['retr_end'] = f.voidresp()
    out['sha'] = h.hexdigest()
    out['size'] = n
    with open(cfg['upsrc'], 'rb') as src:
        conn, _ = f.ntransfercmd('STOR ' + cfg['upname'])
        out['stor_peer'] = conn.getpeername()[0]
        with conn:
            while True:
                b = src.read(65536)
                if not b:
                    break
                conn.sendall(b)
    out['stor_end'] = f.voidresp()
    f.quit()
except BaseException:
    sys.stderr.write('dialog: %s\n' % json.dumps(dialog))
    raise
print(json.dumps(out))
'''

# listens on argv[1] in the client ns, prints the port, then the address of
# the first peer (or "timeout")
LISTENER_SCRIPT = r'''
import socket, sys
s = socket.create_server((sys.argv[1], 0))
s.settimeout(10)
print(s.getsockname()[1], flush=True)
try:
    c, a = s.accept()
    print(a[0], flush=True)
    c.close()
except socket.timeout:
    print('timeout', flush=True)
'''

# connect from argv[3] to argv[1]:argv[2]: "connected" or "error ERRNO"
CONNECT_SCRIPT = r'''
import errno, socket, sys
s = socket.socket()
s.settimeout(3)
s.bind((sys.argv[3], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print('connected')
except OSError as e:
    print('error', errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__)
'''


def case_active_direct_fails():
    """Without ftpgate active mode cannot work: the client cannot reach the
    backend, and the data connection the backend would have to open toward
    203.0.113.2 has no route, while the proxy reaches the same port."""
    t0 = time.monotonic()
    r = in_client([T.CURL, '-sS', '-v', '--max-time', '5', '-P', CLIENT_IP,
                   'ftp://u:p@%s:%d/file' % (SERVER_IP, FTP_PORT),
                   '-o', os.path.join(LOCAL, 'direct-active.out')], timeout=15, check=False)
    dt = time.monotonic() - t0
    assert r.returncode != 0, 'active curl straight to the backend worked'
    assert dt < 8, 'direct active curl took %.1f s despite --max-time 5' % dt
    assert not os.path.exists(os.path.join(LOCAL, 'direct-active.out')) or \
        os.path.getsize(os.path.join(LOCAL, 'direct-active.out')) == 0, 'direct curl got data'
    T.diag('direct active curl: exit %d after %.1f s: %s' % (
        r.returncode, dt, (r.stderr.decode().strip().splitlines() or [''])[-1]))

    lp = subprocess.Popen(nsexec(NS_C, ['/usr/bin/python3', '-c', LISTENER_SCRIPT, CLIENT_IP]),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    _my_procs.append(lp)
    try:
        rd, _, _ = select.select([lp.stdout], [], [], 10)
        line = lp.stdout.readline().strip() if rd else b''
        assert line.isdigit(), 'listener in the client ns did not start: %r' % line
        port = line.decode()
        # what the backend would have to do after "PORT 203,0,113,2,...": no route
        out = run(nsexec(NS_S, ['/usr/bin/python3', '-c', CONNECT_SCRIPT, CLIENT_IP, port,
                                SERVER_IP])).stdout.decode().strip()
        assert out.startswith('error'), \
            'the server ns connected to %s:%s: %r' % (CLIENT_IP, port, out)
        T.diag('server ns -> %s:%s: %s' % (CLIENT_IP, port, out))
        # the gateway, from its client-side address, reaches the same port
        out = run(nsexec(NS_G, ['/usr/bin/python3', '-c', CONNECT_SCRIPT, CLIENT_IP, port,
                                GATE_IP])).stdout.decode().strip()
        assert out == 'connected', 'gateway ns -> %s:%s: %r' % (CLIENT_IP, port, out)
        peer, _ = lp.communicate(timeout=12)
        assert peer.decode().split() == [GATE_IP], 'the listener saw: %r' % peer
    finally:
        T._stop_proc(lp, 2.0)
        if lp in _my_procs:
            _my_procs.remove(lp)


def curl_active_case(mode, how):
    """curl in active mode through ftpgate with backend_data_mode = mode.
    how: 'eprt' (-P 203.0.113.2: curl's default, EPRT) or 'port'
    (-P - --disable-eprt: PORT with the control connection's address)."""
    def fn():
        gate, port = GATE_MODES[mode]()
        out = os.path.join(LOCAL, 'active-%s-%s.out' % (mode, how))
        args = ['-P', CLIENT_IP] if how == 'eprt' else ['-P', '-', '--disable-eprt']
        smark = server_log_mark()
        r = curl_client(args + ['ftp://u:p@%s:%d/file' % (GATE_IP, port), '-o', out])
        err = r.stderr.decode('utf-8', 'replace')
        if how == 'eprt':
            m = re.search(r'> EPRT \|1\|([\d.]+)\|(\d+)\|', err)
            assert m, 'curl -P %s did not send EPRT:\n%s' % (CLIENT_IP, err[-3000:])
            assert m.group(1) == CLIENT_IP, 'EPRT names %s' % m.group(1)
            assert '> PORT' not in err, 'curl fell back to PORT:\n%s' % err[-3000:]
        else:
            m = re.search(r'> PORT (\d+,\d+,\d+,\d+),\d+,\d+', err)
            assert m, 'curl --disable-eprt did not send PORT:\n%s' % err[-3000:]
            assert m.group(1) == '203,0,113,2', 'PORT names %s' % m.group(1)
            assert '> EPRT' not in err, 'curl sent EPRT despite --disable-eprt'
        want = '< 200 %s command successful.' % ('EPRT' if how == 'eprt' else 'PORT')
        assert want in err, 'no "%s" reply:\n%s' % (want[2:], err[-3000:])
        assert not re.search(r'> (EPSV|PASV)', err), 'curl went passive:\n%s' % err[-3000:]
        got = T.sha256_file(out)
        assert got == FILE_SHA, 'sha256 mismatch: %s != %s (size %d)' % (
            got, FILE_SHA, os.path.getsize(out))
        check_backend_side(smark, mode, 1)
        assert gate.alive(), 'ftpgate exited with status %s' % gate.proc.returncode
    return fn


def ftplib_active_case(mode):
    """ftplib set_pasv(False) RETR + STOR through ftpgate, backend_data_mode = mode."""
    def fn():
        gate, port = GATE_MODES[mode]()
        upname = 'active-up-%s.bin' % mode
        dest = os.path.join(ROOT, upname)
        smark = server_log_mark()
        r = in_client(['/usr/bin/python3', '-c', FTPLIB_ACTIVE_SCRIPT,
                       json.dumps(dict(host=GATE_IP, port=port, upsrc=UPSRC,
                                       upname=upname))])
        res = json.loads(r.stdout.decode().strip().splitlines()[-1])
        dialog = '\n'.join(res['dialog'])
        ports = [d for d in res['dialog'] if d.startswith('> PORT ')]
        assert len(ports) == 2 and all(d.startswith('> PORT 203,0,113,2,') for d in ports), \
            'ftplib PORT commands:\n%s' % dialog
        assert not re.search(r'> (EPSV|PASV|EPRT)', dialog), 'not active:\n' + dialog
        assert dialog.count('< 200 PORT command successful.') == 2, dialog
        assert res['size'] == FILE_MIB * T.MiB and res['sha'] == FILE_SHA, \
            'ftplib active RETR: size %d sha %s' % (res['size'], res['sha'])
        assert res['retr_end'].startswith('226') and res['stor_end'].startswith('226'), \
            (res['retr_end'], res['stor_end'])
        # the proxy connects to the client from the address the client connected to
        assert res['retr_peer'] == GATE_IP and res['stor_peer'] == GATE_IP, \
            'data connections came from %s / %s, not %s' % (
                res['retr_peer'], res['stor_peer'], GATE_IP)
        assert os.path.exists(dest), 'no uploaded file on the server'
        got = T.sha256_file(dest)
        assert got == UP_SHA, 'uploaded sha256 mismatch: %s != %s (size %d, want %d)' % (
            got, UP_SHA, os.path.getsize(dest), os.path.getsize(UPSRC))
        check_backend_side(smark, mode, 2)
        assert gate.alive(), 'ftpgate exited with status %s' % gate.proc.returncode
    return fn


# --------------------------------------------------------------------------
# public_address_for: outside clients are told 203.0.113.1, LAN clients
# (192.0.2.0/24, no route to 203.0.113.0/24) are told 192.0.2.1.

LAN_GATE_PORT = 2123
LAN_GATE_PASV = (40400, 40500)
LAN_GATE_CONF = '''; written by test_netns.py: per-network public address
[global]
log_level = debug

[site:lan]
listen = %s:%d, %s:%d
backend = %s:%d
passive_ports = %d-%d
public_address = %s
public_address_for = 192.0.2.0/24 %s
data_timeout = 10
connect_timeout = 5
''' % (GATE_IP, LAN_GATE_PORT, GATE_LAN_IP, LAN_GATE_PORT, SERVER_IP, FTP_PORT,
       LAN_GATE_PASV[0], LAN_GATE_PASV[1], GATE_IP, GATE_LAN_IP)

_lan_gate = []


def lan_gate():
    if not _lan_gate:
        _lan_gate.append(ns_gate(LAN_GATE_CONF))
    return _lan_gate[0]


def pasv_download(ns, host, name):
    """curl PASV download of `file` in ns from host:LAN_GATE_PORT; the 227's address."""
    out = os.path.join(LOCAL, name)
    r = run(nsexec(ns, [T.CURL, '-sS', '-v', '--max-time', str(CMD_TIMEOUT - 5),
                        '--no-ftp-skip-pasv-ip', '--disable-epsv',
                        'ftp://u:p@%s:%d/file' % (host, LAN_GATE_PORT), '-o', out]))
    got = T.sha256_file(out)
    assert got == FILE_SHA, 'sha256 mismatch: %s != %s' % (got, FILE_SHA)
    m = re.search(r'< 227 .*\((\d+,\d+,\d+,\d+),\d+,\d+\)', r.stderr.decode('utf-8', 'replace'))
    assert m, 'no 227 in curl -v output'
    return m.group(1)


def case_lan_public_for():
    lan_gate()
    r = run([IP, '-n', NS_L, 'route', 'get', GATE_IP], check=False)
    assert r.returncode != 0, 'the LAN ns reaches 203.0.113.1: %r' % r.stdout
    assert pasv_download(NS_L, GATE_LAN_IP, 'lan.out') == '192,0,2,1'


def case_outside_public_address():
    assert pasv_download(NS_C, GATE_IP, 'outside.out') == '203,0,113,1'


def case_gate_alive():
    assert G.alive(), 'ftpgate exited with status %s' % G.proc.returncode


# --------------------------------------------------------------------------
# The README's recipes: each ini block runs as it stands (only certificate
# paths change) in the topology its text describes.

RECIPE_HOST = 'ftp.example.org'
RECIPE_ROOT = T.tmpdir('netns-recipe-root-')
os.chmod(RECIPE_ROOT, 0o777)
shutil.copy(FILE, os.path.join(RECIPE_ROOT, 'file'))


def recipe_ini(n):
    """The ini block of recipe n in README.md."""
    with open(os.path.join(T.SRCDIR, 'README.md')) as f:
        text = f.read()
    part = text.split('\n## Recipes\n', 1)[1].split('\n## ', 1)[0]
    sect = re.search(r'\n### %d\. .*?\n```ini\n(.*?)```' % n, part, re.S)
    assert sect, 'no ini block in README recipe %d' % n
    return sect.group(1)


def recipe_gate(n, ns=NS_G, subst=()):
    text = recipe_ini(n)
    for a, b in subst:
        assert a in text, '%r not in recipe %d:\n%s' % (a, n, text)
        text = text.replace(a, b)
    r = T.run_ftpgate(['-t', '-c', write_tmp('recipe%d.ini' % n, text)])
    assert r.returncode == 0, 'recipe %d: -t: %s' % (n, r.stdout + r.stderr)
    return ns_gate('[global]\nlog_level = debug\n\n' + text, ns)


def write_tmp(name, text):
    path = os.path.join(T.tmpdir('netns-recipe-'), name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def curl_in(ns, args, want_sha=FILE_SHA, timeout=CMD_TIMEOUT):
    """curl -v in ns downloading to a temp file; returns its stderr text."""
    out = os.path.join(T.tmpdir('netns-recipe-out-'), 'out')
    r = run(nsexec(ns, [T.CURL, '-sS', '-v', '--max-time', str(timeout - 5)] + list(args) +
                   ['-o', out]), timeout=timeout, check=False)
    err = r.stderr.decode('utf-8', 'replace')
    assert r.returncode == 0, 'curl exit %d:\n%s' % (r.returncode, err[-3000:])
    got = T.sha256_file(out)
    assert got == want_sha, 'sha256 %s, want %s (%d bytes)' % (got, want_sha,
                                                                os.path.getsize(out))
    return err


def pasv_227(err):
    m = re.search(r'< 227 .*\((\d+,\d+,\d+,\d+),(\d+),(\d+)\)', err)
    assert m, 'no 227 in curl -v output:\n' + err[-3000:]
    return m.group(1).replace(',', '.'), int(m.group(2)) * 256 + int(m.group(3))


# Recipe 1: client (its own ns) -- provider NAT (1:1: 203.0.113.10 <->
# 192.0.2.10, a security group opening 21 and 50000-50999) -- the VM, with
# the FTP server on 127.0.0.1:2121 and ftpgate on :21.
NS_K = 'fgk-%d' % os.getpid()
NS_N = 'fgn-%d' % os.getpid()
NS_V = 'fgv-%d' % os.getpid()
ELASTIC_IP = '203.0.113.10'
VM_IP = '192.0.2.10'
NFT = shutil.which('nft') or '/usr/sbin/nft'
NAT_RULES = '''
table ip provider {
    chain pre { type nat hook prerouting priority -100; ip daddr %s dnat to %s; }
    chain post { type nat hook postrouting priority 100; ip saddr %s snat to %s; }
    chain securitygroup {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        ip daddr %s tcp dport { 21, 50000-50999 } accept
        ip saddr %s accept
    }
}
''' % (ELASTIC_IP, VM_IP, VM_IP, ELASTIC_IP, VM_IP, VM_IP)


def make_nat_topology():
    for ns in (NS_K, NS_N, NS_V):
        NAT.add(ns)
    NAT.veth(NS_N, 'internet', NS_K, 'eth0')
    NAT.veth(NS_N, 'tovm', NS_V, 'eth0')
    for ns, dev, addr in ((NS_K, 'eth0', CLIENT_IP + '/24'),
                          (NS_N, 'internet', GATE_IP + '/24'),
                          (NS_N, 'internet', ELASTIC_IP + '/32'),
                          (NS_N, 'tovm', '192.0.2.1/24'),
                          (NS_V, 'eth0', VM_IP + '/24')):
        NAT.addr(ns, dev, addr)
    run([IP, '-n', NS_V, 'route', 'add', 'default', 'via', '192.0.2.1'])
    T.ns_sysctl(NS_N, 'net.ipv4.ip_forward', 1, CMD_TIMEOUT)
    rules = write_tmp('nat.nft', NAT_RULES)
    run(nsexec(NS_N, [NFT, '-f', rules]))
    why = NAT.wait_addresses()
    assert not why, why


def case_recipe_nat_vm():
    if not os.access(NFT, os.X_OK):
        T.diag('SKIP: nft (Debian package nftables) not installed: no 1:1 NAT to build')
        return
    make_nat_topology()
    srv = ns_backend(RECIPE_ROOT, ns=NS_V, host='127.0.0.1', port=2121, pasv=(40000, 40999))
    gate = recipe_gate(1, ns=NS_V)
    try:
        url = 'ftp://u:p@%s/file' % ELASTIC_IP
        # no route from the client to the VM's private network
        r = run(nsexec(NS_K, [IP, 'route', 'get', VM_IP]), check=False)
        assert r.returncode != 0, 'client has a route to %s' % VM_IP
        err = curl_in(NS_K, ['--disable-epsv', '--no-ftp-skip-pasv-ip', url])
        host, port = pasv_227(err)
        assert host == ELASTIC_IP and 50000 <= port <= 50999, \
            '227 announces %s:%d, want %s and 50000-50999' % (host, port, ELASTIC_IP)
        curl_in(NS_K, [url])   # EPSV
        up = os.path.join(RECIPE_ROOT, 'nat-up.bin')
        run(nsexec(NS_K, [T.CURL, '-sS', '--max-time', '15', '-T', UPSRC,
                          'ftp://u:p@%s/nat-up.bin' % ELASTIC_IP]))
        assert T.sha256_file(up) == UP_SHA, 'upload through the NAT differs'
        assert gate.alive(), 'ftpgate exited'
    finally:
        gate.stop()
        srv.stop()


def with_lan_backend(fn):
    """fn with a plain pyftpdlib on 198.51.100.2:21 (passive 41000-41099)."""
    def wrapped():
        srv = ns_backend(RECIPE_ROOT, port=21, pasv=(41000, 41099))
        try:
            fn()
        except AssertionError as e:
            tail = '\n'.join(srv.log().splitlines()[-25:])
            raise AssertionError('%s\n--- recipe backend log, last lines:\n%s' % (e, tail)) \
                from None
        finally:
            srv.stop()
    return wrapped


def case_recipe_lan():
    gate = recipe_gate(2)
    try:
        url = 'ftp://u:p@%s/file' % GATE_IP
        err = curl_in(NS_C, ['--disable-epsv', '--no-ftp-skip-pasv-ip', url])
        host, port = pasv_227(err)
        assert host == GATE_IP and 50000 <= port <= 50999, '227: %s:%d' % (host, port)
        curl_in(NS_C, [url])
        curl_in(NS_C, ['-P', CLIENT_IP, url])   # active mode
        assert gate.alive(), 'ftpgate exited'
    finally:
        gate.stop()


def recipe_cert():
    d = T.tmpdir('netns-recipe-tls-')
    os.chmod(d, 0o755)
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    # the README's command, with the paths of this test
    T._openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '825',
                '-subj', '/CN=' + RECIPE_HOST, '-addext', 'subjectAltName=DNS:' + RECIPE_HOST,
                '-keyout', key, '-out', cert], d)
    os.chmod(key, 0o644)
    return cert, key


RECIPE_CERT = recipe_cert()
TLS_CURL = ['--ssl-reqd', '--cacert', RECIPE_CERT[0],
            '--resolve', '%s:21:%s' % (RECIPE_HOST, GATE_IP)]


def case_recipe_ftps():
    cert, key = RECIPE_CERT
    gate = recipe_gate(3, subst=(('/etc/ftpgate/cert.pem', cert),
                                 ('/etc/ftpgate/key.pem', key)))
    try:
        url = 'ftp://u:p@%s/file' % RECIPE_HOST
        err = curl_in(NS_C, TLS_CURL + ['--disable-epsv', '--no-ftp-skip-pasv-ip', url])
        assert re.search(r'> AUTH (TLS|SSL)', err) and '> PROT P' in err, err[-3000:]
        curl_in(NS_C, TLS_CURL + [url])
        # secure by default: no login without TLS
        r = run(nsexec(NS_C, [T.CURL, '-sS', '-v', '--max-time', '10',
                              'ftp://u:p@%s/file' % GATE_IP, '-o', '/dev/null']),
                check=False)
        err = r.stderr.decode('utf-8', 'replace')
        assert r.returncode != 0 and '< 530' in err, \
            'plain login: curl exit %d:\n%s' % (r.returncode, err[-2000:])
        assert gate.alive(), 'ftpgate exited'
    finally:
        gate.stop()


def case_recipe_passthrough():
    """The README's vsftpd settings for passthrough (pasv_address, the same
    passive range), vsftpd holding the key and requiring TLS session reuse."""
    why = T.vsftpd_unavailable()
    if why:
        T.diag('SKIP: ' + why)
        return
    vs = T.VsftpdServer(RECIPE_CERT[0], RECIPE_CERT[1], pasv_ports=(50000, 50999),
                        host=SERVER_IP, port=21, pasv_address=GATE_IP, ns=NS_S)
    shutil.copy(FILE, os.path.join(vs.root, 'file'))
    gate = recipe_gate(4)
    try:
        url = 'ftp://%s/file' % RECIPE_HOST
        err = curl_in(NS_C, TLS_CURL + ['--disable-epsv', '--no-ftp-skip-pasv-ip', url])
        host, port = pasv_227(err)   # curl -v shows the decrypted dialogue
        assert host == GATE_IP and 50000 <= port <= 50999, '227: %s:%d' % (host, port)
        curl_in(NS_C, TLS_CURL + [url])
        assert gate.alive(), 'ftpgate exited'
        # the proxy never held a key: it logs the blind relay
        assert re.search(r'forwarding passive ports 50000-50999', gate.log()), gate.log()[-2000:]
    except AssertionError as e:
        raise AssertionError('%s\n--- vsftpd log, last lines:\n%s' % (
            e, '\n'.join(vs.log().splitlines()[-25:]))) from None
    finally:
        gate.stop()
        vs.stop()


CASES = [
    ('topology: no routes between client and server, ip_forward=0', case_topology),
    ('direct: client cannot reach the backend (curl fails)', case_direct_fails),
    ('curl PASV download (--disable-epsv) through ftpgate, sha256', case_curl_pasv),
    ('curl EPSV download through ftpgate, sha256', case_curl_epsv),
    ('curl upload (-T) through ftpgate, sha256 on server', case_curl_upload),
    ('ftplib (trust_server_pasv_ipv4_address) RETR + NLST + LIST', case_ftplib),
    ('227 announces 203.0.113.1 and a port from passive_ports', case_227_address),
    ('active direct: backend cannot route to 203.0.113.2 (curl -P fails, no route)',
     case_active_direct_fails),
    ('active: curl -P 203.0.113.2 (EPRT), backend passive, sha256',
     curl_active_case('passive', 'eprt')),
    ('active: curl -P - --disable-eprt (PORT), backend passive, sha256',
     curl_active_case('passive', 'port')),
    ('active: ftplib set_pasv(False) RETR + STOR, backend passive, sha256',
     ftplib_active_case('passive')),
    ('active: curl -P 203.0.113.2 (EPRT), backend_data_mode=active, sha256',
     curl_active_case('active', 'eprt')),
    ('active: curl -P - --disable-eprt (PORT), backend_data_mode=active, sha256',
     curl_active_case('active', 'port')),
    ('active: ftplib set_pasv(False) RETR + STOR, backend_data_mode=active, sha256',
     ftplib_active_case('active')),
    ('public_address_for: the LAN client is told 192.0.2.1 and downloads (curl PASV, sha256)',
     case_lan_public_for),
    ('public_address_for: the outside client is told public_address 203.0.113.1',
     case_outside_public_address),
    ('ftpgate still running', case_gate_alive),
    ('README recipe 1: cloud VM behind a 1:1 NAT (nft), ftpgate on the VM: PASV, EPSV, '
     'upload', case_recipe_nat_vm),
    ('README recipe 2: ftpgate in front of a LAN server: PASV, EPSV, active',
     with_lan_backend(case_recipe_lan)),
    ('README recipe 3: FTPS terminated with require_tls: curl --ssl-reqd; plain login 530',
     with_lan_backend(case_recipe_ftps)),
    ('README recipe 4: FTPS passthrough to vsftpd announcing 203.0.113.1: PASV, EPSV',
     case_recipe_passthrough),
]

try:
    for name, fn in CASES:
        t.case(name, with_server_log(fn), timeout=30)
finally:
    _cleanup()
t.done()
