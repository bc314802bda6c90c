#!/usr/bin/python3
"""ftpgate configuration handling: -t, -V, -h, bad configs, a good config.

TAP output; see ftptest.py for the environment variables."""

import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftptest as T  # noqa: E402

t = T.start_tap()

WORK = T.tmpdir('cfgtest-')


def base_lines():
    """A valid config; returns a list of lines (line N is index N-1)."""
    return [
        '; ftpgate test config',                  # 1
        '[global]',                                # 2
        'log_level = info',                        # 3
        'max_sessions = 100',                      # 4
        '',                                        # 5
        '[site:test]',                             # 6
        'listen = 127.0.0.1:%d' % T.free_port(),   # 7
        'backend = 127.0.0.1:21',                  # 8
        'passive_ports = 40000-40099',             # 9
        'data_timeout = 60',                       # 10
        'idle_timeout = 900',                      # 11
    ]


SITE_HDR = 6
_n = [0]


def write(lines, name=None):
    _n[0] += 1
    path = os.path.join(WORK, name or 'c%02d.ini' % _n[0])
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def show(r):
    return 'exit=%s\nstdout=%r\nstderr=%r' % (r.returncode, r.stdout, r.stderr)


def check_bad(lines, lineno, key, extra=None):
    """-t on lines must fail with 'FILE:LINE: KEY:' on stderr."""
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'bad config accepted\n' + show(r)
    want = '%s:%d: %s:' % (path, lineno, key)
    assert want in r.stderr, 'expected %r in stderr\n%s' % (want, show(r))
    if extra:
        assert re.search(extra, r.stderr, re.I), 'expected /%s/ in stderr\n%s' % (extra, show(r))


def insert(lines, after, line):
    """Insert line after line number `after`; return (lines, new line no)."""
    out = lines[:after] + [line] + lines[after:]
    return out, after + 1


def replace(lines, key, value):
    """Replace the key's line in the site (or global) section."""
    out = list(lines)
    for i, l in enumerate(out):
        if re.match(r'%s\s*=' % re.escape(key), l):
            out[i] = '%s = %s' % (key, value)
            return out, i + 1
    raise KeyError(key)


# --------------------------------------------------------------------------

def t_example():
    path = os.path.join(T.SRCDIR, 'etc', 'ftpgate.ini')
    assert os.path.exists(path), path
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode == 0, show(r)


def t_base_ok():
    r = T.run_ftpgate(['-t', '-c', write(base_lines())])
    assert r.returncode == 0, show(r)


def t_version():
    r = T.run_ftpgate(['-V'])
    assert r.returncode == 0, show(r)
    assert re.search(r'\b\d+\.\d+(\.\d+)?\b', r.stdout + r.stderr), show(r)


def t_help():
    r = T.run_ftpgate(['-h'])
    assert r.returncode == 0, show(r)
    out = r.stdout + r.stderr
    assert re.search(r'usage', out, re.I), show(r)
    assert '-c' in out and '-t' in out and '-f' in out, show(r)


def t_bad_option():
    r = T.run_ftpgate(['--no-such-option'])
    assert r.returncode != 0, show(r)


def t_unknown_global_key():
    lines, n = insert(base_lines(), 3, 'bogus_key = 1')
    check_bad(lines, n, 'bogus_key')


def t_unknown_site_key():
    lines = base_lines() + ['frobnicate = yes']
    check_bad(lines, len(lines), 'frobnicate')


def t_unknown_section():
    lines = base_lines() + ['', '[weird]', 'x = 1']
    hdr = len(lines) - 1
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'bad config accepted\n' + show(r)
    # The section header's line, or the first key in it (inih reports keys).
    m = re.search(re.escape(path) + r':(\d+): ([^:\n]*):', r.stderr)
    assert m, 'no FILE:LINE: KEY: in stderr\n' + show(r)
    assert int(m.group(1)) in (hdr, hdr + 1), 'wrong line %s (section at %d)\n%s' % (
        m.group(1), hdr, show(r))
    assert 'weird' in r.stderr, show(r)


def t_unknown_empty_section():
    """An unknown section with no keys is still an unknown section."""
    lines = base_lines() + ['', '[weird]']
    hdr = len(lines)
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'unknown empty section accepted\n' + show(r)
    assert '%s:%d:' % (path, hdr) in r.stderr and 'weird' in r.stderr, show(r)


