#!/usr/bin/env bash
# tests/vm/vm-run.sh: runs one command inside a small qemu VM booted with
# Debian 12's stock kernel, for tests that need kernel features this machine's
# own kernel lacks (kernel TLS: the "tls" TCP ULP). It owns:
#   - the VM cache ($FTPGATE_VM_CACHE, default /var/cache/ftpgate-vm): the
#     busybox-static .deb, the unpacked kernel package (vmlinuz, a PVH vmlinux,
#     /lib/modules) and an
#     initramfs with busybox, the needed kernel modules and the guest init;
#   - one temporary directory per run (removed on exit) and the qemu process
#     (never left running).
# The guest sees the host's / read-only over virtio-9p, chroots into it and runs
# COMMAND in the caller's working directory; /tmp, /run, /var/tmp, /root and
# /dev/shm are fresh tmpfs in the guest. See tests/vm/README.md.
#
# usage: tests/vm/vm-run.sh [--timeout SECONDS] [--mem MiB] [--share DIR]... -- COMMAND [ARGS...]
#        tests/vm/vm-run.sh [--timeout SECONDS] [--mem MiB] --check
# Exit status: COMMAND's, or 125 when the VM gave none (boot failure, kernel
# panic, timeout); 2 on a usage error.
set -eu

usage() {
	echo "usage: $0 [--timeout SECONDS] [--mem MiB] [--share DIR]... -- COMMAND [ARGS...]" >&2
	echo "       $0 [--timeout SECONDS] [--mem MiB] --check" >&2
	exit 2
}

timeout_s=600
mem=1024
check=0
shares=()
while [ $# -gt 0 ]; do
	case $1 in
	--timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
	--timeout=*) timeout_s=${1#*=}; shift ;;
	--mem) [ $# -ge 2 ] || usage; mem=$2; shift 2 ;;
	--mem=*) mem=${1#*=}; shift ;;
	--check) check=1; shift ;;
	--share) [ $# -ge 2 ] || usage; [ -d "$2" ] || { echo "vm-run: --share: no directory $2" >&2; exit 2; }
		shares+=("$(cd "$2" && pwd -P)"); shift 2 ;;
	--) shift; break ;;
	-h|--help) usage ;;
	*) echo "vm-run: unknown option: $1" >&2; usage ;;
	esac
