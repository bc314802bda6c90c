#!/usr/bin/python3
"""ftpgate TLS passthrough (`tls = passthrough`) in front of real ProFTPD
and Pure-FTPd servers, configured with exactly the settings the README's
"TLS passthrough" section gives for them:
  ProFTPD:   MasqueradeAddress <proxy IP> + PassivePorts LOW HIGH
  Pure-FTPd: pure-ftpd -P <proxy IP> -p LOW:HIGH
For each server: curl --ssl-reqd -k LIST, a 16 MiB download and a 16 MiB
upload (sha256-checked), with PASV trusting the 227
(--no-ftp-skip-pasv-ip --disable-epsv) and with EPSV.  TAP output; see
ftptest.py for the environment variables.

The servers are not installed: their Debian packages (proftpd-core,
proftpd-mod-crypto for mod_tls.so, pure-ftpd) are fetched with
`apt-get download` into a temporary directory and unpacked with `dpkg -x`
(only one FTP server package, vsftpd, may be installed).  Their shared
libraries must be installed (tools/install-deps.sh): libhiredis0.14
libmemcached11 libmemcachedutil2 libpcre2-posix3 (ProFTPD), libsodium23
(Pure-FTPd), libcap2.  Every case is skipped with the reason when the
download fails, a library is missing, or the test does not run as root.

Loopback layout (as in test_passthrough.py):
  curl (source 127.0.0.1) --> ftpgate listen 127.0.0.2:PORT, data 127.0.0.2:P
                          --> server on 127.0.0.1:SPORT, passive range ==
                              the site's passive_ports, announcing 127.0.0.2.
Needs /usr/bin/python3, curl, the openssl CLI, apt-get, dpkg, ldd."""

import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402
from ftpservers import (BACK_IP, CMD_TIMEOUT, PROXY_IP, ProFTPD, PureFTPd,  # noqa: E402
                        _cleanup, fetch_servers, make_self_signed, missing_libs,
                        one_line, why_not_here)

MiB = T.MiB
FILE_MIB = 16
END_RE = (r'end: client (?P<client>\S+) backend (?P<backend>\S+) user "[^"]*" '
          r'data up (?P<up>\d+) down (?P<down>\d+) bytes, '
          r'control relayed (?P<ctrl>\d+) bytes, [0-9.]+ s: (?P<why>[^\n]*)')

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)
for _what, _path in (('curl', T.CURL), ('openssl CLI', T.OPENSSL)):
    if not os.access(_path, os.X_OK):
        t.bail('%s not found' % _what)

# A private copy of the binary: src/ftpgate may be rebuilt while this runs.
_bindir = T.tmpdir('ftpgate-bin-')
shutil.copy2(T.FTPGATE, os.path.join(_bindir, 'ftpgate'))
T.FTPGATE = os.path.join(_bindir, 'ftpgate')


# --------------------------------------------------------------------------
# helpers (as in test_passthrough.py)

def pt_gate(server):
    """One passthrough site on 127.0.0.2, passive_ports == the server's range."""
    port = T.free_port(PROXY_IP)
    cfg = T.gate_config(server.addr(), listen_port=port, listen_host=PROXY_IP,
                        passive_ports=server.pasv_ports, tls='passthrough')
    g = T.Ftpgate(cfg)
    assert not re.search(r'(?m)^\s*tls_(cert|key)\s*=', g.text), \
        'the passthrough config holds a certificate/key:\n%s' % g.text
    return g


def wait_end(g, mark, timeout=10.0):
    m = g.wait_log(END_RE, mark, timeout)
    assert m, 'no session end line within %.0f s; log since mark:\n%s' % (
        timeout, g.log_since(mark)[-3000:])
    d = m.groupdict()
    for k in ('up', 'down', 'ctrl'):
        d[k] = int(d[k])
    return d


def curl_v(args, timeout=CMD_TIMEOUT):
    """curl -v; returns stderr text (commands, replies, connects)."""
    r = T.curl(['-v'] + list(args), timeout=timeout)
    return r.stderr.decode('utf-8', 'replace')


def parse_227(text):
    m = re.search(r'227 [^\n]*?\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', text)
    assert m, 'no 227 reply in:\n%s' % text[-3000:]
    return '.'.join(m.group(i) for i in range(1, 5)), int(m.group(5)) * 256 + int(m.group(6))


def parse_229(text):
    m = re.search(r'229 [^\n]*\(\|\|\|(\d+)\|\)', text)
    assert m, 'no 229 reply in:\n%s' % text[-3000:]
    return int(m.group(1))


SSL = ['--ssl-reqd', '-k']
TRUST_227 = ['--no-ftp-skip-pasv-ip', '--disable-epsv']
MODES = (('PASV', TRUST_227), ('EPSV', []))


