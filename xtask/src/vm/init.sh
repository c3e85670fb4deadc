#!/bin/busybox sh
# PID 1 of the test guest: the host's root read-only over 9p under a tmpfs
# overlay, a writable /tmp and /run, the kernel's own filesystems, then the
# one command, whose exit code goes back on the console as a marker line.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
# The kernel found no /dev/console in the archive: open it now.
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys

fail() {
	echo "TCPWATCH-VM-INIT-FAILED: $*"
	dmesg | tail -n 20
	poweroff -f
}

. /vm/env

for m in /modules/*.ko; do
	insmod "$m" || fail "insmod $m"
done

mkdir -p /mnt/host /mnt/rw
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /mnt/host ||
	fail "mounting the host's root over 9p"
# Writes land in guest memory and never reach the host.
mount -t tmpfs -o mode=0755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work root /newroot ||
	fail "mounting the overlay root"

R=/newroot
# The workspace stays visible even where fresh filesystems go next (a
# clone under /tmp, say): held aside, then put back on top of them.
mkdir -p /mnt/keep
mount --bind "$R$KEEP" /mnt/keep || fail "holding the workspace $KEEP"
# Fresh, as on a booted host, not the host's own files.
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=1777 tmp $R/var/tmp
mount -t tmpfs -o mode=0755 run $R/run
mkdir -p "$R$KEEP"
mount --move /mnt/keep "$R$KEEP" || fail "putting the workspace $KEEP back"
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t bpf bpf $R/sys/fs/bpf || fail "mounting bpffs"
mount -t tracefs tracefs $R/sys/kernel/tracing || fail "mounting tracefs"
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
# As systemd leaves it, so `ip netns` and unshare behave as on a host.
mount --make-rshared $R

# The package's module tree, so modprobe in the guest finds this kernel's.
mkdir -p "$R/lib/modules/$KERNEL_RELEASE"
mount --bind "/mnt/host$HOST_MODULES" "$R/lib/modules/$KERNEL_RELEASE" ||
	fail "binding the module tree"
echo /bin/vm-modprobe >/proc/sys/kernel/modprobe
# Loaded on demand on a host; preloaded so a failure shows here, not in a test.
chroot $R /sbin/modprobe -a inet_diag tcp_diag udp_diag veth ||
	echo "tcpwatch-vm: warning: preloading modules failed"

ip link set lo up
hostname tcpwatch-vm

booted=$(dmesg | wc -l)
echo TCPWATCH-VM-START
sh /vm/command
rc=$?
# On failure, what the kernel said while the command ran (not the boot's chatter).
if [ "$rc" -ne 0 ] && [ "$(dmesg | wc -l)" -gt "$booted" ]; then
	echo "--- guest dmesg during the command (last 20 lines) ---"
	dmesg | tail -n +"$((booted + 1))" | tail -n 20
fi
echo "TCPWATCH-VM-EXIT=$rc"
poweroff -f
