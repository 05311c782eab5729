#!/usr/bin/env bash
# Provision everything the QEMU guest test harness needs (idempotent; a second run takes ~1 s).
#
#   1. Debian packages (qemu-system-x86, busybox-static, cpio, kmod, pciutils, xz-utils, cmake, gcc, make;
#      nvme-cli, which the guest runs from the host's root to compare `libnvm ... -o json` with; zsh,
#      for the test of `libnvm completion zsh`)
#   2. the C library (c/build), when c/CMakeLists.txt exists
#   3. the guest kernel + initramfs in ${LIBNVM_VM_CACHE:-<repo>/.cache/vm}:
#        debs/<linux-image-*.deb>   the kernel package (re-used when present)
#        root/                      the package dpkg -x'd, with modules.dep (depmod -b)
#        vmlinux                    uncompressed kernel (QEMU boots it through its PVH note)
#        initrd.gz                  busybox-static + test/vm/init.sh as /init + virtio/9p modules
#        kernel-version             e.g. 6.1.0-56-amd64
#
# See /work/shared/docs/qemu-guest.md (or test/vm/README.md) for why things are done this way.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${LIBNVM_VM_CACHE:-$REPO/.cache/vm}"
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

# Modules the initramfs loads, in this order (virtio transport, then 9p over virtio).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p)

log() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

# apt_install_missing, apt_update_once, apt_download
source "$SCRIPT_DIR/apt.sh"

# ---------------------------------------------------------------------------------------------
# 1. packages
PACKAGES=(qemu-system-x86 busybox-static cpio kmod pciutils xz-utils cmake gcc make nvme-cli zsh)
apt_install_missing "${PACKAGES[@]}"

# ---------------------------------------------------------------------------------------------
# 2. the C library
if [ -f "$REPO/c/CMakeLists.txt" ]; then
  log "building the C library (c/build)"
  (cd "$REPO" && cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build c/build >/dev/null) \
    || die "C library build failed (run: cmake -S c -B c/build -DCMAKE_BUILD_TYPE=Release && cmake --build c/build)"
else
  log "c/CMakeLists.txt not found: skipping the C library build"
fi

# ---------------------------------------------------------------------------------------------
# 3. guest kernel
mkdir -p "$CACHE/debs"

resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
KPKG="$(resolve_kernel_pkg || true)"
if [ -z "$KPKG" ]; then
  # Fresh machine with empty package lists.
  apt_update_once
  KPKG="$(resolve_kernel_pkg || true)"
fi
if [ -z "$KPKG" ]; then
  # Offline but provisioned before: keep using what is cached.
  if [ -f "$CACHE/root/.libnvm-kpkg" ]; then
    KPKG="$(cat "$CACHE/root/.libnvm-kpkg")"
    log "cannot resolve linux-image-amd64; re-using cached $KPKG"
  else
    die "cannot resolve the kernel package (apt-cache depends linux-image-amd64 gave nothing)"
  fi
fi

shopt -s nullglob
debs=("$CACHE/debs/${KPKG}_"*.deb)
if [ "${#debs[@]}" -eq 0 ]; then
  log "downloading $KPKG"
  apt_download "$CACHE/debs" "$KPKG"
  debs=("$CACHE/debs/${KPKG}_"*.deb)
  [ "${#debs[@]}" -gt 0 ] || die "apt-get download $KPKG produced no .deb"
fi
DEB="${debs[-1]}"
# Old kernel packages from previous linux-image-amd64 versions are of no further use.
for d in "$CACHE/debs/"linux-image-*.deb; do
  [ "$d" = "$DEB" ] || rm -f "$d"
done
shopt -u nullglob

DEB_ID="$(basename "$DEB")"
if [ "$(cat "$CACHE/root/.libnvm-deb" 2>/dev/null || true)" != "$DEB_ID" ]; then
  log "extracting $DEB_ID"
  rm -rf "$CACHE/root" "$CACHE/root.tmp"
  mkdir -p "$CACHE/root.tmp"
  dpkg -x "$DEB" "$CACHE/root.tmp"
  vers=("$CACHE/root.tmp/lib/modules/"*)
  [ "${#vers[@]}" -eq 1 ] && [ -d "${vers[0]}" ] || die "expected exactly one lib/modules/<version> in $DEB_ID"
  KVER_NEW="$(basename "${vers[0]}")"
  log "depmod -b root $KVER_NEW"
  depmod -b "$CACHE/root.tmp" "$KVER_NEW"
  echo "$KPKG" > "$CACHE/root.tmp/.libnvm-kpkg"
  mv "$CACHE/root.tmp" "$CACHE/root"
  echo "$DEB_ID" > "$CACHE/root/.libnvm-deb"   # written last: marks a complete extraction