def creds(s):
    return ['-u', 'u:%s' % s.password]


def url(port, path='', host=PROXY_IP):
    return 'ftp://%s:%d/%s' % (host, port, path)


def check_tls_session(err, g, mark):
    """curl upgraded the control connection (AUTH, 234), protected the data
    (PROT P) and the proxy saw nothing after AUTH."""
    assert re.search(r'> AUTH (TLS|SSL)', err) and re.search(r'< 234', err), \
        'no AUTH / 234 in curl -v output:\n%s' % err[-3000:]
    assert '> PROT P' in err and re.search(r'< 200[ -]', err[err.index('> PROT P'):]), \
        'data channel not protected (PROT P / 200):\n%s' % err[-3000:]
    log = g.log_since(mark)
    assert 'control connection relayed blindly' in log, \
        'no "relayed blindly" line in the proxy log:\n%s' % log[-2000:]
    for c in ('USER', 'PASS', 'PROT', 'RETR', 'STOR', 'LIST', 'PASV', 'EPSV'):
        assert 'command %s' % c not in log, \
            'the proxy saw %s (not blind after AUTH):\n%s' % (c, log[-2000:])


def check_data_conn(err, g, mark, server, mode):
    """The data connection went to the proxy's address and a port of the
    range, and the proxy forwarded that port."""
    lo, hi = server.pasv_ports
    if mode == 'PASV':
        assert '> PASV' in err and '> EPSV' not in err, 'curl did not use PASV:\n%s' % err[-3000:]
        ip, port = parse_227(err)
        assert ip == PROXY_IP, '227 announces %s, not %s (%s)' % (ip, PROXY_IP, server.kind)
    else:
        assert '> EPSV' in err and '> PASV' not in err, 'curl did not use EPSV:\n%s' % err[-3000:]
        port = parse_229(err)
    assert lo <= port <= hi, '%s port %d outside %d-%d' % (mode, port, lo, hi)
    assert re.search(r'(Trying|Connecting to) %s[: ]' % re.escape(PROXY_IP), err) and \
        ('port %d' % port in err or ':%d' % port in err), \
        'curl did not connect the data channel to %s:%d:\n%s' % (PROXY_IP, port, err[-3000:])
    assert g.wait_log(r'passthrough data port %d forwarded' % port, mark, 5), \
        'the proxy log shows no forwarding of port %d:\n%s' % (port, g.log_since(mark)[-2000:])


# --------------------------------------------------------------------------
# cases

def case_direct(s):
    """The server alone (no proxy): TLS LIST and download work; separates
    environment problems from proxy problems."""
    def fn():
        r = T.curl(SSL + creds(s) + [url(s.port, host=BACK_IP)])
        listing = r.stdout.decode('utf-8', 'replace')
        assert 'big.bin' in listing, 'direct LIST: %r' % listing
        out = L('%s.direct' % s.kind)
        T.curl(SSL + creds(s) + [url(s.port, 'big.bin', host=BACK_IP), '-o', out])
        assert T.sha256_file(out) == BIG_SHA, 'direct download from %s mismatch' % s.kind
        os.unlink(out)
    return fn


def case_list(s):
    def fn():
        g = pt_gate(s)
        try:
            mark = g.log_mark()
            r = T.curl(['-v'] + SSL + creds(s) + [url(g.port)])
            listing = r.stdout.decode('utf-8', 'replace')
            err = r.stderr.decode('utf-8', 'replace')
            assert re.search(r'(?m)\bbig\.bin\s*$', listing) and \
                re.search(r'(?m)\bup\s*$', listing), 'LIST through passthrough: %r' % listing
            check_tls_session(err, g, mark)
            e = wait_end(g, mark)
            assert e['ctrl'] > 0 and e['down'] > 0, 'LIST session end line: %r' % e
            T.diag('%s LIST end line: %r' % (s.kind, e))
        finally:
            g.stop()
    return fn


def case_download(s):
    def fn():
        g = pt_gate(s)
        try:
            for mode, extra in MODES:
                mark = g.log_mark()
                out = L('%s.%s' % (s.kind, mode))
                err = curl_v(SSL + extra + creds(s) + [url(g.port, 'big.bin'), '-o', out])
                check_tls_session(err, g, mark)
                check_data_conn(err, g, mark, s, mode)
                got = T.sha256_file(out)
                assert got == BIG_SHA, '%s download sha256 %s != %s (size %d)' % (
                    mode, got, BIG_SHA, os.path.getsize(out))
                os.unlink(out)
                e = wait_end(g, mark)
                assert e['ctrl'] > 0 and e['down'] >= FILE_MIB * MiB, \
                    '%s end line counts %d bytes down for a %d MiB TLS download' % (
                        mode, e['down'], FILE_MIB)
                T.diag('%s %s download end line: %r' % (s.kind, mode, e))
        finally:
            g.stop()
    return fn


