#!/usr/bin/python3
"""Transfers through the installed Debian package (tools/package-test.sh runs
this as root inside a network namespace of its own, lo up, nothing else
there; argv: the unit's ExecStart command line).

1. The installed /etc/ftpgate/ftpgate.ini as it stands, run with the unit's
   ExecStart command, in front of pyftpdlib on the example's backend address:
   PASV port from the example's passive_ports, RETR and STOR through ftplib,
   RETR through curl (EPSV), each compared by SHA-256; SIGTERM exits 0.
2. A copy with the example's commented lines `user = ftpgate`, `log` and
   `xferlog` switched on (files in /var/log/ftpgate, which the unit's
   LogsDirectory= makes): `ftpgate -t` as root accepts it, the running proxy
   has dropped to the package's ftpgate user, a RETR works, xferlog has it.

Prints one line per check; exit 0 only if all passed."""
import os
import pwd
import re
import signal
import subprocess
import sys

import ftptest as T

CONF = '/etc/ftpgate/ftpgate.ini'
LOGDIR = '/var/log/ftpgate'


def site_value(text, key):
    """First uncommented `key = value` of the file (values without comments)."""
    m = re.search(r'^%s\s*=\s*([^;#\n]*?)\s*$' % re.escape(key), text, re.M)
    assert m, '%s: no uncommented "%s =" line' % (CONF, key)
    return m.group(1)


def start_gate(cmd, port, logpath):
    logf = open(logpath, 'wb')
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    T._procs.append(proc)
    T.wait_listening(proc, [port], 10, 'ftpgate (%s)' % ' '.join(cmd),
                     lambda: T.read_text(logpath))
    return proc


def stop_gate(proc, logpath):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 0, 'ftpgate exited %s after SIGTERM\n%s' % (rc, T.read_text(logpath))


def main():
    gate_cmd = sys.argv[1:]
    assert gate_cmd, 'usage: package-transfer.py EXECSTART-COMMAND...'
    text = T.read_text(CONF)
    bhost, bport = site_value(text, 'backend').rsplit(':', 1)
    listen = site_value(text, 'listen').split(',')[0].strip()
    port = int(listen.rsplit(':', 1)[1])
    plo, phi = (int(x) for x in site_value(text, 'passive_ports').split('-'))

    root = T.tmpdir('pkg-root-')
    os.chmod(root, 0o755)
    down = os.path.join(root, 'down.bin')
    T.make_random_file(down, mib=4)
    want = T.sha256_file(down)
    src = os.path.join(T.tmpdir('pkg-up-'), 'up.bin')
    T.make_random_file(src, mib=3)
    work = T.tmpdir('pkg-gate-')
    os.chmod(work, 0o755)

    server = T.PyftpdServer(root, host=bhost, port=int(bport))
    print('ok - pyftpdlib listens on the example backend %s:%s' % (bhost, bport))

    # 1. the installed example, as the unit starts it
    log1 = os.path.join(work, 'gate1.log')
    gate = start_gate(gate_cmd, port, log1)
    print('ok - %s listens on %d' % (' '.join(gate_cmd), port))
    ftp = T.ftp_login(port)
    host, pport = ftp.makepasv()
    assert host == '127.0.0.1' and plo <= pport <= phi, \
        'PASV through the proxy: %s:%d, want 127.0.0.1 and a port in %d-%d' % (host, pport,
                                                                             plo, phi)
    got = T.sha_retr(ftp, 'down.bin')
    assert got == (want, 4 * T.MiB), 'RETR down.bin: %r, want %r' % (got, (want, 4 * T.MiB))
    with open(src, 'rb') as f:
        ftp.storbinary('STOR up.bin', f)
    ftp.quit()
    stored = T.sha256_file(os.path.join(root, 'up.bin'))
    assert stored == T.sha256_file(src), 'STOR up.bin: the backend stored other bytes'
    print('ok - ftplib: PASV port %d, RETR 4 MiB and STOR 3 MiB match by SHA-256' % pport)
    out = os.path.join(work, 'curl.bin')
    T.curl(['--ftp-pasv', '-o', out, 'ftp://u:p@127.0.0.1:%d/down.bin' % port])
    assert T.sha256_file(out) == want, 'curl RETR down.bin: other bytes'
    print('ok - curl (EPSV): RETR 4 MiB matches by SHA-256')
    stop_gate(gate, log1)
    print('ok - SIGTERM: exit 0')

    # 2. the same file with the package's user, a log file and xferlog
    uid = pwd.getpwnam('ftpgate').pw_uid
    conf2 = text
    for pat, repl in ((r'^;user = ftpgate$', 'user = ftpgate'),
                      (r'^;log = syslog$', 'log = %s/ftpgate.log' % LOGDIR),
                      (r'^;xferlog = .*$', 'xferlog = %s/xferlog' % LOGDIR)):
        conf2, n = re.subn(pat, repl, conf2, count=1, flags=re.M)
        assert n == 1, '%s: no line matching %s to switch on' % (CONF, pat)
    path2 = os.path.join(work, 'ftpgate.ini')
    with open(path2, 'w') as f:
        f.write(conf2)
    os.chmod(path2, 0o644)
    os.makedirs(LOGDIR, mode=0o755, exist_ok=True)   # what LogsDirectory= does
    r = subprocess.run([gate_cmd[0], '-t', '-c', path2], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, 'ftpgate -t with user = ftpgate: exit %d\n%s%s' % (
        r.returncode, r.stdout, r.stderr)
    print('ok - ftpgate -t as root accepts user = ftpgate, log and xferlog in %s' % LOGDIR)
    log2 = os.path.join(work, 'gate2.log')
    gate = start_gate([gate_cmd[0], '-f', '-c', path2], port, log2)
    ftp = T.ftp_login(port)     # after login the drop is long done
    got = T.sha_retr(ftp, 'down.bin')
    ftp.quit()
    assert got == (want, 4 * T.MiB), 'RETR as ftpgate: %r' % (got,)
    with open('/proc/%d/status' % gate.pid) as f:
        uids = re.search(r'^Uid:\s+(.*)$', f.read(), re.M).group(1).split()
    assert uids == [str(uid)] * 4, 'ftpgate runs with Uid %s, want ftpgate (%d) everywhere' % (
        uids, uid)
    stop_gate(gate, log2)
    xfer = T.read_text(os.path.join(LOGDIR, 'xferlog'))
    assert 'down.bin' in xfer, 'xferlog has no line for down.bin: %r' % xfer
    st = os.stat(os.path.join(LOGDIR, 'xferlog'))
    assert st.st_uid == uid, 'xferlog belongs to uid %d, want ftpgate (%d)' % (st.st_uid, uid)
    print('ok - running as ftpgate (uid %d): RETR matches, xferlog written, owned by it' % uid)
    server.stop()


if __name__ == '__main__':
    try:
        main()
    except Exception as e:
        print('not ok - %s: %s' % (type(e).__name__, e))
        sys.exit(1)