done
case $timeout_s in ''|*[!0-9]*) echo "vm-run: --timeout needs whole seconds" >&2; exit 2 ;; esac
case $mem in ''|*[!0-9]*) echo "vm-run: --mem needs MiB" >&2; exit 2 ;; esac
if [ "$check" = 1 ]; then
	[ $# -eq 0 ] || usage
	set -- sh -c 'uname -r; cat /proc/sys/net/ipv4/tcp_available_ulp'
fi
[ $# -gt 0 ] || usage

cache=${FTPGATE_VM_CACHE:-/var/cache/ftpgate-vm}
# Modules the guest must have (their dependencies are added from modules.dep,
# or from each module's own "depends=" when the package ships no modules.dep).
required_mods="virtio_pci 9pnet_virtio 9p tls"
# Loaded when present: the AEAD ciphers kTLS offloads to (there is no modprobe
# in the guest for the kernel to load them on demand) and a hardware RNG.
optional_mods="gcm ghash_generic ctr ccm chacha20poly1305 chacha_generic poly1305_generic
	chacha_x86_64 poly1305_x86_64 aesni_intel ghash_clmulni_intel virtio_rng"
msize=512000

die() { echo "vm-run: $*" >&2; exit 125; }

command -v qemu-system-x86_64 >/dev/null ||
	die "qemu-system-x86_64 not found (apt-get install --no-install-recommends qemu-system-x86; tools/install-deps.sh does)"

# ---------------------------------------------------------------- the cache
mkdir -p "$cache" || die "cannot create cache directory $cache (set FTPGATE_VM_CACHE)"
# Which kernel: the one Debian's linux-image-amd64 metapackage depends on
# (FTPGATE_VM_KERNEL_PKG overrides). apt-cache takes a second, so the answer
# is kept until apt's lists change.
kpkg=${FTPGATE_VM_KERNEL_PKG:-}
if [ -z "$kpkg" ] && [ -s "$cache/kernel-package" ] &&
	! [ /var/lib/apt/lists -nt "$cache/kernel-package" ] &&
	! [ /var/cache/apt/pkgcache.bin -nt "$cache/kernel-package" ]; then
	kpkg=$(cat "$cache/kernel-package")
fi
resolve_kpkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
if [ -z "$kpkg" ]; then
	kpkg=$(resolve_kpkg) || kpkg=
	if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ] && [ ! -d "$cache/kernel" ]; then
		echo "vm-run: no apt lists for linux-image-amd64; running apt-get update" >&2
		apt-get update -qq >&2 || true
		kpkg=$(resolve_kpkg) || kpkg=
	fi
	if [ -n "$kpkg" ]; then
		echo "$kpkg" > "$cache/kernel-package.$$" && mv "$cache/kernel-package.$$" "$cache/kernel-package"
	fi
fi
if [ -z "$kpkg" ]; then
	# No apt lists: take a kernel we already unpacked, if any.
	kpkg=$(ls -d "$cache"/kernel/linux-image-* 2>/dev/null | tail -n 1) || kpkg=
	kpkg=${kpkg##*/}
	[ -n "$kpkg" ] || die "cannot resolve the kernel package (apt-cache depends linux-image-amd64 found nothing: run apt-get update)"
fi
kver=${kpkg#linux-image-}
kdir=$cache/kernel/$kpkg

fetch_deb() { # PACKAGE -> prints the path of its .deb in $cache/debs
	local pkg=$1 f
	f=$(ls "$cache"/debs/"${pkg}"_*.deb 2>/dev/null | tail -n 1) || f=
	if [ -z "$f" ]; then
		mkdir -p "$cache/debs"
		local opt=()
		# As root, apt would warn that _apt cannot write the cache directory.
		[ "$(id -u)" -ne 0 ] || opt=(-o APT::Sandbox::User=root)
		(cd "$cache/debs" && apt-get download -q "${opt[@]}" "$pkg" >&2) ||
			die "apt-get download $pkg failed (needs the Debian mirror; as root, apt-get update first)"
		f=$(ls "$cache"/debs/"${pkg}"_*.deb 2>/dev/null | tail -n 1) || f=
		[ -n "$f" ] || die "apt-get download $pkg left no .deb in $cache/debs"
	fi
	printf '%s\n' "$f"
}

write_init() { # the guest's /init (busybox sh)
	cat <<'EOF'
#!/bin/busybox sh
# Guest init written by tests/vm/vm-run.sh.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
while read -r m; do
	insmod "/lib/modules/$m.ko" 2>/dev/null || echo "vm-init: insmod $m failed"
done < /modules.load
opts=trans=virtio,version=9p2000.L,msize=@MSIZE@
fail() { echo "vm-init: $*"; poweroff -f; }
mkdir -p /newroot /results
mount -t 9p -o "$opts,cache=none" results /results || fail "cannot mount the results share"
mount -t 9p -o "$opts,cache=loose,ro" hostroot /newroot || fail "cannot mount hostroot"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $r/tmp
mount -t tmpfs -o mode=1777 tmpfs $r/var/tmp
mount -t tmpfs -o mode=755 tmpfs $r/run
mount -t tmpfs -o mode=700 tmpfs $r/root
mkdir -p $r/run/lock $r/run/ftpgate-vm
mount --bind /results $r/run/ftpgate-vm
if [ -s /results/shares ]; then
	while read -r tag d; do
		mkdir -p "$r$d" && mount -t 9p -o "$opts,cache=loose,ro" "$tag" "$r$d" ||
			fail "cannot mount the share of $d"
	done < /results/shares
fi
ip link set lo up || ifconfig lo 127.0.0.1 up
echo "vm-init: running the command"
chroot $r /bin/sh /run/ftpgate-vm/cmd.sh </dev/null >/results/output 2>&1
echo $? >/results/status
echo "vm-init: command exited"
sync
umount $r/run/ftpgate-vm 2>/dev/null
umount /results 2>/dev/null
poweroff -f
EOF
}

# Under TCG, decompressing the bzImage takes ~3 s of each boot; qemu boots the
# uncompressed ELF vmlinux directly through its PVH entry point instead. No
# vmlinux (no PVH note, unknown compression, no readelf) means booting vmlinuz.
extract_vmlinux() { # VMLINUZ OUT
	local magic tool off
	for magic in '\xfd7zXZ\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -dcq' '\x1f\x8b\x08\x00:gzip -dc'; do
		tool=${magic#*:}
		off=$(LC_ALL=C grep -obUaP "${magic%%:*}" "$1" 2>/dev/null | head -n 1 | cut -d: -f1) || off=
		[ -n "$off" ] || continue
		tail -c "+$((off + 1))" "$1" | $tool > "$2.tmp" 2>/dev/null || true
		if command -v readelf >/dev/null && readelf -n "$2.tmp" 2>/dev/null | grep -q 'Unknown note type: (0x00000012)'; then
			mv "$2.tmp" "$2"
			return 0
		fi
	done
	rm -f "$2.tmp"
	echo "vm-run: no PVH vmlinux in $1; booting the bzImage (slower)" >&2
}

build_initrd() { # runs under the cache lock
	local kdeb bdeb work order mod_root f
	if [ ! -e "$kdir/.complete" ]; then
		kdeb=$(fetch_deb "$kpkg")
		rm -rf "$kdir.tmp"
		mkdir -p "$kdir.tmp"
		dpkg -x "$kdeb" "$kdir.tmp" || die "dpkg -x $kdeb failed"
		[ -e "$kdir.tmp/boot/vmlinuz-$kver" ] || die "$kdeb has no boot/vmlinuz-$kver"
		extract_vmlinux "$kdir.tmp/boot/vmlinuz-$kver" "$kdir.tmp/boot/vmlinux-$kver"
		touch "$kdir.tmp/.complete"
		rm -rf "$kdir"
		mv "$kdir.tmp" "$kdir"
		# The unpacked tree is what is kept: drop the .deb and older kernels.
		rm -f "$kdeb"
		find "$cache/kernel" -mindepth 1 -maxdepth 1 ! -name "$kpkg" -exec rm -rf {} +
	fi
	if [ ! -x "$cache/busybox" ]; then
		bdeb=$(fetch_deb busybox-static)
		work=$(mktemp -d "$cache/.bb.XXXXXX")
		dpkg -x "$bdeb" "$work" || die "dpkg -x $bdeb failed"
		[ -x "$work/bin/busybox" ] || die "$bdeb has no bin/busybox"
		mv "$work/bin/busybox" "$cache/busybox.tmp"
		rm -rf "$work"
		mv "$cache/busybox.tmp" "$cache/busybox"
	fi

	work=$(mktemp -d "$cache/.initrd.XXXXXX")
	mkdir -p "$work/root/bin" "$work/root/lib/modules" "$work/root/proc" "$work/root/dev"
	cp "$cache/busybox" "$work/root/bin/busybox"
	write_init | sed "s/@MSIZE@/$msize/" > "$work/root/init"
	chmod 755 "$work/root/init"

	mod_root=$kdir/lib/modules/$kver
	[ -d "$mod_root" ] || die "no $mod_root in $kpkg"
	# name (dashes as underscores) -> path relative to $mod_root
	declare -A path_of=() deps_of=() seen=()
	while IFS= read -r f; do
		local n=${f##*/}
		n=${n%%.ko*}
		path_of[${n//-/_}]=$f
	done < <(cd "$mod_root" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
	if [ -s "$mod_root/modules.dep" ]; then
		local line k v dn
		while IFS= read -r line; do
			k=${line%%:*}; k=${k##*/}; k=${k%%.ko*}
			v=
			for dn in ${line#*:}; do dn=${dn##*/}; v="$v ${dn%%.ko*}"; done
			deps_of[${k//-/_}]=${v//-/_}
		done < "$mod_root/modules.dep"
	fi
	decompress() { # FILE -> stdout
		case $1 in
		*.xz) xz -dc "$1" ;;
		*.zst) zstd -dcq "$1" ;;
		*.gz) gzip -dc "$1" ;;
		*) cat "$1" ;;
		esac
	}
	order=()
	add_mod() { # NAME REQUIRED
		local n=${1//-/_} d deps
		[ -z "${seen[$n]:-}" ] || return 0
		seen[$n]=1
		if [ -z "${path_of[$n]:-}" ]; then
			# Built into the kernel, so nothing to load.
			grep -Eq "/${n//_/[-_]}\\.ko\$" "$mod_root/modules.builtin" 2>/dev/null && return 0
			[ "$2" = 1 ] && die "kernel $kver has no module $n"
			return 0
		fi
		decompress "$mod_root/${path_of[$n]}" > "$work/root/lib/modules/$n.ko" ||
			die "cannot decompress ${path_of[$n]}"
		if [ -n "${deps_of[$n]+x}" ]; then
			deps=${deps_of[$n]}
		else
			deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$work/root/lib/modules/$n.ko" | head -n 1) || deps=
			deps=${deps#depends=}
			deps=${deps//,/ }
		fi
		for d in $deps; do add_mod "$d" 1; done
		order+=("$n")
	}
	local m
	for m in $required_mods; do add_mod "$m" 1; done
	for m in $optional_mods; do add_mod "$m" 0; done
	printf '%s\n' "${order[@]}" > "$work/root/modules.load"
	(cd "$work/root" && find . | LC_ALL=C sort | "$cache/busybox" cpio -o -H newc 2>/dev/null) |
		gzip -1 > "$work/initrd.gz" || die "cannot build the initramfs"
	mv "$work/initrd.gz" "$cache/initrd-$stamp.gz"
	rm -rf "$work"
	# Initramfs images of other versions of this script or kernel.
	find "$cache" -maxdepth 1 -name 'initrd-*.gz' ! -name "initrd-$stamp.gz" -delete
}

# The initramfs is rebuilt whenever the kernel, the init script or the module
# lists change.
stamp=$( { echo "$kpkg $msize $required_mods / $optional_mods"; write_init; } | md5sum | cut -c1-12)
initrd=$cache/initrd-$stamp.gz
if [ ! -e "$initrd" ] || [ ! -e "$kdir/.complete" ]; then
	exec 9>"$cache/.lock"
	flock 9
	if [ ! -e "$initrd" ] || [ ! -e "$kdir/.complete" ]; then
		echo "vm-run: preparing $kpkg and the initramfs in $cache" >&2
		build_initrd
	fi
	flock -u 9
	exec 9>&-
fi

# ---------------------------------------------------------------- the run
kernel=$kdir/boot/vmlinux-$kver
[ -e "$kernel" ] || kernel=$kdir/boot/vmlinuz-$kver
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ftpgate-vm.XXXXXX")
qpid=
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$qpid" 2>/dev/null || true
		wait "$qpid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$tmp/share"

cwd=$(pwd -P)
# The guest mounts fresh file systems over these, hiding the host's; the
# working directory and each --share DIR under one of them get a 9p share of
# their own (read-only), mounted over the top at the same path.
extra=()
: > "$tmp/share/shares"
nshare=0
for d in "$cwd" "${shares[@]}"; do
	case $d/ in
	/tmp/*|/var/tmp/*|/run/*|/root/*|/dev/*|/proc/*|/sys/*) ;;
	*) continue ;;
	esac
	covered=0 # a directory inside one already shared needs nothing
	while read -r _ p; do
		case $d/ in "$p"/*) covered=1 ;; esac
	done < "$tmp/share/shares"
	[ $covered = 1 ] && continue
	printf 'share%d %s\n' "$nshare" "$d" >> "$tmp/share/shares"
	# shellcheck disable=SC2054 # commas belong to qemu options
	extra+=(-fsdev "local,id=share$nshare,path=${d//,/,,},security_model=none,readonly=on,multidevs=remap"
	        -device "virtio-9p-pci,fsdev=share$nshare,mount_tag=share$nshare")
	nshare=$((nshare + 1))
done
# Other mount points on the host (a tmpfs, a bind mount) need nothing: qemu's
# 9p server walks the host's paths, so it crosses into them (multidevs=remap
# keeps their inode numbers apart).

# The command, as a script run with the host's /bin/sh inside the chroot.
q() { local s=${1//"'"/"'\\''"}; printf "'%s'" "$s"; }
{
	echo '# written by tests/vm/vm-run.sh'
	echo 'export HOME=/root FTPGATE_IN_VM=1'
	for name in $(compgen -e); do
		case $name in
		PATH|FTPGATE|FTPGATE_*|FTPTEST_*|PYTHONDONTWRITEBYTECODE|PYTHONPATH|ASAN_OPTIONS|UBSAN_OPTIONS|LSAN_OPTIONS|LANG|LC_ALL|TZ|CI)
			printf 'export %s=%s\n' "$name" "$(q "${!name}")" ;;
		esac
	done
	printf 'cd %s || exit 126\n' "$(q "$cwd")"
	printf 'exec'
	for a in "$@"; do printf ' %s' "$(q "$a")"; done
	printf '\n'
} > "$tmp/share/cmd.sh"

# qemu dies with this script even if it is killed with SIGKILL.
pdeath=()
setpriv --help 2>/dev/null | grep -q -- --pdeathsig && pdeath=(setpriv --pdeathsig KILL)
start=$(date +%s%N)
"${pdeath[@]}" qemu-system-x86_64 -nographic -no-reboot -nodefaults -serial stdio -monitor none \
	-accel tcg -cpu max -smp 2 -m "$mem" -nic none \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 quiet panic=-1 ${FTPGATE_VM_APPEND:-}" \
	-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
	-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
	-fsdev "local,id=results,path=${tmp//,/,,}/share,security_model=none,multidevs=remap" \
	-device virtio-9p-pci,fsdev=results,mount_tag=results \
	-device virtio-rng-pci \
	"${extra[@]}" \
	</dev/null >"$tmp/console.log" 2>&1 &
qpid=$!
deadline=$((start / 1000000 + timeout_s * 1000))
timed_out=0
while kill -0 "$qpid" 2>/dev/null; do
	if [ $(($(date +%s%N) / 1000000)) -ge "$deadline" ]; then
		timed_out=1
		kill "$qpid" 2>/dev/null || true
		break
	fi
	sleep 0.2
done
wait "$qpid" 2>/dev/null || true
qpid=
# FTPGATE_VM_CONSOLE=FILE keeps the guest's console log.
[ -z "${FTPGATE_VM_CONSOLE:-}" ] || cp "$tmp/console.log" "$FTPGATE_VM_CONSOLE" || true

status=$(cat "$tmp/share/status" 2>/dev/null) || status=
case $status in
''|*[!0-9]*)
	if [ "$timed_out" = 1 ]; then
		echo "vm-run: timed out after ${timeout_s}s; last console lines:" >&2
	else
		echo "vm-run: the VM gave no exit status; last console lines:" >&2
	fi
	tail -n 60 "$tmp/console.log" >&2
	[ -s "$tmp/share/output" ] && { echo "vm-run: command output so far:" >&2; cat "$tmp/share/output" >&2; }
	exit 125
	;;
esac

if [ "$check" = 1 ]; then
	gver=$(head -n 1 "$tmp/share/output")
	if [ "$status" = 0 ] && sed -n 2p "$tmp/share/output" | grep -qw tls; then
		echo "vm: ok (kernel $gver, tls ULP available)"
		exit 0
	fi
	echo "vm: FAILED: no tls ULP in the guest (kernel $gver, status $status); output:" >&2
	cat "$tmp/share/output" >&2
	exit 1
fi
cat "$tmp/share/output"
exit "$status"
