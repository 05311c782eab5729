#!/bin/bash
# Linux nvmet as an NVMe/TCP target on loopback, in the test guest (root, Debian's 6.1 kernel):
# configfs, a file-backed namespace and a brd one, two subsystems, two ports. Prints the facts the
# tests compare against as KEY=VALUE lines (sourced by the harness); undoes nothing (the guest
# powers off). Usage: bash test/hw-tcp/target.sh [--bench SIZE_MIB]
#
#   sub1  nqn.2024-01.io.libnvm:sub1   any host   ns 1: file /run/nvmet/ns1.img (64 MiB, buffered)
#                                                 ns 2: brd /dev/ram0 (32 MiB, 512-byte blocks)
#   sub2  nqn.2024-01.io.libnvm:sub2   only nqn.2024-01.io.libnvm:allowed-host   ns 1: file (8 MiB)
#   slow  nqn.2024-01.io.libnvm:slow   any host   ns 1: null_blk completing every I/O after 3 s
#   port 1  127.0.0.1:4420  default inline data (16 KiB): sub1, sub2
#   port 2  127.0.0.1:4421  param_inline_data_size 0 (every write, and I/O Connects, by R2T): sub1
set -euo pipefail
bench=0
[ "${1:-}" = "--bench" ] && bench="${2:-1024}"
MODROOT="${LIBNVM_VM_MODROOT:?run inside the test guest}"
mp() { modprobe -d "$MODROOT" "$@"; }

ip link set lo up
mp configfs
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
# Digests: nvmet-tcp asks the crypto API for "crc32c" when a host enables them; the kernel cannot
# load modules from this guest's module tree by itself, so load the implementations first.
mp crc32c-intel || true
mp crc32c_generic
mp nvmet
mp nvmet-tcp
if [ "$bench" -gt 0 ]; then mp brd rd_nr=1 rd_size=$((bench * 1024)); else mp brd rd_nr=1 rd_size=32768; fi

N=/sys/kernel/config/nvmet
S1=nqn.2024-01.io.libnvm:sub1
S2=nqn.2024-01.io.libnvm:sub2
SLOW=nqn.2024-01.io.libnvm:slow
ALLOWED=nqn.2024-01.io.libnvm:allowed-host
mkdir -p /run/nvmet

ns() { # subsystem nsid device [buffered]
  local d="$N/subsystems/$1/namespaces/$2"
  mkdir "$d"
  echo -n "$3" > "$d/device_path"
  [ "${4:-0}" = 1 ] && echo 1 > "$d/buffered_io"
  echo 1 > "$d/enable"
}
port() { # id addr svcid [inline]
  mkdir "$N/ports/$1"
  echo tcp > "$N/ports/$1/addr_trtype"
  echo ipv4 > "$N/ports/$1/addr_adrfam"
  echo "$2" > "$N/ports/$1/addr_traddr"
  echo "$3" > "$N/ports/$1/addr_trsvcid"
  [ -n "${4:-}" ] && echo "$4" > "$N/ports/$1/param_inline_data_size"
  return 0
}

mkdir "$N/subsystems/$S1"
echo 1 > "$N/subsystems/$S1/attr_allow_any_host"
echo LIBNVMTCP0001 > "$N/subsystems/$S1/attr_serial"
[ -e "$N/subsystems/$S1/attr_model" ] && echo "libnvm nvmet test" > "$N/subsystems/$S1/attr_model"
if [ "$bench" -gt 0 ]; then
  ns "$S1" 1 /dev/ram0
else
  truncate -s 64M /run/nvmet/ns1.img
  # tmpfs has no O_DIRECT on 6.1: buffered I/O, or enabling the namespace fails.
  ns "$S1" 1 /run/nvmet/ns1.img 1
  ns "$S1" 2 /dev/ram0
  # A namespace that answers every command 3 s late: deadlines and what happens after them.
  mp null_blk nr_devices=1 irqmode=2 completion_nsec=3000000000 gb=1 bs=512
  mkdir "$N/subsystems/$SLOW"
  echo 1 > "$N/subsystems/$SLOW/attr_allow_any_host"
  ns "$SLOW" 1 /dev/nullb0
fi

mkdir "$N/subsystems/$S2"
echo 0 > "$N/subsystems/$S2/attr_allow_any_host"
truncate -s 8M /run/nvmet/sub2.img
ns "$S2" 1 /run/nvmet/sub2.img 1
mkdir "$N/hosts/$ALLOWED"
ln -s "$N/hosts/$ALLOWED" "$N/subsystems/$S2/allowed_hosts/$ALLOWED"

port 1 127.0.0.1 4420
port 2 127.0.0.1 4421 0
ln -s "$N/subsystems/$S1" "$N/ports/1/subsystems/$S1"
ln -s "$N/subsystems/$S2" "$N/ports/1/subsystems/$S2"
ln -s "$N/subsystems/$S1" "$N/ports/2/subsystems/$S1"
[ -d "$N/subsystems/$SLOW" ] && ln -s "$N/subsystems/$SLOW" "$N/ports/1/subsystems/$SLOW"

echo "LIBNVM_TCP_SUB1=$S1"
echo "LIBNVM_TCP_SUB2=$S2"
echo "LIBNVM_TCP_SLOW=$SLOW"
echo "LIBNVM_TCP_ALLOWED_HOST=$ALLOWED"
echo "LIBNVM_TCP_NVMET=$N"