def case_upload(s):
    def fn():
        g = pt_gate(s)
        try:
            for mode, extra in MODES:
                mark = g.log_mark()
                name = 'up-%s.bin' % mode.lower()
                err = curl_v(SSL + extra + creds(s) + ['-T', UP_BIG, url(g.port, 'up/' + name)])
                check_tls_session(err, g, mark)
                check_data_conn(err, g, mark, s, mode)
                dest = os.path.join(s.up, name)
                assert os.path.exists(dest), 'no uploaded file %s on %s' % (dest, s.kind)
                got = T.sha256_file(dest)
                assert got == UP_SHA, '%s upload sha256 %s != %s (size %d)' % (
                    mode, got, UP_SHA, os.path.getsize(dest))
                e = wait_end(g, mark)
                assert e['ctrl'] > 0 and e['up'] >= FILE_MIB * MiB, \
                    '%s end line counts %d bytes up for a %d MiB TLS upload' % (
                        mode, e['up'], FILE_MIB)
                T.diag('%s %s upload end line: %r' % (s.kind, mode, e))
        finally:
            g.stop()
    return fn


def with_logs(fn, server):
    """Add the tail of the server's logs to a failure."""
    def wrapped():
        try:
            fn()
        except AssertionError as e:
            raise AssertionError('%s\n--- %s logs, last lines:\n%s' % (
                e, server.kind, '\n'.join(server.log().splitlines()[-30:]))) from None
    return wrapped


# --------------------------------------------------------------------------
# fixture

SERVERS = (
    ('ProFTPD', 'MasqueradeAddress + PassivePorts',
     ['usr/sbin/proftpd', 'usr/lib/proftpd/mod_tls.so']),
    ('Pure-FTPd', 'pure-ftpd -P -p', ['usr/sbin/pure-ftpd', 'usr/bin/pure-pw']),
)
CASES = (
    ('direct to the server (no proxy): curl --ssl-reqd LIST and download', case_direct, 60),
    ('passthrough: curl --ssl-reqd -k LIST', case_list, 40),
    ('passthrough: %d MiB download, PASV trusting the 227 and EPSV, sha256' % FILE_MIB,
     case_download, 90),
    ('passthrough: %d MiB upload, PASV trusting the 227 and EPSV, sha256' % FILE_MIB,
     case_upload, 90),
)

PKGROOT, WHY = None, why_not_here()
if not WHY:
    PKGROOT, WHY = fetch_servers()
LOCAL = T.tmpdir('pt-srv-local-')
if not WHY:
    try:
        SRC = T.tmpdir('pt-srv-src-')
        os.chmod(SRC, 0o755)
        BIG = os.path.join(SRC, 'big.bin')
        BIG_SHA = T.make_random_file(BIG, FILE_MIB)
        os.chmod(BIG, 0o644)
        UP_BIG = os.path.join(LOCAL, 'up.src')
        UP_SHA = T.make_random_file(UP_BIG, FILE_MIB)
        CERTDIR = T.tmpdir('pt-srv-cert-')
        os.chmod(CERTDIR, 0o755)
        CERT, KEY, BUNDLE = make_self_signed(CERTDIR)
    except Exception as e:  # noqa
        t.bail('setup failed: %s' % one_line(e, 3000))


def L(name):
    return os.path.join(LOCAL, name)


def failing(msg):
    def fn():
        raise AssertionError(msg)
    return fn


try:
    for sname, how, files in SERVERS:
        why = WHY or missing_libs([os.path.join(PKGROOT, f) for f in files])
        server, start_err = None, None
        if why:
            T.diag('%s cases skipped: %s' % (sname, why))
        else:
            try:
                rng = T.port_range(20)
                if sname == 'ProFTPD':
                    server = ProFTPD(PKGROOT, CERT, KEY, rng)
                else:
                    server = PureFTPd(PKGROOT, BUNDLE, rng)
                server.put(BIG)
                T.diag('%s on %s, passive ports %d-%d announced as %s' % (
                    sname, server.addr(), rng[0], rng[1], PROXY_IP))
            except Exception as e:  # noqa
                start_err = '%s did not start: %s' % (sname, str(e)[-3000:])
        for cname, mk, tmo in CASES:
            name = '%s (%s): %s' % (sname, how, cname)
            if why:
                t.skip(name, why)
            elif server is None:
                t.case(name, failing(start_err), timeout=5)
            else:
                t.case(name, with_logs(mk(server), server), timeout=tmo)
        if server is not None:
            server.stop()
finally:
    _cleanup()
t.done()
