#!/usr/bin/python3
"""Scale-out with the real balancer: Debian's haproxy in TCP mode, with
send-proxy-v2 and an FTP health check, balancing one public port over two
ftpgate instances, in network namespaces.  TAP output.

Topology (documentation address ranges only, made by this test, deleted at
exit; no default routes, no forwarding):

  client ns fsc-PID        front ns fsg-PID                        server ns fss-PID
  203.0.113.2/24 --veth-- 203.0.113.1/24: the balancer (haproxy :21)
  route to                 on lo: 198.51.100.1 (the balancer's source
  198.51.100.0/24            toward the gates), 198.51.100.11 (gate1),
  via 203.0.113.1            198.51.100.12 (gate2): two ftpgates, each on :21,
  curl                       public_address its own address
                           192.0.2.1/24 ---------------------veth-- 192.0.2.5/24
                                                                    haproxy :21 accept-proxy
                                                                    -> vsftpd 192.0.2.5:2121

The balancer's haproxy.cfg is the block of README.md's "Scaling out" as it
stands (only its log line sends the log to stdout).  Only control
connections pass the balancer: each ftpgate announces its own address in
227, so the client's data connections go straight to the instance holding
its session.  Both ftpgates read the balancer's PROXY v2 header
(proxy_trusted = the balancer's source) and send one to the backend
(backend_proxy_protocol = v2), where a second haproxy with accept-proxy
logs the address it names before vsftpd (pasv_promiscuous: its data
connections come from ftpgate, its control connection from haproxy).

Needs root (ip netns), haproxy, vsftpd, curl; otherwise "1..0 # SKIP"."""

import atexit
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

TOPO = T.NetnsTopology('fs')
NS_C, NS_G, NS_S = TOPO.client, TOPO.gate, TOPO.server
TOPO.GATE_BACK_IP = '192.0.2.1'
TOPO.SERVER_IP = '192.0.2.5'
CLIENT_IP = TOPO.CLIENT_IP
LB_IP = TOPO.GATE_IP                 # 203.0.113.1, the public FTP address
LB_SRC = '198.51.100.1'              # the balancer's source toward the gates
GATES = {'gate1': '198.51.100.11', 'gate2': '198.51.100.12'}
GATE_PASV = {'gate1': (40000, 40099), 'gate2': (40100, 40199)}
BACKEND_IP = TOPO.SERVER_IP
VSFTPD_PORT = 2121
VSFTPD_PASV = (50000, 50099)
CMD_TIMEOUT = 30
LFTP = shutil.which('lftp')
FILE_MIB = 8

IP = T.IP
nsexec = T.nsexec

_my = []       # objects with .stop(), stopped (by PID) before the namespaces go


def _cleanup():
    for o in reversed(_my):
        try:
            o.stop()
        except Exception:
            pass
    TOPO.delete()


atexit.register(_cleanup)


def make_topology():
    """None, or a reason to skip."""
    why = TOPO.build(CMD_TIMEOUT)
    if why:
        return why
    for a in [LB_SRC] + list(GATES.values()):
        TOPO.addr(NS_G, 'lo', a + '/32')
    T.run_cmd([IP, '-n', NS_C, 'route', 'add', '198.51.100.0/24', 'via', LB_IP],
              timeout=CMD_TIMEOUT)
    return TOPO.wait_addresses()


def readme_haproxy_cfg():
    """The haproxy.cfg block of README.md's "Scaling out"."""
    with open(os.path.join(T.SRCDIR, 'README.md')) as f:
        text = f.read()
    part = text.split('\n## Scaling out\n', 1)[1].split('\n## ', 1)[0]
    m = re.search(r'\n```\n(# haproxy\.cfg .*?)```', part, re.S)
    assert m, 'no haproxy.cfg block in README.md\'s "Scaling out"'
    return m.group(1)


def gate_ini(name, proxy_protocol='v2'):
    addr = GATES[name]
    return ('; %s, written by test_scaleout.py\n[global]\nlog_level = debug\n\n'
            '[site:main]\nlisten = %s:21\nbackend = %s:21\npublic_address = %s\n'
            'passive_ports = %d-%d\nproxy_protocol = %s\nproxy_trusted = %s/32\n'
            'backend_proxy_protocol = v2\nconnect_timeout = 5\ndata_timeout = 15\n'
            % ((name, addr, BACKEND_IP, addr) + GATE_PASV[name] + (proxy_protocol, LB_SRC)))


# --------------------------------------------------------------------------
# set-up

if not os.access(T.FTPGATE, os.X_OK):
    sys.stdout.write('Bail out! ftpgate binary not found: %s\n' % T.FTPGATE)
    sys.exit(1)
for _what, _why in (('haproxy', None if T.HAPROXY else 'haproxy not installed'),
                    ('vsftpd', T.vsftpd_unavailable()),
                    ('curl', None if os.access(T.CURL, os.X_OK) else 'curl not found')):
    if _why:
        T.skip_all(_why)
