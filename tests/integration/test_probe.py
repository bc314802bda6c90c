#!/usr/bin/python3
"""`ftpgate probe` against real servers configured right and wrong:
pyftpdlib (plain and TLS_FTPHandler), vsftpd (FTPS with
require_ssl_reuse=YES, pasv_address), ProFTPD and Pure-FTPd (from their
Debian packages, see ftpservers.py; skipped with the reason when they
cannot run here).  Wrong: a private or different announced passive
address, no TLS where the site wants backend_tls, an expired and a
wrong-name certificate, TLS session reuse required, a server that is
down, a wrong password, a passthrough site whose server announces another
address or another passive range.  Each case checks the verdict lines
(ok / warning / problem with a topic and words), the exit status (0 only
without a problem) and that --json parses and carries the same verdicts
as the text.  The sites' outside view goes through a running ftpgate.
Certificates are made here with python3-cryptography (an expired one
cannot be made with the openssl 3.0 CLI).  Loopback only.  TAP output."""

import datetime
import ipaddress
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402
import ftpservers as S  # noqa: E402

t = T.start_tap()
T.use_private_binary()
FINDING = re.compile(r'^  (ok|warning|problem) +(\S+) +(.*)$')
TIMEOUT = 5   # --timeout: bounds every step of a probe


# --------------------------------------------------------------------------
# certificates: a CA, and three server certificates it signed

