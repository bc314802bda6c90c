#!/usr/bin/python3
"""Kernel TLS on data connections (issue 17.4), run inside a VM whose kernel
has the tls module (tests/vm/vm-run.sh; test_ktls.sh starts it): with
[global] ktls = yes (the default) the kernel encrypts what ftpgate sends on
its TLS data connections and, with TLS 1.2, decrypts what it receives;
contents compared by sha256, the kernel's own counters
(/proc/net/tls_stat) show the offload happened, and ktls = no leaves them
alone.  Real peers: curl, Python's ftplib (whose unwrap() needs the
close_notify that OpenSSL sends through the kernel), pyftpdlib plain and
TLS backends.  TAP output."""

import os
import re
import shutil
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

MiB = T.MiB
SIZE_MIB = 3

t = T.start_tap(('curl', T.CURL), ('openssl CLI', T.OPENSSL))


def tls_stat():
    """The kernel's kTLS counters: {'TlsTxSw': n, ...}."""
    out = {}
    try:
        with open('/proc/net/tls_stat') as f:
            for line in f:
                k, _, v = line.partition(' ')
                out[k.strip()] = int(v)
    except OSError as e:
        raise AssertionError('no /proc/net/tls_stat (is the tls module loaded?): %s' % e)
    return out


def ulp_available():
    with open('/proc/sys/net/ipv4/tcp_available_ulp') as f:
        return 'tls' in f.read().split()


if not ulp_available():
    t.bail('this kernel offers no tls ULP: run me with tests/vm/vm-run.sh')

try:
    C = T.make_tls_certs(T.tmpdir('ktls-certs-'))
    ROOT = T.tmpdir('ktls-root-')
    os.chmod(ROOT, 0o755)
    os.makedirs(os.path.join(ROOT, 'up'))
    LOCAL = T.tmpdir('ktls-local-')
    BIG = os.path.join(ROOT, 'big.bin')
    BIG_SHA = T.make_random_file(BIG, SIZE_MIB)
    os.chmod(BIG, 0o644)
    SRV = T.PyftpdServer(ROOT)
    TLS_WHY = T.pyftpdlib_tls_available()
    TSRV = T.PyftpdTLSServer(ROOT, C['cert'], C['key']) if not TLS_WHY else None
except Exception as e:  # noqa
    t.bail('setup failed: %s' % str(e).replace('\n', ' | ')[:2000])

CTX = T.tls_client_context(C['ca'])
FTPS = ['--ssl-reqd', '--cacert', C['ca']]


def gate(backend, ktls=None, **site):
    site.update(tls='terminate', tls_cert=C['chain'], tls_key=C['key'])
    g = {} if ktls is None else {'ktls': ktls}
    return T.Ftpgate(T.gate_config(backend, global_keys=g, **site), timeout=60)


def curl_down(g, extra=()):
    out = os.path.join(LOCAL, 'down-%s' % os.urandom(3).hex())
    T.curl(list(FTPS) + list(extra) +
           ['-o', out, 'ftp://u:p@127.0.0.1:%d/big.bin' % g.port], timeout=300)
    got = T.sha256_file(out)
    os.unlink(out)
    assert got == BIG_SHA, 'curl download: sha256 mismatch'


def curl_up(g, extra=()):
    src = os.path.join(LOCAL, 'up-%s' % os.urandom(3).hex())
    sha = T.make_random_file(src, SIZE_MIB)
    name = os.path.basename(src)
    T.curl(list(FTPS) + list(extra) +
           ['-T', src, 'ftp://u:p@127.0.0.1:%d/up/%s' % (g.port, name)], timeout=300)
    os.unlink(src)
    dest = os.path.join(ROOT, 'up', name)
    got = T.sha256_file(dest)
    os.unlink(dest)
    assert got == sha, 'curl upload: sha256 mismatch'


def ftplib_down(g):
    """Python's ftplib unwraps the data connection: it needs ftpgate's
    close_notify, which OpenSSL sends as a control record through kTLS."""
    f = T.ReuseFTP_TLS(context=CTX)
    f.connect('127.0.0.1', g.port, timeout=120)
    f.login('u', 'p')
    f.prot_p()
    got, _ = T.sha_retr(f, 'big.bin')
    f.quit()
    assert got == BIG_SHA, 'ftplib download: sha256 mismatch'


