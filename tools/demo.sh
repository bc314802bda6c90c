#!/usr/bin/env bash
# Quick start: build ftpgate, start a demo FTP server (pyftpdlib) and
# ftpgate in front of it on loopback, and print how to connect with curl.
# Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
top=$PWD

tools/install-deps.sh
if [ ! -x src/ftpgate ]; then
	[ -x configure ] || ./autogen.sh >/dev/null
	[ -f Makefile ] || ./configure >/dev/null
	make -j"$(nproc)" >/dev/null
fi

work=$(mktemp -d /tmp/ftpgate-demo.XXXXXX)
mkdir -p "$work/root"
echo "hello from the FTP server behind ftpgate" > "$work/root/hello.txt"
head -c 10485760 /dev/urandom > "$work/root/10MiB.bin"

cat > "$work/server.py" <<'PY'
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
auth = DummyAuthorizer()
auth.add_user("demo", "demo", sys.argv[1], perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(31000, 31100)
# Pretend the server sits behind NAT: it announces a private address that
# clients cannot reach. ftpgate only uses the port of this reply.
FTPHandler.masquerade_address = "198.51.100.10"
FTPServer(("127.0.0.1", 2121), FTPHandler).serve_forever()
PY

cat > "$work/ftpgate.ini" <<INI
[global]
log_level = info
[site:demo]
listen = 127.0.0.1:2100, [::1]:2100
backend = 127.0.0.1:2121
passive_ports = 50000-50099
INI

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

/usr/bin/python3 "$work/server.py" "$work/root" 2>"$work/server.log" &
pids+=($!)
sleep 1
if ! kill -0 "${pids[0]}" 2>/dev/null; then
	echo "demo FTP server did not start (is port 2121 taken?):" >&2
	cat "$work/server.log" >&2
	exit 1
fi
src/ftpgate -f -c "$work/ftpgate.ini" 2>&1 &
pids+=($!)
sleep 1
if ! kill -0 "${pids[1]}" 2>/dev/null; then
	echo "ftpgate did not start (see its message above; is port 2100 taken?)" >&2
	exit 1
fi

cat <<MSG

  Demo FTP server (pyftpdlib):  127.0.0.1:2121   user demo / password demo
      (it announces the unreachable address 198.51.100.10 in PASV replies)
  ftpgate in front of it:       127.0.0.1:2100 and [::1]:2100

  Try, in another terminal:
    curl ftp://demo:demo@127.0.0.1:2100/
    curl ftp://demo:demo@127.0.0.1:2100/hello.txt
    curl --disable-epsv --no-ftp-skip-pasv-ip ftp://demo:demo@127.0.0.1:2100/10MiB.bin -o /tmp/10MiB.bin
    curl -T /etc/os-release ftp://demo:demo@127.0.0.1:2100/uploaded.txt
  (--no-ftp-skip-pasv-ip makes curl trust the 227 address, as older clients
   and appliances do: through ftpgate it is the proxy's own address.)

  Ctrl-C stops the demo.
MSG
wait
