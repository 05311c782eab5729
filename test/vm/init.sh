#!/bin/busybox sh
# /init of the libnvm test guest (copied into initrd.gz by test/vm/setup.sh; runs under busybox-static).
#
# Mounts the host's root read-only over 9p at /mnt/host, the read-write exchange dir (9p tag "xchg")
# at /mnt/host/run/xchg, then runs `chroot /mnt/host /bin/sh /run/xchg/cmd.sh` with its output going to
# both the console and /run/xchg/output.log, writes the exit status to /run/xchg/rc and powers off.
# Lines starting with "libnvm-vm:" are the harness's own markers (test/vm/run.ts looks for them).

/bin/busybox --install -s /bin
export PATH=/bin:/sbin

say() { echo "libnvm-vm: $*"; }
halt() {
  sync
  poweroff -f
  echo o > /proc/sysrq-trigger
  sleep 5
  exit 1   # init exiting panics the kernel; with panic=-1 and -no-reboot QEMU then exits
}
fatal() { say "FATAL: $*"; halt; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say "init started (kernel $(uname -r))"

. /etc/libnvm-vm.conf

while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m.ko" || fatal "insmod $m failed"
done < /etc/modules.order

H=/mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host "$H" \
  || fatal "cannot mount the host root (9p tag 'host')"
mount -t proc proc "$H/proc" || fatal "mount proc"
mount -t sysfs sysfs "$H/sys" || fatal "mount sys"
mount -t devtmpfs devtmpfs "$H/dev" || fatal "mount dev"
mount -t tmpfs -o mode=0755 tmpfs "$H/run" || fatal "mount /run tmpfs"
mkdir -p "$H/dev/pts" "$H/dev/shm" "$H/dev/hugepages"
mount -t devpts devpts "$H/dev/pts" 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs "$H/dev/shm"
mount -t hugetlbfs hugetlbfs "$H/dev/hugepages" 2>/dev/null
[ -d "$H/sys/kernel/debug" ] && mount -t debugfs debugfs "$H/sys/kernel/debug" 2>/dev/null
mkdir -p "$H/run/xchg" "$H/run/tmp"
chmod 1777 "$H/run/tmp"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xchg "$H/run/xchg" \
  || fatal "cannot mount the exchange dir (9p tag 'xchg')"
[ -f "$H/run/xchg/cmd.sh" ] || fatal "no /run/xchg/cmd.sh"

# No hugepages are reserved, as on a fresh machine: the library reserves what it needs (as root) and
# gives it back, and the tests prove it from nr_hugepages 0.
hp="$(cat /proc/sys/vm/nr_hugepages)"
[ "$hp" = 0 ] || say "warning: $hp hugepages reserved at boot (the tests expect a fresh machine's 0)"

say "running /run/xchg/cmd.sh"
mkfifo /tmp/out.fifo
tee "$H/run/xchg/output.log" < /tmp/out.fifo &
tee_pid=$!

# cmd.sh (written by run.ts) sources /run/xchg/env, cds into the repo and runs the script.
env -i \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/run/tmp TMPDIR=/run/tmp XDG_CACHE_HOME=/run/tmp/.cache \
  BUN_RUNTIME_TRANSPILER_CACHE_PATH=0 BUN_INSTALL_CACHE_DIR=/run/tmp/.bun-cache \
  LANG=C.UTF-8 TERM=dumb \
  LIBNVM_VM=1 LIBNVM_VM_XCHG=/run/xchg \
  LIBNVM_VM_KVER="$LIBNVM_VM_KVER" LIBNVM_VM_MODROOT="$LIBNVM_VM_MODROOT" \
  chroot "$H" /bin/sh /run/xchg/cmd.sh </dev/null >/tmp/out.fifo 2>&1
rc=$?
wait "$tee_pid"

echo "$rc" > "$H/run/xchg/rc"
sync
umount "$H/run/xchg" 2>/dev/null
say "command exited with status $rc; powering off"
halt
