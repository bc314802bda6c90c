#!/usr/bin/env bash
# Install the Debian packages that building and testing ftpgate need.
# Run as root (or through sudo). Safe to run again.
set -eu
pkgs=(build-essential autoconf automake pkg-config
      libevent-dev libssl-dev libinih-dev
      python3 python3-pyftpdlib python3-openssl python3-cryptography
      curl lftp iproute2 procps openssl vsftpd haproxy nftables strace
      prometheus mandoc systemd
      clang libclang-rt-14-dev
      debhelper dpkg-dev lintian
      qemu-system-x86
      libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3 libsodium23 libcap2)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "missing packages: ${missing[*]}" >&2
	echo "run: sudo $0" >&2
	exit 1
fi
# Server packages must not start services of their own on port 21.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
