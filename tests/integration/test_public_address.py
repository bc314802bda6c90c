#!/usr/bin/python3
"""Per-network public address: public_address_for = PREFIX ADDRESS, ...
tells clients inside a network the address they can reach in 227 replies
(the most specific prefix wins), everyone else public_address (or the
address they connected to).  Clients from several loopback addresses;
pyftpdlib backend; ftplib transfers through the announced address.
Loopback only.  TAP output."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)

ROOT = T.root_with('x.txt')
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)


def pasv_address(port, source):
    """Log in from source, PASV: the address of the 227 (dotted)."""
    with T.RawCtl('127.0.0.1', port, source=source) as c:
        assert c.reply().startswith(b'220')
        assert c.cmd('USER u').startswith(b'331')
        assert c.cmd('PASS p').startswith(b'230')
        r = c.cmd('PASV')
        m = re.match(rb'227 .*\((\d+),(\d+),(\d+),(\d+),\d+,\d+\)', r)
        assert m, r
        return '.'.join(x.decode() for x in m.groups())


def test_most_specific_wins():
    # The wider network first: order in the list does not matter.
    cfg = T.gate_config(SRV, passive_ports=GP, public_address='203.0.113.10',
                        public_address_for='127.0.0.0/8 198.51.100.1, 127.0.0.2/32 127.0.0.1')
    with T.Ftpgate(cfg) as g:
        assert pasv_address(g.port, '127.0.0.2') == '127.0.0.1'
        assert pasv_address(g.port, '127.0.0.3') == '198.51.100.1'
        # The LAN client really reaches the announced address.
        assert T.listing_of(g.port, source='127.0.0.2') == ['x.txt']


def test_outside_gets_public_address():
    cfg = T.gate_config(SRV, passive_ports=GP, public_address='127.0.0.1',
                        public_address_for='192.0.2.0/24 192.0.2.10, 2001:db8::/32 192.0.2.11')
    with T.Ftpgate(cfg) as g:
        assert pasv_address(g.port, '127.0.0.5') == '127.0.0.1'


def test_without_public_address():
    cfg = T.gate_config(SRV, passive_ports=GP, public_address_for='127.0.0.6/32 198.51.100.6')
    with T.Ftpgate(cfg) as g:
        assert pasv_address(g.port, '127.0.0.6') == '198.51.100.6'
        assert pasv_address(g.port, '127.0.0.7') == '127.0.0.1'   # where it connected to


def test_config_errors():
    cases = [
        ('public_address_for = 192.0.2.0/24', r':4: public_address_for: "192.0.2.0/24": want '
                                               r'PREFIX ADDRESS'),
        ('public_address_for = 192.0.2.0/24 [2001:db8::1]',
         r':4: public_address_for: "\[2001:db8::1\]": an IPv4 address'),
        ('public_address_for = 192.0.2.0/24 192.0.2.1:21',
         r':4: public_address_for: "192.0.2.1:21": an IPv4 address without a port'),
        ('public_address_for = 192.0.2.0/33 192.0.2.1', r':4: public_address_for: '),
    ]
    T.check_config_errors(cases, '[site:x]\nlisten = 127.0.0.1:2100\nbackend = 127.0.0.1:21\n')


t.case('public_address_for: the most specific network wins; the LAN client transfers',
       test_most_specific_wins)
t.case('a client in no listed network gets public_address', test_outside_gets_public_address)
t.case('without public_address: the address the client connected to', test_without_public_address)
t.case('public_address_for configuration errors name file, line and key', test_config_errors)
SRV.stop()
t.done()
