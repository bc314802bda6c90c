#!/usr/bin/python3
"""Quick mode: ftpgate -b BACKEND[:PORT] -l [ADDR:]PORT [-a ADDR] [-p LOW-HIGH]
[--tls-cert F --tls-key F] runs one site without an ini file; -t prints the
configuration it stands for, which passes -t itself and works as a file.
pyftpdlib backend, ftplib clients, downloads compared by SHA-256.
Loopback only.  TAP output."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.start_tap()

ROOT = T.tmpdir('ftproot-')
os.chmod(ROOT, 0o755)
SHA = T.make_random_file(os.path.join(ROOT, 'big.bin'), mib=8)
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)
CERTDIR = T.tmpdir('quickcert-')
CERT, KEY = T.make_self_signed(CERTDIR)


def quick_args(port, tls=False, **extra):
    a = ['-b', SRV.addr(), '-l', '127.0.0.1:%d' % port, '-p', '%d-%d' % GP]
    if tls:
        a += ['--tls-cert', CERT, '--tls-key', KEY]
    for k, v in extra.items():
        a += [k, v]
    return a


def printed_config(args):
    """`ftpgate -t ARGS`: exit 0; the configuration it printed (stdout)."""
    r = T.run_ftpgate(['-t'] + args)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def check_download(port, cls=T.RecordingFTP, tls=False):
    if tls:
        f = cls(context=T.tls_client_context())
        f.connect('127.0.0.1', port, timeout=20)
        f.login('u', 'p')
        assert f.prot_p().startswith('200')
    else:
        f = T.ftp_login(port)
    try:
        f.trust_server_pasv_ipv4_address = True   # use the 227's address as it is
        sha, n = T.sha_retr(f, 'big.bin')
        assert (sha, n) == (SHA, 8 * T.MiB), (n, sha)
    finally:
        f.close()


def test_download():
    port = T.free_port()
    args = quick_args(port)
    with T.Ftpgate(printed_config(args), quick=args) as g:
        check_download(g.port)
        assert re.search(r'main/\d+: start: client 127\.0\.0\.1', g.log()), g.log()


def test_printed_config():
    port = T.free_port()
    text = printed_config(quick_args(port, **{'-a': '127.0.0.1'}))
    want = ['[site:main]', 'listen = 127.0.0.1:%d' % port, 'backend = %s' % SRV.addr(),
            'public_address = 127.0.0.1', 'passive_ports = %d-%d' % GP]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith(';')]
    assert lines == want, text
    assert re.search(r'^; \(command line\): configuration ok \(1 site\)$', text, re.M), text
    # The text as a file passes -t and serves the same download.
    d = T.tmpdir('quickcfg-')
    p = os.path.join(d, 'ftpgate.ini')
    with open(p, 'w') as f:
        f.write(text)
    r = T.run_ftpgate(['-t', '-c', p])
    assert r.returncode == 0 and 'configuration ok (1 site)' in r.stdout, (r.stdout, r.stderr)
    with T.Ftpgate(text) as g:
        check_download(g.port)


def test_port_only():
    # -l PORT listens on every IPv4 address.
    port = T.free_port()
    text = printed_config(['-b', SRV.addr(), '-l', str(port)])
    assert 'listen = 0.0.0.0:%d' % port in text, text


def test_tls():
    # Relative certificate paths become absolute (a daemon runs in /).
    port = T.free_port()
    args = ['-b', SRV.addr(), '-l', '127.0.0.1:%d' % port, '-p', '%d-%d' % GP,
            '--tls-cert', 'cert.pem', '--tls-key', 'key.pem']
    r = subprocess.run([T.FTPGATE, '-t'] + args, cwd=CERTDIR, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    assert 'tls = terminate\ntls_cert = %s\ntls_key = %s\n' % (CERT, KEY) in r.stdout, r.stdout
    with T.Ftpgate(r.stdout, quick=quick_args(port, tls=True)) as g:
        check_download(g.port, T.ReuseFTP_TLS, tls=True)


def test_errors():
    b = ['-b', '127.0.0.1:21']
    cases = [
        (['-l', '2100'], 2, r'^ftpgate: quick mode needs -b BACKEND\[:PORT\]'),
        (b, 2, r'^ftpgate: quick mode needs -l \[ADDR:\]PORT'),
        (['-b', 'a b', '-l', '2100'], 2, r'^ftpgate: -b "a b": want HOST\[:PORT\]'),
        (['-b', 'h\n[global]', '-l', '2100'], 2, r'^ftpgate: -b "h\n\[global\]": want'),
        (['-b', '127.0.0.1:70000', '-l', '2100'], 1,
         r'^ftpgate: -b "127\.0\.0\.1:70000": backend: bad port "70000"'),
        (['-b', 'no-such-host.invalid', '-l', '2100'], 1,
         r'^ftpgate: -b "no-such-host\.invalid": backend: '),
        (b + ['-l', 'x:21'], 1, r'^ftpgate: -l "x:21": listen: "x" is not a numeric'),
        (b + ['-l', '21 ;x'], 2, r'^ftpgate: -l "21 ;x": want \[ADDR:\]PORT'),
        (b + ['-l', '99999'], 1, r'^ftpgate: -l "99999": listen: '),
        (b + ['-l', '2100', '-a', '1.2.3'], 1, r'^ftpgate: -a "1\.2\.3": public_address: '),
        (b + ['-l', '2100', '-a', '::1'], 2, r'^ftpgate: -a "::1": want an IPv4 address'),
        (b + ['-l', '2100', '-p', '100-200'], 1,
         r'^ftpgate: -p "100-200": passive_ports: .*1024-65535'),
        (b + ['-l', '2100', '-p', '5000-'], 1, r'^ftpgate: -p "5000-": passive_ports: '),
        (b + ['-l', '2100', '--tls-cert', CERT], 2,
         r'^ftpgate: --tls-cert and --tls-key go together'),
        (b + ['-l', '2100', '--tls-cert', '/nonexistent.pem', '--tls-key', KEY], 1,
         r'^ftpgate: --tls-cert "/nonexistent\.pem": tls_cert: .*No such file'),
        (b + ['-l', '2100', '--tls-cert', CERT, '--tls-key', CERT], 1,
         r'^ftpgate: --tls-key "%s": tls_key: ' % re.escape(CERT)),
        (b + ['-l', '2100', '--tls-cert', 'a ;b', '--tls-key', KEY], 2,
         r'^ftpgate: --tls-cert "a ;b": not a usable file name'),
        (b + ['-l', '2100', '-c', '/etc/ftpgate.ini'], 2,
         r'^ftpgate: -c and quick mode exclude each other'),
    ]
    for args, rc, want in cases:
        r = T.run_ftpgate(['-t'] + args)
        assert r.returncode == rc and re.search(want, r.stderr), (args, r.returncode, r.stderr)
        assert r.stdout == '', (args, r.stdout)


t.case('quick mode proxies a download (SHA-256)', test_download)
t.case('-t prints the configuration; as a file it passes -t and works', test_printed_config)
t.case('-l PORT listens on 0.0.0.0', test_port_only)
t.case('--tls-cert/--tls-key: tls = terminate, absolute paths, FTPS download', test_tls)
t.case('bad quick-mode options: which option, what is wrong', test_errors)
SRV.stop()
t.done()
