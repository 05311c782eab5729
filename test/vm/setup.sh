#!/usr/bin/env bash
# Provision everything the QEMU guest test harness needs (idempotent; a second run takes ~1 s).
#
#   1. Debian packages (qemu-system-x86, busybox-static, cpio, kmod, pciutils, xz-utils, zstd, cmake, gcc, make;
#      nvme-cli, which the guest runs from the host's root to compare `libnvm ... -o json` with; zsh,
#      for the test of `libnvm completion zsh`)
#   2. the C library (c/build), when c/CMakeLists.txt exists, and the dma-buf suite's test helper
#      test/hw-dmabuf/build/libudmabuf-test.so (memfd + /dev/udmabuf; test-only, never shipped), the
#      mock libcuda, and the fake SISCI with the SmartIO shim built against it (c/build/fake-sisci/)
#   3. two guest kernels with their initramfs, in ${LIBNVM_VM_CACHE:-<repo>/.cache/vm}: the one
#      linux-image-amd64 names (e.g. 6.1.0-56-amd64) at the top of the cache, and Debian's newest
#      6.12 in k612/ (the dma-buf suite's: 6.12 has udmabuf, 6.1 none). Each directory holds:
#        debs/<linux-image-*.deb>   the kernel package (re-used when present)
#        root/                      the package dpkg -x'd, with modules.dep (depmod -b)
#        vmlinux                    uncompressed kernel (QEMU boots it through its PVH note)
#        initrd.gz                  busybox-static + test/vm/init.sh as /init + virtio/9p modules
#        kernel-version             e.g. 6.1.0-56-amd64
#   4. the disnvm module for both kernels (test/vm/build-module.sh)
#
# See /work/shared/docs/qemu-guest.md (or test/vm/README.md) for why things are done this way.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${LIBNVM_VM_CACHE:-$REPO/.cache/vm}"
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

# What the initramfs must load: the virtio PCI transport and 9p over virtio. Their dependencies come
# from each kernel's modules.dep (6.1 has fscache as a module; 6.12 has it inside netfs and virtio
# built in), so one list serves both kernels.
MODULE_TARGETS=(virtio_pci 9pnet_virtio 9p)

log() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

# apt_install_missing, apt_update_once, apt_download
source "$SCRIPT_DIR/apt.sh"

# ---------------------------------------------------------------------------------------------
# 1. packages
PACKAGES=(qemu-system-x86 busybox-static cpio kmod pciutils xz-utils zstd cmake gcc make nvme-cli zsh)
apt_install_missing "${PACKAGES[@]}"

# ---------------------------------------------------------------------------------------------
# 2. the C library, and the dma-buf suite's helper
if [ -f "$REPO/c/CMakeLists.txt" ]; then
  log "building the C library (c/build)"
  (cd "$REPO" && cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build c/build >/dev/null) \
    || die "C library build failed (run: cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release && cmake --build c/build)"
else
  log "c/CMakeLists.txt not found: skipping the C library build"
fi
# Built here rather than by c/CMakeLists.txt, which ships in the package: it is a test fixture.
HELPER_SRC="$REPO/test/hw-dmabuf/udmabuf.c"
HELPER="$REPO/test/hw-dmabuf/build/libudmabuf-test.so"
if [ -f "$HELPER_SRC" ] && { [ ! -s "$HELPER" ] || [ "$HELPER_SRC" -nt "$HELPER" ]; }; then
  log "building test/hw-dmabuf/build/libudmabuf-test.so"
  mkdir -p "$(dirname "$HELPER")"
  gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$HELPER.tmp" "$HELPER_SRC" || die "the udmabuf test helper did not build"
  mv "$HELPER.tmp" "$HELPER"
fi
# The mock libcuda (test-only) that the guest's gpu-read test loads: built by test/cuda/mock.ts,
# the one place that knows its flags (it rebuilds only when the source is newer).
if [ -f "$REPO/test/cuda/mock-libcuda.c" ]; then
  (cd "$REPO" && bun -e 'await import("./test/cuda/mock.ts")') >/dev/null || die "the mock libcuda (test/cuda/mock-libcuda.c) did not build"
fi
# The fake SISCI (test-only) and libnvm's SmartIO shim built against it, into c/build/fake-sisci/,
# for the guest's SmartIO tests (its root is read-only): built by test/smartio/fake.ts when stale.
if [ -f "$REPO/test/smartio/fake-sisci.c" ]; then
  (cd "$REPO" && bun -e '(await import("./test/smartio/fake.ts")).buildFakeSmartIo()') >/dev/null \
    || die "the fake SISCI or the SmartIO shim did not build (bun -e '(await import(\"./test/smartio/fake.ts\")).buildFakeSmartIo()')"
fi

# ---------------------------------------------------------------------------------------------
# 3. guest kernels