T.netns_or_skip(make_topology, _cleanup)

t = T.Tap()
LOCAL = T.tmpdir('scaleout-local-')
FILE = os.path.join(LOCAL, 'file.bin')
FILE_SHA = T.make_random_file(FILE, FILE_MIB)
UPSRC = os.path.join(LOCAL, 'upload.src')
UP_SHA = T.make_random_file(UPSRC, 3, nbytes=3 * T.MiB + 4321)
LB_CFG = readme_haproxy_cfg().replace('log /dev/log local0 info',
                                      'log stdout format raw local0 info')
BACKEND_CFG = ('global\n  log stdout format raw local0 info\n'
               'defaults\n  mode tcp\n  log global\n  option tcplog\n'
               '  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n'
               'frontend ftp\n  bind %s:21 accept-proxy\n  default_backend vsftpd\n'
               'backend vsftpd\n  server vs %s:%d\n' % (BACKEND_IP, BACKEND_IP, VSFTPD_PORT))

try:
    SRV = T.VsftpdServer(host=BACKEND_IP, port=VSFTPD_PORT, pasv_ports=VSFTPD_PASV,
                         extra=['pasv_promiscuous=YES'], ns=NS_S)
    _my.append(SRV)
    SRV.put(FILE)
    BACK = T.Haproxy(BACKEND_CFG, [21], ns=NS_S)
    _my.append(BACK)
    GW = {}
    for _n in GATES:
        GW[_n] = T.Ftpgate(gate_ini(_n), ns=NS_G)
        _my.append(GW[_n])
    LB = T.Haproxy(LB_CFG, [21], ns=NS_G)
    _my.append(LB)
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:3000])

URL = 'ftp://%s/' % LB_IP


def curl(args):
    """curl -v in the client ns through the balancer, in PASV mode using
    the 227's address (by default curl ignores the 227's address, and an
    EPSV reply names only a port: both open the data connection on the
    balancer's address); returns its stderr text."""
    r = T.run_cmd(nsexec(NS_C, [T.CURL, '-sS', '-v', '--disable-epsv', '--no-ftp-skip-pasv-ip',
                                '--max-time', str(CMD_TIMEOUT - 5)] + list(args)),
                  timeout=CMD_TIMEOUT, check=False)
    err = r.stderr.decode('utf-8', 'replace')
    assert r.returncode == 0, 'curl %s: exit %d:\n%s' % (' '.join(args), r.returncode,
                                                          err[-3000:])
    return err


def served_by(err):
    """The gate whose address the 227 named, after checking that curl's
    data connection went there (not to the balancer)."""
    m = re.search(r'< 227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', err)
    assert m, 'no 227 in curl -v output:\n' + err[-3000:]
    addr = '.'.join(m.group(1, 2, 3, 4))
    port = int(m.group(5)) * 256 + int(m.group(6))
    names = [n for n, a in GATES.items() if a == addr]
    assert names, '227 announced %s, not a gate\'s own address' % addr
    assert re.search(r'Trying %s:%d\.\.\.' % (re.escape(addr), port), err) and \
        'failed' not in err, 'curl did not open the data connection to %s:%d:\n%s' % (
            addr, port, err[-3000:])
    lo, hi = GATE_PASV[names[0]]
    assert lo <= port <= hi, 'port %d outside %s\'s passive_ports' % (port, names[0])
    assert GW[names[0]].wait_log(r'client data connection accepted on port %d\b' % port), \
        '%s did not log the data connection on port %d' % (names[0], port)
    return names[0]


def gate_saw_client(name, mark):
    g = GW[name]
    assert g.wait_log(r'start: client %s:\d+ to ' % re.escape(CLIENT_IP), mark), \
        '%s did not log the client %s:\n%s' % (name, CLIENT_IP, g.log_since(mark)[-3000:])


def marks():
    return {n: g.log_mark() for n, g in GW.items() if g.alive()}


# --------------------------------------------------------------------------

USED = set()