def bad_value(key, value, extra=None):
    def fn():
        lines, n = replace(base_lines(), key, value)
        check_bad(lines, n, key, extra)
    return fn


def t_missing_backend():
    lines = [l for l in base_lines() if not l.startswith('backend')]
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'config without backend accepted\n' + show(r)
    assert 'backend' in r.stderr, show(r)
    assert path in r.stderr, show(r)
    m = re.search(re.escape(path) + r':(\d+):', r.stderr)
    if m:
        # the section header, or its first key (inih reports keys)
        assert int(m.group(1)) in (SITE_HDR, SITE_HDR + 1), \
            'line %s, want the section line %d\n%s' % (m.group(1), SITE_HDR, show(r))


def t_no_site():
    path = write(base_lines()[:5])
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'config without a site accepted\n' + show(r)
    assert re.search(r'site', r.stderr, re.I), show(r)


def t_missing_file():
    path = os.path.join(WORK, 'does-not-exist.ini')
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, show(r)
    assert path in r.stderr, show(r)
    assert re.search(r'no such file|cannot open|can.t open|not found', r.stderr, re.I), show(r)


def t_start_bad_fails():
    """Not only -t: starting with a bad config fails before serving."""
    lines, n = replace(base_lines(), 'passive_ports', '5000-4000')
    path = write(lines)
    r = T.run_ftpgate(['-f', '-c', path], timeout=10)
    assert r.returncode != 0, show(r)
    assert '%s:%d: passive_ports:' % (path, n) in r.stderr, show(r)


def t_valid_serves():
    root = T.tmpdir('cfgroot-')
    srv = T.PyftpdServer(root)
    try:
        lines = base_lines()
        lines, _ = replace(lines, 'backend', srv.addr())
        lines, _ = replace(lines, 'passive_ports', '%d-%d' % T.port_range(200))
        g = T.Ftpgate('\n'.join(lines) + '\n')
        try:
            with socket.create_connection(('127.0.0.1', g.port), timeout=10) as s:
                f = s.makefile('rb')
                line = f.readline().decode('utf-8', 'replace')
                assert line.startswith('220'), repr(line)
                assert srv.banner in line, 'banner %r not relayed: %r' % (srv.banner, line)
                s.sendall(b'QUIT\r\n')
                line = f.readline().decode('utf-8', 'replace')
                assert line.startswith('221'), repr(line)
            assert g.alive(), 'ftpgate died\n' + g.log()
        finally:
            g.stop()
    finally:
        srv.stop()


t.case('-t accepts the shipped etc/ftpgate.ini', t_example, 15)
t.case('-t accepts the base test config', t_base_ok, 15)
t.case('-V prints a version', t_version, 15)
t.case('-h prints usage, exit 0', t_help, 15)
t.case('unknown option fails', t_bad_option, 15)
t.case('unknown key in [global]', t_unknown_global_key, 15)
t.case('unknown key in site', t_unknown_site_key, 15)
t.case('unknown section', t_unknown_section, 15)
t.case('unknown section without keys', t_unknown_empty_section, 15)
t.case('listen = notanaddress', bad_value('listen', 'notanaddress'), 15)
t.case('listen = 127.0.0.1:99999', bad_value('listen', '127.0.0.1:99999'), 15)
t.case('passive_ports = 5000-4000', bad_value('passive_ports', '5000-4000'), 15)
t.case('passive_ports = 0-10', bad_value('passive_ports', '0-10'), 15)
t.case('passive_ports = abc', bad_value('passive_ports', 'abc'), 15)
t.case('data_timeout = -1', bad_value('data_timeout', '-1'), 15)
t.case('idle_timeout = 10x', bad_value('idle_timeout', '10x'), 15)
t.case('log_level = loud', bad_value('log_level', 'loud'), 15)
t.case('max_sessions = -5', bad_value('max_sessions', '-5'), 15)
t.case('public_address = not-an-ip',
       lambda: check_bad(*insert(base_lines(), 8, 'public_address = not-an-ip'),
                         'public_address'), 15)
t.case('missing backend', t_missing_backend, 15)
t.case('no site section', t_no_site, 15)
t.case('nonexistent config file', t_missing_file, 15)
t.case('-f with a bad config fails at start-up', t_start_bad_fails, 15)
t.case('valid config starts and relays the greeting', t_valid_serves, 30)
t.done()
