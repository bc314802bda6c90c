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


def listen_port():
    """A free port outside base_lines()' passive_ports (passthrough sites bind
    that whole range, and -t refuses a listen address inside it)."""
    while True:
        p = T.free_port()
        if not 40000 <= p <= 40099:
            return p


def base_lines():
    """A valid config; returns a list of lines (line N is index N-1)."""
    return [
        '; ftpgate test config',                  # 1
        '[global]',                                # 2
        'log_level = info',                        # 3
        'max_sessions = 100',                      # 4
        '',                                        # 5
        '[site:test]',                             # 6
        'listen = 127.0.0.1:%d' % listen_port(),   # 7
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



def check_ok(lines):
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode == 0, 'good config refused\n' + show(r)
    return path


def site_lines(name, listen, ports):
    return ['', '[site:%s]' % name, 'listen = %s' % listen, 'backend = 127.0.0.1:21',
            'passive_ports = %s' % ports]


def listen_of(lines):
    return [l for l in lines if l.startswith('listen')][0].split('=', 1)[1].strip()


def t_inline_comments():
    """'#' and ';' after a space end the value, as the docs say."""
    lines = base_lines()
    lines[2] = 'log_level = info   # chatty'
    lines[5] = '[site:test]  ; the only site'
    lines[6] += ' # primary'
    lines[7] += '\t; the server'
    lines[8] += ' #range'
    lines[9] = 'data_timeout = 60 ; seconds'
    check_ok(lines)


def t_hash_inside_value():
    """A '#' that follows no space is part of the value."""
    lines = base_lines()
    lines[6] += '#primary'
    check_bad(lines, 7, 'listen', r'bad port')


def t_indented_key():
    """An indented line is a key of its own, not a continuation of the
    previous value."""
    lines, n = insert(base_lines(), 8, '  max_sessions = lots')
    check_bad(lines, n, 'max_sessions', r'lots')
    lines, n = insert(base_lines(), 8, '\tmax_sessions = 5')
    check_ok(lines)


def t_continuation_line():
    """A line that would continue a value is refused at its own line."""
    lines, n = insert(base_lines(), 8, '    backup.example.org:21')
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'continuation line accepted\n' + show(r)
    assert '%s:%d:' % (path, n) in r.stderr, show(r)
    assert re.search(r'continu', r.stderr), show(r)


def t_duplicate_key():
    lines, n = insert(base_lines(), 7, 'listen = 127.0.0.1:%d' % T.free_port())
    check_bad(lines, n, 'listen', r'\b7\b')
    lines, n = insert(base_lines(), 3, 'log_level = debug')
    check_bad(lines, n, 'log_level', r'\b3\b')


def t_duplicate_global():
    lines = base_lines() + ['', '[global]', 'max_sessions = 5']
    path = write(lines)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'second [global] accepted\n' + show(r)
    assert '%s:%d:' % (path, len(lines) - 1) in r.stderr, show(r)
    assert re.search(r'\b2\b', r.stderr.split(path, 1)[1]), show(r)


def t_same_listen_two_sites():
    lines = base_lines()
    mine = listen_of(lines)
    port = mine.rsplit(':', 1)[1]
    two = lines + site_lines('two', mine, '40100-40199')
    check_bad(two, len(two) - 2, 'listen', r'site:test')
    two = lines + site_lines('two', '0.0.0.0:' + port, '40100-40199')
    check_bad(two, len(two) - 2, 'listen', r'site:test')
    lines2, n = replace(lines, 'listen', '%s, 127.0.0.1:%s' % (mine, port))
    check_bad(lines2, n, 'listen', r'twice')
    lines2, n = insert(lines, 4, 'metrics_listen = ' + mine)
    path = write(lines2)
    r = T.run_ftpgate(['-t', '-c', path])
    assert r.returncode != 0, 'metrics_listen on a site address accepted\n' + show(r)
    assert 'metrics_listen' in r.stderr and 'site:test' in r.stderr, show(r)
    # other addresses, or another family, on the same port are fine
    check_ok(lines + site_lines('two', '127.0.0.2:' + port, '40100-40199'))
    if T.ipv6_loopback_ok():
        check_ok(lines + site_lines('two', '[::1]:' + port, '40100-40199'))


def t_passthrough_refused_keys():
    """Keys a passthrough site cannot honour are refused, wherever they stand."""
    for key, value in (('tls_cert', '/etc/ssl/x.pem'), ('tls_key', '/etc/ssl/x.key'),
                       ('backend_tls', 'on'), ('tls_min_version', '1.3'),
                       ('tls_ciphers', 'HIGH'), ('tls_require_session_reuse', 'yes')):
        for mode in ('passthrough', 'passthrough_implicit'):
            lines = base_lines() + ['tls = ' + mode, '%s = %s' % (key, value)]
            check_bad(lines, len(lines), key, r'passthrough')
        lines = base_lines() + ['%s = %s' % (key, value), 'tls = passthrough']
        check_bad(lines, len(lines) - 1, key, r'passthrough')


def t_passthrough_allowed_keys():
    """require_tls and require_data_tls stay allowed with passthrough."""
    check_ok(base_lines() + ['tls = passthrough', 'require_tls = yes',
                             'require_data_tls = yes', 'backend_tls = off'])


def t_missing_cert_file():
    cert, key = T.make_self_signed(T.tmpdir('cfgcert-'))
    gone = os.path.join(WORK, 'no-such-cert.pem')
    lines = base_lines() + ['tls = terminate', 'tls_cert = ' + gone, 'tls_key = ' + key]
    check_bad(lines, len(lines) - 1, 'tls_cert', r'No such file')
    r = T.run_ftpgate(['-t', '-c', write(lines)])
    assert gone in r.stderr and 'site:test' in r.stderr, show(r)
    lines = base_lines() + ['tls = terminate', 'tls_cert = ' + cert, 'tls_key = ' + gone]
    check_bad(lines, len(lines), 'tls_key', r'No such file')
    r = T.run_ftpgate(['-t', '-c', write(lines)])
    assert gone in r.stderr and 'site:test' in r.stderr, show(r)


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
for w in ('0', '257', 'many', '-1', '2x'):
    t.case('workers = %s' % w,
           lambda w=w: check_bad(*insert(base_lines(), 4, 'workers = %s' % w), 'workers',
                                 r'is not auto or a number in 1-256'), 15)
t.case('workers = auto and workers = 3 accepted',
       lambda: (check_ok(insert(base_lines(), 4, 'workers = auto')[0]),
                check_ok(insert(base_lines(), 4, 'workers = 3')[0])), 15)
t.case('ktls = maybe',
       lambda: check_bad(*insert(base_lines(), 4, 'ktls = maybe'), 'ktls',
                         r'"maybe" is not yes or no'), 15)
t.case('ktls = no and ktls = yes accepted',
       lambda: (check_ok(insert(base_lines(), 4, 'ktls = no')[0]),
                check_ok(insert(base_lines(), 4, 'ktls = yes')[0])), 15)
t.case('public_address = not-an-ip',
       lambda: check_bad(*insert(base_lines(), 8, 'public_address = not-an-ip'),
                         'public_address'), 15)
t.case('missing backend', t_missing_backend, 15)
t.case('no site section', t_no_site, 15)
t.case('nonexistent config file', t_missing_file, 15)
t.case('-f with a bad config fails at start-up', t_start_bad_fails, 15)
t.case('valid config starts and relays the greeting', t_valid_serves, 30)
t.case('inline # and ; comments after values', t_inline_comments, 15)
t.case('# without a space before it is part of the value', t_hash_inside_value, 15)
t.case('an indented line is a key, not a continuation', t_indented_key, 15)
t.case('a continuation line is refused at its line', t_continuation_line, 15)
t.case('the same key twice in a section: both lines named', t_duplicate_key, 15)
t.case('a second [global] section is refused', t_duplicate_global, 15)
t.case('two sites (or metrics_listen) on one listen address: -t refuses',
       t_same_listen_two_sites, 15)
t.case('passthrough with tls_cert, tls_key, backend_tls, ...: refused with the reason',
       t_passthrough_refused_keys, 30)
t.case('passthrough with require_tls, require_data_tls: accepted',
       t_passthrough_allowed_keys, 15)
t.case('missing tls_cert / tls_key file: No such file, path and site', t_missing_cert_file, 30)
t.done()
