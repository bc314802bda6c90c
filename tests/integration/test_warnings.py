#!/usr/bin/python3
"""Configuration warnings, one line each, at -t (stderr, exit status still
0) and at start-up (the log): a private address announced to clients from
public ones, a wildcard listener without public_address on a host whose
addresses are all private, fewer passive ports than max_sessions could
need, a certificate that expires within 30 days, a passthrough range in the
kernel's ephemeral ports.  None for a clean configuration.  pyftpdlib
backend where a proxy runs.  Loopback only.  TAP output."""

import ipaddress
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.start_tap()

SRV = T.PyftpdServer(T.root_with('x.txt'))
GP = T.port_range(100)
C90, K90 = T.make_self_signed(T.tmpdir('warncert-'), days=90)
C10, K10 = T.make_self_signed(T.tmpdir('warncert-'), days=10)


def check(body):
    """`ftpgate -t` on a one-site file with body: (stderr, path); exit 0."""
    p = os.path.join(T.tmpdir('warn-'), 'f.ini')
    with open(p, 'w') as f:
        f.write('[site:s]\nbackend = %s\n%s\n' % (SRV.addr(), body))
    r = T.run_ftpgate(['-t', '-c', p])
    assert r.returncode == 0 and 'configuration ok' in r.stdout, (body, r.returncode, r.stderr)
    return r.stderr, p


def warnings_of(text):
    return [ln for ln in text.splitlines() if ': warning: ' in ln]


def log_warnings(g):
    """The configuration's warnings in the log of a running gate."""
    return re.findall(r'warn: %s:\d+: .*' % re.escape(g.conf), g.log())


def clean_site(**kw):
    return T.gate_config(SRV, passive_ports=GP, **kw)


def test_clean():
    body = ('listen = 127.0.0.1:%d\npassive_ports = %d-%d\ntls = terminate\ntls_cert = %s\n'
            'tls_key = %s\nmax_sessions = 50\n' % (T.free_port(), GP[0], GP[1], C90, K90))
    err, _ = check(body)
    assert warnings_of(err) == [], err
    with T.Ftpgate(clean_site(tls='terminate', tls_cert=C90, tls_key=K90, max_sessions=50)) as g:
        assert g.wait_log(r'started')
        assert log_warnings(g) == [], g.log()


def test_private_address():
    err, p = check('listen = 127.0.0.1:2100\npublic_address = 10.0.0.5\n'
                   'public_address_for = 198.51.100.0/24 192.168.1.1\n')
    w = warnings_of(err)
    assert len(w) == 2, err
    assert w[0].startswith('%s:4: public_address: warning: 10.0.0.5 is a private address: '
                           'clients from public addresses' % p), w
    assert w[1].startswith('%s:5: public_address_for: warning: clients in 198.51.100.0/24 '
                           '(not a private network) are told the private address 192.168.1.1'
                           % p), w
    err, p = check('listen = 192.168.77.1:21\n')
    assert warnings_of(err) == ['%s:3: listen: warning: 192.168.77.1:21 is a private address and '
                                'public_address is unset: clients from public addresses '
                                '(through NAT) are told it in 227 replies; set public_address'
                                % p], err
    # Only private clients allowed: nothing to warn about.
    err, _ = check('listen = 192.168.77.1:21\nallow = 192.168.0.0/16, 127.0.0.1\n')
    assert warnings_of(err) == [], err
    # At start-up, in the log; the proxy runs.
    with T.Ftpgate(clean_site(public_address='100.64.1.1')) as g:
        assert g.wait_log(r'started')
        w = log_warnings(g)
        assert len(w) == 1 and re.search(r':\d+: public_address: 100\.64\.1\.1 is a private '
                                         r'address', w[0]), g.log()
        assert T.listing_of(g.port) == ['x.txt']


def host_all_private():
    """Every IPv4 address of the host but loopback is private (ip -j addr)."""
    out = subprocess.run(['ip', '-j', '-4', 'addr'], capture_output=True, text=True,
                         timeout=10).stdout
    addrs = [ipaddress.ip_address(a['local']) for i in json.loads(out)
             for a in i.get('addr_info', [])]
    addrs = [a for a in addrs if not a.is_loopback]
    nets = [ipaddress.ip_network(n) for n in ('10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16',
                                              '100.64.0.0/10', '169.254.0.0/16')]
    return bool(addrs) and all(any(a in n for n in nets) for a in addrs)