def make_certs(d):
    """{'ca': path, NAME: (cert, key)} for NAME good (IP 127.0.0.1),
    expired (IP 127.0.0.1, ended yesterday), wrongname (DNS other.example)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    os.chmod(d, 0o755)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def write(name, cert, k):
        c, kp = os.path.join(d, name + '.pem'), os.path.join(d, name + '.key')
        with open(c, 'wb') as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(kp, 'wb') as f:
            f.write(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
        os.chmod(c, 0o644)
        os.chmod(kp, 0o644)   # vsftpd's unprivileged processes read it
        return c, kp

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'probe test CA')])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - 30 * day).not_valid_after(now + 30 * day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {'ca': write('ca', ca, ca_key)[0]}

    def leaf(name, san, start, end):
        k = ec.generate_private_key(ec.SECP256R1())
        c = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(ca_name).public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.SubjectAlternativeName([san]), critical=False)
             .sign(ca_key, hashes.SHA256()))
        out[name] = write(name, c, k)

    ip = x509.IPAddress(ipaddress.ip_address('127.0.0.1'))
    leaf('good', ip, now - day, now + 30 * day)
    leaf('expired', ip, now - 30 * day, now - day)
    leaf('wrongname', x509.DNSName('other.example'), now - day, now + 30 * day)
    return out


try:
    C = make_certs(T.tmpdir('probe-certs-'))
except Exception as e:  # noqa
    t.bail('cannot make test certificates: %s' % str(e).replace('\n', ' | ')[:500])
ROOT = T.root_with('a.txt')


# --------------------------------------------------------------------------
# running the probe

class Result:
    """findings: (verdict, topic, sentence, report title) in the order printed."""

    def __init__(self, rc, text, findings):
        self.rc, self.text, self.findings = rc, text, findings

    def want(self, verdict, topic, pattern=''):
        """The finding (verdict, topic) whose sentence matches pattern."""
        for v, tp, s, _ in self.findings:
            if v == verdict and tp == topic and re.search(pattern, s):
                return s
        raise AssertionError('no "%s %s" finding matching %r in:\n%s'
                             % (verdict, topic, pattern, self.text))

    def none(self, verdict, topic=None):
        bad = [f for f in self.findings if f[0] == verdict and topic in (None, f[1])]
        assert not bad, 'unexpected %s %s findings:\n%s' % (verdict, topic or '', self.text)

    def rc_is(self, rc):
        assert self.rc == rc, 'exit status %d, want %d:\n%s' % (self.rc, rc, self.text)


def outside(res):
    """The findings of the outside view (the site's listener, as a client)."""
    f = [x for x in res.findings if 'outside view, as a client at' in x[3]]
    assert f, 'no outside view:\n%s' % res.text
    return Result(res.rc, res.text, f)


def probe(args, show=None):
    """Run `ftpgate probe ARGS` twice, as text and --json: the same
    verdicts (verdict, topic, in order) and the same exit status, which
    is 1 exactly when one of them is a problem."""
    cmd = [T.FTPGATE, 'probe', '--timeout', str(TIMEOUT)] + list(args)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    j = subprocess.run(cmd + ['--json'], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert not r.stderr and not j.stderr, 'stderr: %r %r' % (r.stderr, j.stderr)
    findings, title = [], None
    for line in r.stdout.splitlines():
        m = FINDING.match(line)
        if m:
            findings.append((m.group(1), m.group(2), m.group(3), title))
        elif line and not line.startswith(' '):
            title = line
    doc = json.loads(j.stdout)
    jf = [(f['verdict'], f['topic'], rep['title']) for rep in doc['reports']
          for f in rep['findings']]
    assert jf == [(f[0], f[1], f[3]) for f in findings], 'text and --json differ:\n%s\n%s' % (
        r.stdout, j.stdout)
    problems = sum(1 for f in findings if f[0] == 'problem')
    assert doc['ok'] == (problems == 0) and doc['counts']['problem'] == problems, j.stdout
    assert r.returncode == j.returncode == (1 if problems else 0), \
        'exit %d / %d with %d problems:\n%s' % (r.returncode, j.returncode, problems,
                                                r.stdout)
    assert re.search(r'(?m)^\d+ ok, \d+ warnings?, %d problems?$' % problems, r.stdout), \
        r.stdout
    if show:
        T.diag('%s: ftpgate probe %s\n%s' % (show, ' '.join(args), r.stdout))
    return Result(r.returncode, r.stdout, findings)


def write_conf(cfg):
    d = T.tmpdir('probe-conf-')
    path = os.path.join(d, 'ftpgate.ini')
    with open(path, 'w') as f:
        f.write(T.render_config(cfg))
    return path


def site_probe(backend, args=(), gate=True, show=None, cfg=None, wait_ports=(), **site):
    """Probe a one-site configuration, with ftpgate running it (gate) for
    the outside view, or not."""
    cfg = cfg or T.gate_config(backend, **site)
    if not gate:
        return probe(['-c', write_conf(cfg)] + list(args), show)
    with T.Ftpgate(cfg, wait_ports=wait_ports) as g:
        return probe(['-c', g.conf] + list(args), show)


OUTSIDE_OK = ('connect', 'greeting', 'login', 'list')


# --------------------------------------------------------------------------
# pyftpdlib

def case_pyftpd_right():
    with T.PyftpdServer(ROOT) as s:
        r = site_probe(s)
    r.rc_is(0)
    r.none('problem')
    r.none('warning')
    r.want('ok', 'connect', r'Connected to 127\.0\.0\.1:%d in [0-9.]+ ms' % s.port)
    r.want('ok', 'greeting', re.escape(s.banner))
    r.want('ok', 'feat', 'EPSV')
    r.want('ok', 'login', '"anonymous"')
    r.want('ok', 'epsv', r'data port \d+')
    r.want('ok', 'pasv', r'announces 127\.0\.0\.1, where the server was reached')
    r.want('ok', 'list', r'passive LIST \(EPSV\) transferred [1-9]\d* bytes')
    r.want('ok', 'port', r'accepts PORT to 127\.0\.0\.1:\d+ and connects back')
    o = outside(r)
    for topic in OUTSIDE_OK:
        o.want('ok', topic)
    o.want('ok', 'list', r'\(PASV\)')


def case_pyftpd_private_address():
    with T.PyftpdServer(ROOT, masquerade_address='10.0.0.1') as s:
        r = site_probe(s, show='pyftpdlib announcing a private address')
    r.rc_is(0)   # behind the proxy a wrong announce does no harm
    r.want('warning', 'pasv', r'announces 10\.0\.0\.1, a private address, not 127\.0\.0\.1 '
           r'where the server was reached: the classic NAT failure')
    r.want('ok', 'list')
    outside(r).want('ok', 'list')


def case_pyftpd_different_address():
    with T.PyftpdServer(ROOT, masquerade_address='192.0.2.99') as s:
        r = probe(['ftp://u:p@' + s.addr()])
    r.rc_is(0)
    s_ = r.want('warning', 'pasv', r'announces 192\.0\.2\.99, not 127\.0\.0\.1 .*classic NAT')
    assert 'private' not in s_, s_
    r.want('ok', 'login', '"u"')


def case_pyftpd_no_tls():
    with T.PyftpdServer(ROOT) as s:
        r = site_probe(s, backend_tls='on', backend_ca=C['ca'],
                       show='pyftpdlib without TLS, the site wants backend_tls')
    r.rc_is(1)
    r.want('problem', 'tls', r'does not offer TLS: AUTH TLS got "5\d\d')
    assert 'hint: The site has backend_tls = on' in r.text, r.text


def tls_server(name):
    return T.PyftpdTLSServer(ROOT, *C[name])


def case_pyftpd_tls_right():
    with tls_server('good') as s:
        r = site_probe(s.addr(), args=['--user', 'u', '--pass', 'p'], backend_tls='on',
                       backend_ca=C['ca'])
    r.rc_is(0)
    r.none('warning')
    r.want('ok', 'cert', r'Certificate /CN=good, issued by /CN=probe test CA, valid until')
    r.want('ok', 'cert', 'chain verifies against ' + re.escape(C['ca']))
    r.want('ok', 'cert', r'is for 127\.0\.0\.1')
    r.want('ok', 'tls', r'TLSv1\.[23], cipher \S+')
    r.want('ok', 'reuse', 'work without resuming')
    r.want('ok', 'list')
    outside(r).want('ok', 'list')


def case_pyftpd_expired():
    with tls_server('expired') as s:
        r = site_probe(s.addr(), args=['--user', 'u', '--pass', 'p'], backend_tls='on',
                       backend_ca=C['ca'], show='pyftpdlib with an expired certificate')
    r.rc_is(1)
    r.want('problem', 'cert', r'/CN=expired, issued by /CN=probe test CA, EXPIRED on')
    r.want('ok', 'cert', r'is for 127\.0\.0\.1')
    # the proxy refuses the backend: clients get 421
    outside(r).want('problem', 'greeting', '421')
    assert 'hint: ftpgate turns clients away' in r.text, r.text


def case_pyftpd_wrong_name():
    with tls_server('wrongname') as s:
        r = site_probe(s.addr(), args=['--user', 'u', '--pass', 'p'], backend_tls='on',
                       backend_ca=C['ca'], gate=False)
    r.rc_is(1)
    r.want('problem', 'cert', r'not for 127\.0\.0\.1 .*does not match')
    r.want('ok', 'cert', 'valid until')
    # backend_tls_verify = no: the same certificate is only a warning
    with tls_server('wrongname') as s:
        r = site_probe(s.addr(), args=['--user', 'u', '--pass', 'p'], backend_tls='on',
                       backend_tls_verify='no')
    r.want('warning', 'cert', 'does not match')
    r.want('warning', 'cert', 'does not verify against the system CA store')
    r.rc_is(0)


def case_pyftpd_untrusted_ca():
    with tls_server('good') as s:
        r = probe(['--tls', '--user', 'u', '--pass', 'p', 'ftp://' + s.addr()])
    r.rc_is(1)
    r.want('problem', 'cert', 'does not verify against the system CA store')


def case_down():
    port = T.closed_port()
    r = probe(['ftp://127.0.0.1:%d' % port])
    r.rc_is(1)
    r.want('problem', 'connect', r'Cannot connect to 127\.0\.0\.1:%d: Connection refused' % port)
    assert 'hint: Nothing listens there' in r.text, r.text
    assert len(r.findings) == 1, r.text
    # a site whose backend is down, ftpgate running: its clients get 421
    r = site_probe('127.0.0.1:%d' % port, show='a server that is down')
    r.rc_is(1)
    r.want('problem', 'connect', 'Connection refused')
    outside(r).want('problem', 'greeting', '421')


def case_routes():
    """The servers [route:SITE] sends users to are probed too, each once,
    with the route's pattern in the report's title."""
    port = T.closed_port()
    with T.PyftpdServer(ROOT) as a, T.PyftpdServer(ROOT, masquerade_address='10.0.0.1') as b:
        cfg = T.gate_config(a)
        cfg['route:test'] = {'u': a.addr(), 'w*': '127.0.0.1:%d' % port,
                             '*@acme.example': '%s, %s' % (b.addr(), a.addr()),
                             'x': b.addr()}
        r = site_probe(a, gate=False, cfg=cfg)
    r.rc_is(1)
    text = T.render_config(cfg).splitlines()
    line = {p_: text.index('%s = %s' % (p_, v)) + 1 for p_, v in cfg['route:test'].items()}
    titles = [x for x in dict.fromkeys(f[3] for f in r.findings) if 'outside view' not in x]
    assert titles == ['site test: backend %s' % a.addr(),
                      'site test: backend 127.0.0.1:%d (route w*, line %d)' % (port, line['w*']),
                      'site test: backend %s (route *@acme.example, line %d)'
                      % (b.addr(), line['*@acme.example'])], r.text
    by = {t_: Result(r.rc, r.text, [f for f in r.findings if f[3] == t_]) for t_ in titles}
    by[titles[0]].none('problem')
    by[titles[1]].want('problem', 'connect', 'Connection refused')
    by[titles[2]].want('warning', 'pasv', r'announces 10\.0\.0\.1, a private address')


def case_login():
    with T.PyftpdServer(ROOT) as s:
        r = probe(['--user', 'u', '--pass', 'wrong', 'ftp://' + s.addr()])
        r.rc_is(1)
        r.want('problem', 'login', r'Login as "u" refused: "530')
        r.none('ok', 'list')
        r = probe(['ftp://u:p@' + s.addr()])
        r.rc_is(0)
        r.want('ok', 'login', '"u"')


def case_bad_usage():
    for args in (['ftp://'], ['--nope'], ['-c', '/nonexistent/ftpgate.ini'],
                 ['-c', write_conf(T.gate_config('127.0.0.1:21')), 'nosuchsite']):
        r = subprocess.run([T.FTPGATE, 'probe'] + args, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2 and r.stderr and not r.stdout, (args, r)


# --------------------------------------------------------------------------
# vsftpd

def case_vsftpd_reuse():
    with T.VsftpdServer(*C['good']) as v:
        r = site_probe(v.addr(), backend_tls='on', backend_ca=C['ca'])
    r.rc_is(0)
    r.none('warning')
    r.want('ok', 'reuse', r'must resume the control session \(without: .*522')
    r.want('ok', 'list', r'transferred [1-9]\d* bytes')
    r.want('ok', 'port', 'connects back')
    outside(r).want('ok', 'list')


def case_vsftpd_wrong():
    with T.VsftpdServer(*C['good'], pasv_address='192.0.2.99') as v:
        r = site_probe(v.addr(), backend_tls='on', backend_ca=C['ca'],
                       backend_data_mode='active', passive_ports=T.port_range(20),
                       show='vsftpd announcing 192.0.2.99')
    r.rc_is(0)
    r.want('warning', 'pasv', r'announces 192\.0\.2\.99, not 127\.0\.0\.1 .*classic NAT')
    r.want('ok', 'reuse', 'must resume')
    # without PORT (port_enable=NO) a site in active mode cannot work
    with T.VsftpdServer(*C['good'], active=False) as v:
        r = site_probe(v.addr(), backend_tls='on', backend_ca=C['ca'], gate=False,
                       backend_data_mode='active')
        r.want('problem', 'port', 'refuses PORT')
        r = site_probe(v.addr(), backend_tls='on', backend_ca=C['ca'], gate=False)
        r.want('warning', 'port', r'refuses PORT .*not needed: backend_data_mode = passive')


# --------------------------------------------------------------------------
# ProFTPD and Pure-FTPd (TLS; ProFTPD requires session reuse by default)

PKGROOT, WHY = S.unpacked(['usr/sbin/proftpd', 'usr/lib/proftpd/mod_tls.so',
                            'usr/sbin/pure-ftpd'])
if not WHY:
    SRV_CERT, SRV_KEY, SRV_BUNDLE = S.make_self_signed(T.tmpdir('probe-srv-'))


def pt_cfg(server, passive_ports):
    """A passthrough site on 127.0.0.2 in front of server."""
    return T.gate_config(server.addr(), listen_port=T.free_port(S.PROXY_IP),
                         listen_host=S.PROXY_IP, passive_ports=passive_ports,
                         tls='passthrough')


def creds(server):
    return ['--user', 'u', '--pass', server.password]


def case_proftpd_right():
    rng = T.port_range(20)
    p = S.ProFTPD(PKGROOT, SRV_CERT, SRV_KEY, rng)
    try:
        r = site_probe(None, args=creds(p), cfg=pt_cfg(p, rng), wait_ports=rng)
    finally:
        p.stop()
    r.rc_is(0)
    r.none('warning')
    r.want('ok', 'passthru', r'PASV announces 127\.0\.0\.2, where the proxy forwards')
    r.want('ok', 'passthru', r'PASV port \d+ lies in passive_ports %d-%d' % rng)
    r.want('ok', 'reuse', r'must resume .*425')
    o = outside(r)
    o.want('ok', 'tls')
    o.want('ok', 'list', r'\(PASV\)')


def case_proftpd_wrong():
    rng = T.port_range(20)
    # 127.0.0.3: a wrong address the outside view may connect to (loopback only)
    p = S.ProFTPD(PKGROOT, SRV_CERT, SRV_KEY, rng, masquerade='127.0.0.3')
    try:
        r = site_probe(None, args=creds(p), cfg=pt_cfg(p, rng), wait_ports=rng,
                       show='ProFTPD behind a passthrough site, announcing 127.0.0.3')
        # the same server behind a site that terminates: only a warning
        r2 = site_probe(p.addr(), args=creds(p), gate=False, backend_tls='on',
                        backend_ca=SRV_CERT)
    finally:
        p.stop()
    r.rc_is(1)
    r.want('problem', 'passthru', r'PASV announces 127\.0\.0\.3, but clients of this passthrough '
           r'site must be sent to 127\.0\.0\.2 .*every transfer would fail')
    assert 'hint: Set the server\'s passive address to 127.0.0.2' in r.text, r.text
    outside(r).want('problem', 'list')
    r2.want('warning', 'pasv', r'127\.0\.0\.3, not 127\.0\.0\.1 .*classic NAT failure')
    r2.want('ok', 'list')


def case_pureftpd_wrong():
    rng, site_rng = T.port_range(20), T.port_range(20)
    q = S.PureFTPd(PKGROOT, SRV_BUNDLE, rng)
    try:
        r = site_probe(None, args=creds(q), cfg=pt_cfg(q, site_rng), wait_ports=site_rng,
                       show='Pure-FTPd behind a passthrough site with another passive range')
        r_right = site_probe(None, args=creds(q), cfg=pt_cfg(q, rng), wait_ports=rng)
        plain = probe(creds(q) + ['ftp://' + q.addr()])
    finally:
        q.stop()
    r.rc_is(1)
    r.want('ok', 'passthru', r'announces 127\.0\.0\.2, where the proxy forwards')
    r.want('problem', 'passthru', r'PASV announces port \d+, outside this site\'s passive_ports '
           r'%d-%d' % site_rng)
    r.want('problem', 'passthru', r'EPSV announces port \d+, outside')
    outside(r).want('problem', 'list')
    r_right.rc_is(0)
    r_right.want('ok', 'passthru', 'lies in passive_ports')
    plain.rc_is(0)   # -Y 1: plain FTP is allowed too
    plain.want('warning', 'pasv', r'announces 127\.0\.0\.2, not 127\.0\.0\.1 .*classic NAT')


CASES = [
    ('pyftpdlib configured right: every line ok, exit 0', case_pyftpd_right, None),
    ('pyftpdlib announcing a private address: the classic NAT failure (warning)',
     case_pyftpd_private_address, None),
    ('pyftpdlib announcing another address (URL form, credentials in the URL)',
     case_pyftpd_different_address, None),
    ('backend_tls = on, server without TLS: problem, exit 1', case_pyftpd_no_tls, None),
    ('pyftpdlib TLS right: certificate, protocol, cipher, no reuse needed',
     case_pyftpd_tls_right, 'tls'),
    ('expired certificate: problem; the proxy answers 421', case_pyftpd_expired, 'tls'),
    ('wrong-name certificate: problem, a warning without backend_tls_verify',
     case_pyftpd_wrong_name, 'tls'),
    ('certificate of an unknown CA (URL form, system store): problem',
     case_pyftpd_untrusted_ca, 'tls'),
    ('server down: connection refused, problem, exit 1', case_down, None),
    ('route servers probed too, each once, the route in the title', case_routes, None),
    ('login: wrong password is a problem, user:pass in the URL', case_login, None),
    ('bad usage: exit 2 with a message', case_bad_usage, None),
    ('vsftpd require_ssl_reuse: reuse needed, ok (ftpgate resumes)', case_vsftpd_reuse,
     'vsftpd'),
    ('vsftpd announcing 192.0.2.99; PORT refused with backend_data_mode = active',
     case_vsftpd_wrong, 'vsftpd'),
    ('ProFTPD behind a passthrough site, configured right', case_proftpd_right, 'pkg'),
    ('ProFTPD announcing 127.0.0.3 behind a passthrough site: problem', case_proftpd_wrong,
     'pkg'),
    ('Pure-FTPd passive range unlike the passthrough site\'s passive_ports: problem',
     case_pureftpd_wrong, 'pkg'),
]

TLS_WHY = T.pyftpdlib_tls_available()
for name, fn, needs in CASES:
    why = {'tls': TLS_WHY, 'vsftpd': T.vsftpd_unavailable(), 'pkg': WHY}.get(needs)
    if why:
        t.skip(name, why)
    else:
        t.case(name, fn, timeout=120)
t.done()