resolve_default_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# The newest linux-image-6.12.<n>+deb<m>-amd64 (the plain -amd64 flavour): the same choice as
# build-module.sh's newest 6.12 headers, so the module built there is the one this kernel loads.
resolve_612_pkg() {
  apt-cache pkgnames linux-image-6.12 2>/dev/null \
    | grep -E '^linux-image-6\.12\.[0-9]+(\+deb[0-9]+)?-amd64$' | sort -V | tail -n1
}

# The package `resolver` names, after updating the package lists once if it names none (a fresh
# machine); offline, the one last extracted into `dir`.
resolve_pkg() {
  local resolver="$1" dir="$2" pkg
  pkg="$("$resolver" || true)"
  if [ -z "$pkg" ]; then
    apt_update_once
    pkg="$("$resolver" || true)"
  fi
  if [ -z "$pkg" ]; then
    [ -f "$dir/root/.libnvm-kpkg" ] || die "cannot resolve the kernel package ($resolver names none)"
    pkg="$(cat "$dir/root/.libnvm-kpkg")"
    log "cannot resolve the kernel package; re-using cached $pkg"
  fi
  echo "$pkg"
}

# Canonical (underscore) module name of a modules.dep path.
AWK_CANON='function canon(p,   n) { n = p; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n); return n }'

# The modules the initramfs loads for the kernel at `moddir`, in load order: each target's
# dependencies as modules.dep lists them (depmod puts the one to load first last), then the
# target itself; a built-in target needs none.
module_load_order() {
  local moddir="$1" t
  shift
  for t in "$@"; do
    grep -qE "/${t//_/[-_]}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && continue
    awk -v m="$t" "$AWK_CANON"' { if (canon(substr($0, 1, index($0, ":") - 1)) == m) found = 1 } END { exit !found }' \
      "$moddir/modules.dep" || die "module $t not found in $moddir"
  done
  awk -v targets="$*" "$AWK_CANON"'
    { i = index($0, ":"); m = canon(substr($0, 1, i - 1)); deps[m] = substr($0, i + 1); known[m] = 1 }
    END {
      nt = split(targets, t, " ")
      for (k = 1; k <= nt; k++) {
        if (!(t[k] in known)) continue
        nd = split(deps[t[k]], d, " ")
        for (j = nd; j >= 1; j--) { c = canon(d[j]); if (!(c in seen)) { seen[c] = 1; print c } }
        if (!(t[k] in seen)) { seen[t[k]] = 1; print t[k] }
      }
    }' "$moddir/modules.dep"
}

is_elf() { [ -s "$1" ] && [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; }

# The uncompressed kernel out of a bzImage into `out`: the first xz stream (6.1) or zstd frame
# (6.12) in it that decompresses to an ELF.
extract_vmlinux() {
  local vmlinuz="$1" out="$2" off
  # Not a pipe: tail dies of SIGPIPE when the decompressor stops reading, which pipefail would
  # count as a failure.
  for off in $(grep -obUaP '\xFD7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
    # --single-stream: stop after the first stream and ignore what follows it in the bzImage.
    if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$vmlinuz") > "$out" 2>/dev/null && is_elf "$out"; then
      return 0
    fi
  done
  for off in $(grep -obUaP '\x28\xB5\x2F\xFD' "$vmlinuz" | cut -d: -f1); do
    # zstd decodes the frame, then fails on the bzImage's trailer after it: the output is whole.
    zstd -dcq < <(tail -c +"$((off + 1))" "$vmlinuz") > "$out" 2>/dev/null || true
    is_elf "$out" && return 0
  done
  return 1
}

BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] || BUSYBOX=/bin/busybox
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }
[ -x "$BUSYBOX" ] && file_is_static "$BUSYBOX" || die "busybox-static is not installed (no static $BUSYBOX)"
INIT_SRC="$SCRIPT_DIR/init.sh"
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"