fi
vers=("$CACHE/root/lib/modules/"*)
KVER="$(basename "${vers[0]}")"
MODDIR="$CACHE/root/lib/modules/$KVER"
[ -f "$MODDIR/modules.dep" ] || { log "depmod -b root $KVER"; depmod -b "$CACHE/root" "$KVER"; }

# --- vmlinux: the uncompressed kernel, out of the xz payload inside vmlinuz ------------------
if [ "$(cat "$CACHE/.stamp-vmlinux" 2>/dev/null || true)" != "$DEB_ID" ] || [ ! -s "$CACHE/vmlinux" ]; then
  VMLINUZ="$CACHE/root/boot/vmlinuz-$KVER"
  [ -f "$VMLINUZ" ] || die "missing $VMLINUZ"
  log "extracting vmlinux from vmlinuz-$KVER"
  rm -f "$CACHE/vmlinux.tmp"
  ok=0
  # Every offset of the xz stream magic FD 37 7A 58 5A 00; the first that decompresses to an ELF wins.
  for off in $(grep -obUaP '\xFD7zXZ\x00' "$VMLINUZ" | cut -d: -f1); do
    # --single-stream: stop after the first stream and ignore what follows it in the bzImage. (Not a
    # pipe: tail dies of SIGPIPE when xz stops reading, which pipefail would count as a failure.)
    if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$VMLINUZ") > "$CACHE/vmlinux.tmp" 2>/dev/null; then
      if [ "$(head -c 4 "$CACHE/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then
        ok=1
        break
      fi
    fi
  done
  [ "$ok" -eq 1 ] || die "could not find an xz-compressed ELF kernel in $VMLINUZ"
  mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
  echo "$DEB_ID" > "$CACHE/.stamp-vmlinux"
fi

# --- initrd.gz -------------------------------------------------------------------------------
BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] || BUSYBOX=/bin/busybox
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }
[ -x "$BUSYBOX" ] && file_is_static "$BUSYBOX" || die "busybox-static is not installed (no static $BUSYBOX)"

INIT_SRC="$SCRIPT_DIR/init.sh"
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"
INITRD_KEY="$(
  {
    echo "$DEB_ID"
    echo "${MODULES[*]}"
    echo "$CACHE"
    sha256sum "$INIT_SRC" "$BUSYBOX" "${BASH_SOURCE[0]}" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
)"
if [ "$(cat "$CACHE/.stamp-initrd" 2>/dev/null || true)" != "$INITRD_KEY" ] || [ ! -s "$CACHE/initrd.gz" ]; then
  log "building initrd.gz"
  STAGE="$CACHE/initramfs"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt/host,lib/modules}
  cp "$BUSYBOX" "$STAGE/bin/busybox"
  ln -s busybox "$STAGE/bin/sh"
  install -m 0755 "$INIT_SRC" "$STAGE/init"
  : > "$STAGE/etc/modules.order"
  for m in "${MODULES[@]}"; do
    # modules.dep knows every module file under its canonical (underscore) name.
    rel="$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n)
                                if (n == m) { print $1; exit } }' "$MODDIR/modules.dep")"
    if [ -z "$rel" ]; then
      if grep -qE "/${m//_/[-_]}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
        continue   # built into this kernel
      fi
      die "module $m not found in $MODDIR"
    fi
    src="$MODDIR/$rel"
    case "$src" in
      *.ko.xz)  xz -dc "$src" > "$STAGE/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$src" > "$STAGE/lib/modules/$m.ko" ;;
      *.ko.gz)  gzip -dc "$src" > "$STAGE/lib/modules/$m.ko" ;;
      *)        cp "$src" "$STAGE/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$STAGE/etc/modules.order"
  done
  cat > "$STAGE/etc/libnvm-vm.conf" <<EOF
LIBNVM_VM_KVER='$KVER'
LIBNVM_VM_MODROOT='$CACHE/root'
EOF
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$CACHE/initrd.gz.tmp")
  mv "$CACHE/initrd.gz.tmp" "$CACHE/initrd.gz"
  echo "$INITRD_KEY" > "$CACHE/.stamp-initrd"
fi

echo "$KVER" > "$CACHE/kernel-version.tmp" && mv "$CACHE/kernel-version.tmp" "$CACHE/kernel-version"
bash "$SCRIPT_DIR/build-module.sh" || die "the disnvm kernel module did not build (see above; rerun: bash test/vm/build-module.sh)"
log "ready: kernel $KVER in $CACHE"