def case_list_get_put():
    """Listing, download, upload and a second download through the balancer:
    each data connection straight to the instance's own address, the
    client's own address at ftpgate (its log) and at the backend (haproxy
    accept-proxy's log); the sessions spread over both instances."""
    m = marks()
    listing = os.path.join(T.tmpdir('scaleout-ls-'), 'listing')
    err = curl([URL, '-o', listing])
    assert re.search(r' file\.bin$', T.read_text(listing), re.M), \
        'listing without file.bin: %r' % T.read_text(listing)
    USED.add(served_by(err))
    dl = os.path.join(T.tmpdir('scaleout-dl-'), 'file.bin')
    for i in range(2):
        err = curl([URL + 'file.bin', '-o', dl])
        assert T.sha256_file(dl) == FILE_SHA, 'download %d: checksum differs' % (i + 1)
        USED.add(served_by(err))
    err = curl(['-T', UPSRC, URL + 'up/uploaded.bin'])
    USED.add(served_by(err))
    stored = os.path.join(SRV.up, 'uploaded.bin')
    assert T.sha256_file(stored) == UP_SHA, 'upload: checksum of the stored file differs'
    assert USED == set(GATES), 'all sessions went to %s (roundrobin over %s)' % (
        sorted(USED), sorted(GATES))
    for n in GATES:
        gate_saw_client(n, m[n])
    # Each client address and port the balancer logged is the one ftpgate
    # logged and the one the backend's haproxy logged (from ftpgate's header).
    seen = re.findall(r'^(%s:\d+) \[[^]]*\] ftp ftpgates/(gate\d) ' % re.escape(CLIENT_IP),
                      LB.wait_log(r'(?s)(.*ftpgates/gate\d ){4}').string, re.M)
    assert len(seen) >= 4, 'the balancer logged %s' % seen
    for client, name in seen:
        assert re.search(r'start: client %s to ' % re.escape(client), GW[name].log()), \
            '%s did not log the client %s' % (name, client)
        BACK.wait_log(r'(?m)^%s \[[^]]*\] ftp vsftpd/vs ' % re.escape(client))
    clients = set(re.findall(r'(?m)^(\d+\.\d+\.\d+\.\d+):\d+ \[[^]]*\] ftp vsftpd/vs ',
                             BACK.log()))
    assert clients <= {CLIENT_IP, LB_SRC}, 'the backend saw clients %s' % sorted(clients)


def case_lftp_defaults():
    """lftp with its default settings (PASV, the 227's address used) works
    through the balancer as it stands."""
    dl = os.path.join(T.tmpdir('scaleout-lftp-'), 'file.bin')
    r = T.run_cmd(nsexec(NS_C, [LFTP, '-d', '-c', 'set net:max-retries 1; set net:timeout 15; '
                                'open ftp://%s; get file.bin -o %s' % (LB_IP, dl)]),
                  timeout=CMD_TIMEOUT, check=False)
    err = (r.stdout + r.stderr).decode('utf-8', 'replace')
    assert r.returncode == 0, 'lftp: exit %d:\n%s' % (r.returncode, err[-3000:])
    assert T.sha256_file(dl) == FILE_SHA, 'lftp download: checksum differs'
    m = re.search(r'<--- 227 .*\((\d+,\d+,\d+,\d+),\d+,\d+\)', err)
    assert m and m.group(1).replace(',', '.') in GATES.values(), \
        'lftp got no 227 with a gate\'s address:\n%s' % err[-3000:]


def case_health_check():
    """The balancer's FTP health check (its PROXY header, 220, QUIT) is
    served by both gates as a session from the balancer; both stay UP."""
    m = marks()
    for n in GATES:
        assert GW[n].wait_log(r'start: client %s:\d+ to ' % re.escape(LB_SRC), m[n],
                              timeout=10), '%s saw no health check:\n%s' % (
                                  n, GW[n].log_since(m[n])[-3000:])
    assert not re.search(r'is DOWN', LB.log()), LB.log()[-2000:]


def case_failover():
    """gate1 stopped: once the health check marked it DOWN, every new
    session goes to gate2, none fails to log in."""
    rc = GW['gate1'].stop()
    assert rc is not None
    LB.wait_log(r'ftpgates/gate1 is DOWN', timeout=20)
    m = marks()
    dl = os.path.join(T.tmpdir('scaleout-fo-'), 'file.bin')
    for i in range(4):
        err = curl([URL + 'file.bin', '-o', dl])
        assert T.sha256_file(dl) == FILE_SHA, 'download %d after failover' % (i + 1)
        assert served_by(err) == 'gate2', 'session %d after failover on %s' % (i + 1,
                                                                                served_by(err))
        assert '< 230' in err, 'no 230 in session %d:\n%s' % (i + 1, err[-2000:])
    gate_saw_client('gate2', m['gate2'])


def case_gates_alive():
    assert GW['gate2'].alive(), 'gate2 exited with status %s' % GW['gate2'].proc.returncode
    assert LB.proc.poll() is None and BACK.proc.poll() is None, 'a haproxy exited'


t.case('list, download, upload (sha256) through haproxy: data straight to each gate\'s '
       'own address, the client\'s address at ftpgate and at the backend, both gates used',
       case_list_get_put, 120)
if LFTP:
    t.case('lftp with its defaults downloads through the balancer (sha256)',
           case_lftp_defaults, 60)
else:
    t.skip('lftp with its defaults downloads through the balancer', 'lftp not installed')
t.case('the FTP health check (tcp-check, expect 220) reaches both gates, as the balancer',
       case_health_check, 30)
t.case('gate1 stopped: after haproxy marks it DOWN, new sessions go to gate2, no failed login',
       case_failover, 90)
t.case('gate2 and both haproxy instances still running', case_gates_alive, 10)
_cleanup()
t.done()