# Kernel package `kpkg` made bootable in `dir` (debs/, root/, vmlinux, initrd.gz, kernel-version);
# prints its version.
provision_kernel() {
  local dir="$1" kpkg="$2"
  mkdir -p "$dir/debs"
  shopt -s nullglob
  local debs=("$dir/debs/${kpkg}_"*.deb)
  if [ "${#debs[@]}" -eq 0 ]; then
    log "downloading $kpkg"
    apt_download "$dir/debs" "$kpkg" >&2
    debs=("$dir/debs/${kpkg}_"*.deb)
    [ "${#debs[@]}" -gt 0 ] || die "apt-get download $kpkg produced no .deb"
  fi
  local deb="${debs[-1]}" d
  # Old kernel packages from previous versions are of no further use.
  for d in "$dir/debs/"linux-image-*.deb; do
    [ "$d" = "$deb" ] || rm -f "$d"
  done
  shopt -u nullglob

  local deb_id vers kver moddir
  deb_id="$(basename "$deb")"
  if [ "$(cat "$dir/root/.libnvm-deb" 2>/dev/null || true)" != "$deb_id" ]; then
    log "extracting $deb_id"
    rm -rf "$dir/root" "$dir/root.tmp"
    mkdir -p "$dir/root.tmp"
    dpkg -x "$deb" "$dir/root.tmp"
    vers=("$dir/root.tmp/lib/modules/"*)
    [ "${#vers[@]}" -eq 1 ] && [ -d "${vers[0]}" ] || die "expected exactly one lib/modules/<version> in $deb_id"
    log "depmod -b root $(basename "${vers[0]}")"
    depmod -b "$dir/root.tmp" "$(basename "${vers[0]}")"
    echo "$kpkg" > "$dir/root.tmp/.libnvm-kpkg"
    mv "$dir/root.tmp" "$dir/root"
    echo "$deb_id" > "$dir/root/.libnvm-deb"   # written last: marks a complete extraction
  fi
  vers=("$dir/root/lib/modules/"*)
  kver="$(basename "${vers[0]}")"
  moddir="$dir/root/lib/modules/$kver"
  [ -f "$moddir/modules.dep" ] || { log "depmod -b root $kver"; depmod -b "$dir/root" "$kver"; }

  if [ "$(cat "$dir/.stamp-vmlinux" 2>/dev/null || true)" != "$deb_id" ] || [ ! -s "$dir/vmlinux" ]; then
    [ -f "$dir/root/boot/vmlinuz-$kver" ] || die "missing $dir/root/boot/vmlinuz-$kver"
    log "extracting vmlinux from vmlinuz-$kver"
    rm -f "$dir/vmlinux.tmp"
    extract_vmlinux "$dir/root/boot/vmlinuz-$kver" "$dir/vmlinux.tmp" \
      || die "could not find an xz- or zstd-compressed ELF kernel in $dir/root/boot/vmlinuz-$kver"
    mv "$dir/vmlinux.tmp" "$dir/vmlinux"
    echo "$deb_id" > "$dir/.stamp-vmlinux"
  fi

  local modules key
  modules="$(module_load_order "$moddir" "${MODULE_TARGETS[@]}" | tr '\n' ' ')"
  key="$(
    {
      echo "$deb_id"
      echo "$modules"
      echo "$dir"
      sha256sum "$INIT_SRC" "$BUSYBOX" "${BASH_SOURCE[0]}" | cut -d' ' -f1
    } | sha256sum | cut -d' ' -f1
  )"
  if [ "$(cat "$dir/.stamp-initrd" 2>/dev/null || true)" != "$key" ] || [ ! -s "$dir/initrd.gz" ]; then
    log "building initrd.gz for $kver (modules: $modules)"
    local stage="$dir/initramfs" m rel src
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt/host,lib/modules}
    cp "$BUSYBOX" "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
    install -m 0755 "$INIT_SRC" "$stage/init"
    : > "$stage/etc/modules.order"
    for m in $modules; do
      rel="$(awk -v m="$m" "$AWK_CANON"' { p = substr($0, 1, index($0, ":") - 1); if (canon(p) == m) { print p; exit } }' "$moddir/modules.dep")"
      [ -n "$rel" ] || die "module $m not found in $moddir"
      src="$moddir/$rel"
      case "$src" in
        *.ko.xz)  xz -dc "$src" > "$stage/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$src" > "$stage/lib/modules/$m.ko" ;;
        *.ko.gz)  gzip -dc "$src" > "$stage/lib/modules/$m.ko" ;;
        *)        cp "$src" "$stage/lib/modules/$m.ko" ;;
      esac
      echo "$m" >> "$stage/etc/modules.order"
    done
    printf "LIBNVM_VM_KVER='%s'\nLIBNVM_VM_MODROOT='%s'\n" "$kver" "$dir/root" > "$stage/etc/libnvm-vm.conf"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$dir/initrd.gz.tmp")
    mv "$dir/initrd.gz.tmp" "$dir/initrd.gz"
    echo "$key" > "$dir/.stamp-initrd"
  fi
  echo "$kver" > "$dir/kernel-version.tmp" && mv "$dir/kernel-version.tmp" "$dir/kernel-version"
  echo "$kver"
}

KVER="$(provision_kernel "$CACHE" "$(resolve_pkg resolve_default_pkg "$CACHE")")"
K612="$(provision_kernel "$CACHE/k612" "$(resolve_pkg resolve_612_pkg "$CACHE/k612")")"

bash "$SCRIPT_DIR/build-module.sh" || die "the disnvm kernel module did not build (see above; rerun: bash test/vm/build-module.sh)"
log "ready: kernels $KVER and $K612 (k612/) in $CACHE"