def test_nat():
    err, p = check('listen = 0.0.0.0:21\n')
    want = host_all_private()
    T.diag('this host: %s' % ('all addresses private' if want else 'not all private'))
    w = warnings_of(err)
    if want:
        assert len(w) == 1 and 'listen: warning: 0.0.0.0:21 with public_address unset, and ' \
            'every address of this host is private' in w[0], err
    else:
        assert w == [], err
    err, _ = check('listen = 0.0.0.0:21\npublic_address = 203.0.113.5\n')
    assert warnings_of(err) == [], err


def test_passive_ports():
    err, p = check('listen = 127.0.0.1:2100\npassive_ports = 40000-40009\nmax_sessions = 11\n')
    assert warnings_of(err) == ['%s:4: passive_ports: warning: 40000-40009 has 10 ports; '
                                'max_sessions = 11 could need 11 at once (one per session in a '
                                'transfer): sessions beyond get 425' % p], err
    p2 = os.path.join(T.tmpdir('warn-'), 'g.ini')
    with open(p2, 'w') as f:
        f.write('[global]\nmax_sessions = 300\n[site:s]\nbackend = %s\nlisten = 127.0.0.1:2100\n'
                'passive_ports = 40000-40199\nbackend_data_mode = active\n' % SRV.addr())
    r = T.run_ftpgate(['-t', '-c', p2])
    assert r.returncode == 0 and warnings_of(r.stderr) == [
        '%s:6: passive_ports: warning: 40000-40199 has 200 ports; [global] max_sessions = 300 '
        'could need 600 at once (one per session in a transfer, two with backend_data_mode '
        'active or client): sessions beyond get 425' % p2], r.stderr
    err, _ = check('listen = 127.0.0.1:2100\npassive_ports = 40000-40009\nmax_sessions = 10\n')
    assert warnings_of(err) == [], err


def test_certificate():
    err, p = check('listen = 127.0.0.1:2100\ntls = implicit\ntls_cert = %s\ntls_key = %s\n'
                   % (C10, K10))
    w = warnings_of(err)
    assert len(w) == 1 and re.match(r'%s:5: tls_cert: warning: certificate "%s" of \[site:s\] '
                                    r'expires in (9|10) days \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\)$'
                                    % (re.escape(p), re.escape(C10)), w[0]), err
    with T.Ftpgate(clean_site(tls='terminate', tls_cert=C10, tls_key=K10)) as g:
        assert g.wait_log(r'started')
        w = log_warnings(g)
        assert len(w) == 1 and 'tls_cert: certificate "%s"' % C10 in w[0], g.log()


def test_ephemeral():
    lo, hi = T._ephemeral_range()
    with open('/proc/sys/net/ipv4/ip_local_reserved_ports') as f:
        reserved = f.read().strip()
    if reserved:
        T.diag('ip_local_reserved_ports = %s: the range below is chosen outside' % reserved)
    a = lo + 1000
    while reserved and any(int(r.split('-')[0]) <= a + 9 and a <= int(r.split('-')[-1])
                           for r in reserved.split(',')):
        a += 100
    err, p = check('listen = 127.0.0.1:2100\ntls = passthrough\npassive_ports = %d-%d\n'
                   % (a, a + 9))
    assert warnings_of(err) == [
        '%s:5: passive_ports: warning: 10 ports of %d-%d (passthrough) are in the kernel\'s '
        'ephemeral range %d-%d: an outgoing connection can hold one and binding it fails; '
        'reserve them (sysctl net.ipv4.ip_local_reserved_ports=%d-%d)'
        % (p, a, a + 9, lo, hi, a, a + 9)], err
    assert lo > 2000, (lo, hi)
    err, _ = check('listen = 127.0.0.1:2100\ntls = passthrough\npassive_ports = 1100-1109\n')
    assert warnings_of(err) == [], err


t.case('a clean configuration: no warning at -t nor at start-up', test_clean)
t.case('private addresses announced to public clients: -t and start-up', test_private_address)
t.case('a wildcard listener without public_address where the host looks NATed', test_nat)
t.case('passive_ports smaller than max_sessions could need', test_passive_ports)
t.case('a certificate that expires within 30 days: -t and start-up', test_certificate)
t.case('a passthrough range in the kernel\'s ephemeral ports', test_ephemeral)
SRV.stop()
t.done()
