#!/usr/bin/python3
"""Brute-force protection: max_login_failures 530s from the backend within
login_failure_window seconds from one client address ban it for ban_time
seconds.  The ban is logged once, new connections from it are closed at
accept without a greeting and counted, it is listed in /metrics
(ftpgate_ban_seconds_remaining), a 230 clears the count, the ban survives
a reload and ends after ban_time.  pyftpdlib backend, ftplib clients from
several loopback addresses.  Loopback only.  TAP output."""

import ftplib
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.Tap()
if not os.access(T.FTPGATE, os.X_OK):
    t.bail('ftpgate binary not found: %s' % T.FTPGATE)

ROOT = T.root_with('x.txt')
SRV = T.PyftpdServer(ROOT)
GP = T.port_range(100)


def gate(**kw):
    site = dict(max_login_failures=3, login_failure_window=60)
    site.update(kw)
    c = T.gate_config(SRV, passive_ports=GP, **site)
    c['global']['metrics_listen'] = '127.0.0.1:%d' % T.free_port()
    return T.Ftpgate(c)


def site_metric(g, name):
    return int(re.search(r'^%s\{site="test"\} (\d+)$' % name, T.gate_metrics(g), re.M).group(1))


def ban_listed(g, addr):
    return re.search(r'^ftpgate_ban_seconds_remaining\{site="test",address="%s"\} \d+$'
                     % re.escape(addr), T.gate_metrics(g), re.M) is not None


def login(port, source, passwd):
    """One session: log in; True on 230, False on 530."""
    f = T.RecordingFTP()
    f.connect('127.0.0.1', port, timeout=20, source_address=(source, 0))
    try:
        f.login('u', passwd)
        return True
    except ftplib.error_perm as e:
        assert str(e).startswith('530'), e
        return False
    finally:
        f.close()


def refused(port, source):
    with T.RawCtl('127.0.0.1', port, source=source) as c:
        data, how = c.until_closed(10)
    return data == b''


def test_ban_and_release():
    with gate(ban_time=4) as g:
        for _ in range(3):
            assert not login(g.port, '127.0.0.2', 'wrong')
        assert g.wait_log(r'site test: banned 127\.0\.0\.2 for 4 s: 3 failed logins within 60 s'), \
            g.log()
        assert refused(g.port, '127.0.0.2')
        assert ban_listed(g, '127.0.0.2')
        assert site_metric(g, 'ftpgate_bans_total') == 1
        assert site_metric(g, 'ftpgate_banned_refused_total') >= 1
        assert login(g.port, '127.0.0.1', 'p')          # others are not affected
        deadline = time.monotonic() + 20
        while refused(g.port, '127.0.0.2'):
            assert time.monotonic() < deadline, 'ban never ended'
            time.sleep(0.3)
        assert login(g.port, '127.0.0.2', 'p')
        assert not ban_listed(g, '127.0.0.2')
        assert len(re.findall(r'banned 127\.0\.0\.2', g.log())) == 1, g.log()


def test_success_clears():
    with gate(ban_time=60) as g:
        for pw in ('wrong', 'wrong', 'p', 'wrong', 'wrong'):
            assert login(g.port, '127.0.0.3', pw) == (pw == 'p')
        assert login(g.port, '127.0.0.3', 'p')
        assert 'banned' not in g.log(), g.log()
        assert site_metric(g, 'ftpgate_bans_total') == 0


def test_one_session_many_guesses():
    with gate(ban_time=60) as g:
        with T.RawCtl('127.0.0.1', g.port, source='127.0.0.4') as c:
            assert c.reply().startswith(b'220')
            for i in range(3):
                assert c.cmd('USER u').startswith(b'331')
                r = c.cmd('PASS guess%d' % i)
                assert r.startswith(b'530'), r
            data, how = c.until_closed(10)   # closed after the third 530
        assert g.wait_log(r'banned 127\.0\.0\.4 for 60 s'), g.log()
        assert refused(g.port, '127.0.0.4')


def test_survives_reload():
    with gate(ban_time=120) as g:
        for _ in range(3):
            login(g.port, '127.0.0.5', 'wrong')
        assert g.wait_log(r'banned 127\.0\.0\.5'), g.log()
        with open(g.conf, 'w') as f:
            f.write(g.text.replace('login_failure_window = 60', 'login_failure_window = 30'))
        mark = g.log_mark()
        g.proc.send_signal(signal.SIGHUP)
        assert g.wait_log(r'reloaded', mark), g.log_since(mark)
        assert refused(g.port, '127.0.0.5')
        assert ban_listed(g, '127.0.0.5')
        assert site_metric(g, 'ftpgate_bans_total') == 1


def test_config_errors():
    cases = [
        ('max_login_failures = -1', r':4: max_login_failures: "-1" is not a number'),
        ('login_failure_window = 0', r':4: login_failure_window: "0" is not a number of seconds'),
        ('ban_time = forever', r':4: ban_time: "forever" is not a number of seconds'),
    ]
    T.check_config_errors(cases, '[site:x]\nlisten = 127.0.0.1:2100\nbackend = 127.0.0.1:21\n')


t.case('three 530s ban an address: logged once, refused at accept, in /metrics, released '
       'after ban_time', test_ban_and_release)
t.case('a 230 clears the failure count', test_success_clears)
t.case('three wrong PASS in one session: banned, the session closed', test_one_session_many_guesses)
t.case('a ban survives a reload', test_survives_reload)
t.case('ban configuration errors name file, line and key', test_config_errors)
SRV.stop()
t.done()