def delta(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


def c01_offload_default():
    """tls=terminate, plain backend, ktls not set (yes): the client side's
    sending is offloaded."""
    with gate(SRV) as g:
        m = g.log_mark()
        assert g.wait_log(r'ktls: TLS data connections encrypt in the kernel'), \
            'no startup line about kTLS:\n' + g.log()[-2000:]
        b = tls_stat()
        curl_down(g)
        ftplib_down(g)
        curl_up(g)
        a = tls_stat()
        log = g.log_since(m)
        T.diag('tls_stat delta: TlsTxSw %d, TlsRxSw %d' % (delta(b, a, 'TlsTxSw'),
                                                          delta(b, a, 'TlsRxSw')))
        n = len(re.findall(r'kTLS on the client side \(the kernel encrypts', log))
        assert n >= 3, 'want 3 data connections with kTLS sending, log has %d:\n%s' % (
            n, log[-3000:])
        assert delta(b, a, 'TlsTxSw') >= 3, 'kernel counted %d kTLS senders' % delta(
            b, a, 'TlsTxSw')
        assert 'kTLS on the backend' not in log, 'a plain backend side cannot be kTLS'


def c02_both_legs():
    """TLS on both legs (pyftpdlib TLS backend): the backend side's sending
    (uploads) is offloaded too."""
    if not TSRV:
        raise AssertionError('pyftpdlib TLS backend missing: %s' % TLS_WHY)
    with gate(TSRV, backend_tls='on', backend_ca=C['ca']) as g:
        m = g.log_mark()
        b = tls_stat()
        curl_down(g)
        curl_up(g)
        a = tls_stat()
        log = g.log_since(m)
        assert re.search(r'kTLS on the backend side \(the kernel encrypts', log), \
            'no kTLS on the backend side:\n' + log[-3000:]
        assert re.search(r'kTLS on the client side \(the kernel encrypts', log), \
            'no kTLS on the client side:\n' + log[-3000:]
        assert delta(b, a, 'TlsTxSw') >= 4, 'kernel counted %d kTLS senders' % delta(
            b, a, 'TlsTxSw')


def c03_tls12():
    """A TLS 1.2 client: the kernel encrypts, OpenSSL still decrypts (its
    kTLS receiving breaks on Linux 6.x: uploads failed with "wrong version
    number" when ftpgate let OpenSSL offer it)."""
    with gate(SRV) as g:
        m = g.log_mark()
        b = tls_stat()
        curl_up(g, ['--tls-max', '1.2'])
        curl_down(g, ['--tls-max', '1.2'])
        a = tls_stat()
        log = g.log_since(m)
        assert 'TLSv1.2' in log, 'the client did not speak TLS 1.2:\n' + log[-3000:]
        n = len(re.findall(r'kTLS on the client side \(the kernel encrypts', log))
        assert n == 2, 'want kTLS sending on both data connections, log has %d:\n%s' % (
            n, log[-3000:])
        assert delta(b, a, 'TlsTxSw') >= 2 and delta(b, a, 'TlsRxSw') == 0, \
            'kernel counters: %s -> %s' % (b, a)


def c04_off():
    """ktls = no: the same transfers, OpenSSL's own record layer, the
    kernel's counters untouched."""
    with gate(SRV, ktls='no') as g:
        m = g.log_mark()
        b = tls_stat()
        curl_down(g)
        ftplib_down(g)
        curl_up(g)
        a = tls_stat()
        log = g.log()
        assert 'kTLS on the' not in log and 'ktls:' not in log, log[-3000:]
        assert delta(b, a, 'TlsTxSw') == 0 and delta(b, a, 'TlsRxSw') == 0, \
            'kTLS used with ktls = no: %s -> %s' % (b, a)
        assert g.log_since(m) is not None


def c05_offload_splices():
    """An offload download (plain backend, TLS client whose sending the
    kernel does) is spliced into the TLS socket: the bytes never pass
    through ftpgate's user space (strace: what splice(2) moved)."""
    strace = shutil.which('strace')
    if not strace:
        raise AssertionError('strace not installed (tools/install-deps.sh installs it)')
    out = os.path.join(T.tmpdir('ktls-strace-'), 'trace')
    cfg = T.gate_config(SRV.addr(), tls='terminate', tls_cert=C['chain'], tls_key=C['key'],
                        global_keys={'workers': 1})
    g = T.Ftpgate(cfg, wrapper=[strace, '-f', '-e', 'trace=splice', '-o', out], wait=False)
    try:
        deadline = time.monotonic() + 60
        while True:   # strace's child listens, not strace
            try:
                socket.create_connection(('127.0.0.1', g.port), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and g.alive(), 'not started:\n' + g.log()
                time.sleep(0.2)
        curl_down(g)
        for pid in T._descendants(g.proc.pid):
            os.kill(pid, signal.SIGTERM)
        g.proc.wait(60)
    finally:
        g.stop()
    moved = sum(int(x) for x in re.findall(r'splice\(.*\) = (\d+)', T.read_text(out)))
    T.diag('spliced: %d bytes for a %d MiB download' % (moved, SIZE_MIB))
    assert moved >= 2 * SIZE_MIB * MiB, \
        'want the download spliced in and out (%d bytes), splice moved %d' % (
            2 * SIZE_MIB * MiB, moved)
    assert 'kTLS on the client side' in g.log(), g.log()[-3000:]


t.case('ktls default, TLS offload: curl and ftplib download, curl upload; kernel sends',
       c01_offload_default, 600)
t.case('ktls, TLS on both legs (pyftpdlib TLS): the backend side sends through the kernel',
       c02_both_legs, 600)
t.case('ktls, a TLS 1.2 client: upload and download, the kernel encrypts, OpenSSL decrypts',
       c03_tls12, 600)
t.case('ktls = no: the same transfers without the kernel', c04_off, 600)
t.case('ktls, offload download: spliced from the plain backend into the kernel\'s TLS',
       c05_offload_splices, 600)
t.done()
