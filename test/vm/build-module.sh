#!/usr/bin/env bash
# Build the disnvm kernel module (module/) against Debian's kernel headers, out of tree:
#
#   module/build/<guest kernel>/disnvm.ko     the one the guest tests insmod (<cache>/kernel-version)
#   module/build/<newest 6.12>/disnvm.ko      builds on 6.12 (newest linux-headers-6.12.*-amd64); the
#                                             dma-buf suite's guest (k612/) loads it
#
# Both must build, or this exits 1. Idempotent: the headers are downloaded and extracted once per
# version into ${LIBNVM_VM_CACHE:-<repo>/.cache/vm}/headers/<version>/ (stamp .libnvm-debs), and a
# module is rebuilt only when its sources, the headers or this script changed (stamp .libnvm-stamp).
#
# Headers: linux-headers-<ver>, linux-headers-<ver>-common (linux-headers-<abi>-common) and the
# linux-kbuild package the headers depend on, all of the same package version, dpkg -x'd into ONE root
# (their scripts/ and tools/ links are relative). The flavour Makefile includes the -common Makefile by
# absolute /usr/src/... path: it is rewritten to the extracted copy. See /work/shared/docs/qemu-guest.md.
#
#   bash test/vm/build-module.sh            (run by test/vm/setup.sh)
#   DISNVM_KVERS="6.1.0-56-amd64" bash test/vm/build-module.sh    only these kernel versions
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${LIBNVM_VM_CACHE:-$REPO/.cache/vm}"
MODSRC="$REPO/module"
UAPI="$REPO/c/include/disnvm_ioctl.h"
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

log() { echo "build-module.sh: $*" >&2; }
die() { echo "build-module.sh: error: $*" >&2; exit 1; }

# apt_install_missing, apt_update_once, apt_download
source "$SCRIPT_DIR/apt.sh"

for f in "$MODSRC/disnvm.c" "$MODSRC/Kbuild" "$UAPI"; do
  [ -f "$f" ] || die "missing $f"
done

# ---------------------------------------------------------------------------------------------
# Tools, as checked on Debian 12: gcc-12 (the compiler both kernels were built with) and make;
# libelf1 for the prebuilt kbuild tools (6.1's objtool, 6.12's resolve_btfids); dwarves (pahole)
# because 6.12's headers ship a vmlinux, so module BTF is generated there (CONFIG_PAHOLE_VERSION=124,
# bookworm's pahole); kmod for modinfo. bc and libelf-dev are not needed for an external module.
PACKAGES=(gcc-12 make libelf1 kmod dwarves)
apt_install_missing "${PACKAGES[@]}"

# ---------------------------------------------------------------------------------------------
# Headers for one kernel version: echo the root they were extracted into.

# Package version of the headers: the guest kernel's own package version when its .deb is cached
# (the default kernel in debs/, 6.12 in k612/debs/: see setup.sh), so the headers are exactly those
# of the kernel that boots; else apt's candidate.
pkg_version() {
  local kver="$1" deb
  shopt -s nullglob
  local debs=("$CACHE/debs/linux-image-${kver}_"*.deb "$CACHE/k612/debs/linux-image-${kver}_"*.deb)
  shopt -u nullglob
  if [ "${#debs[@]}" -gt 0 ]; then
    deb="${debs[-1]}"
    dpkg-deb -f "$deb" Version
    return
  fi
  apt-cache policy "linux-headers-$kver" 2>/dev/null | awk '/Candidate:/ { print $2; exit }'
}

# The linux-kbuild-* package named in the headers package's Depends (linux-kbuild-6.1 on 6.1,
# linux-kbuild-6.12.117+deb12 on 6.12), for the given headers version.
kbuild_pkg() {
  local kver="$1" ver="$2"
  apt-cache show "linux-headers-$kver=$ver" 2>/dev/null \
    | awk -F': ' '/^Depends:/ { print $2; exit }' | tr ',' '\n' \
    | sed -nE 's/^ *(linux-kbuild-[^ ]+).*/\1/p' | head -n1
}

# The -common package named in the Depends (linux-headers-6.1.0-56-common, ...-6.12.117+deb12-common).
common_pkg() {
  local kver="$1" ver="$2"
  apt-cache show "linux-headers-$kver=$ver" 2>/dev/null \
    | awk -F': ' '/^Depends:/ { print $2; exit }' | tr ',' '\n' \
    | sed -nE 's/^ *(linux-headers-[^ ]+-common).*/\1/p' | head -n1
}

headers_root() {
  local kver="$1" ver kb common
  local dir="$CACHE/headers/$kver"
  ver="$(pkg_version "$kver")"
  if [ -z "$ver" ] || [ -z "$(kbuild_pkg "$kver" "$ver")" ]; then
    apt_update_once
    ver="$(pkg_version "$kver")"
  fi
  [ -n "$ver" ] || die "no package version for linux-headers-$kver (apt-cache policy linux-headers-$kver)"
  kb="$(kbuild_pkg "$kver" "$ver")"
  common="$(common_pkg "$kver" "$ver")"
  [ -n "$kb" ] || die "linux-headers-$kver=$ver names no linux-kbuild-* package in its Depends"
  [ -n "$common" ] || die "linux-headers-$kver=$ver names no -common headers package in its Depends"
  local want="linux-headers-$kver=$ver $common=$ver $kb=$ver"
  if [ "$(cat "$dir/.libnvm-debs" 2>/dev/null || true)" = "$want" ] && [ -d "$dir/root/usr/src/linux-headers-$kver" ]; then
    echo "$dir/root"
    return
  fi
  log "headers for $kver: $want"
  rm -rf "$dir"
  mkdir -p "$dir/debs" "$dir/root.tmp"
  # shellcheck disable=SC2086
  apt_download "$dir/debs" $want >&2 || die "apt-get download $want failed"
  local d
  for d in "$dir/debs/"*.deb; do
    dpkg -x "$d" "$dir/root.tmp"
  done
  local top="$dir/root.tmp/usr/src/linux-headers-$kver"
  [ -f "$top/Makefile" ] || die "no $top/Makefile after extracting $want"
  # The flavour Makefile includes the -common tree by absolute path; point it at the extracted copy
  # (otherwise the build fails, or silently uses a copy installed on this machine).
  sed -i -E "s#([[:space:]]|^)/usr/src/linux-headers-#\1$dir/root/usr/src/linux-headers-#g" "$top/Makefile"
  grep -q "$dir/root/usr/src/" "$top/Makefile" || die "$top/Makefile: no /usr/src/ include to rewrite"
  rm -rf "$dir/debs"
  mv "$dir/root.tmp" "$dir/root"
  echo "$want" > "$dir/.libnvm-debs"   # written last: marks a complete extraction
  echo "$dir/root"
}

# ---------------------------------------------------------------------------------------------
# Build one module.
build_one() {
  local kver="$1" root out key
  root="$(headers_root "$kver")"
  out="$MODSRC/build/$kver"
  key="$(
    {
      cat "$CACHE/headers/$kver/.libnvm-debs"
      sha256sum "$MODSRC/disnvm.c" "$MODSRC/Kbuild" "$UAPI" "${BASH_SOURCE[0]}" | cut -d' ' -f1
    } | sha256sum | cut -d' ' -f1
  )"
  if [ "$(cat "$out/.libnvm-stamp" 2>/dev/null || true)" = "$key" ] && [ -s "$out/disnvm.ko" ]; then
    log "up to date: module/build/$kver/disnvm.ko"
    return 0
  fi
  log "building module/build/$kver/disnvm.ko"
  rm -rf "$out"
  mkdir -p "$out"
  # Sources are copied: the kernel's build writes its objects next to them, module/ stays clean.
  cp "$MODSRC/disnvm.c" "$MODSRC/Kbuild" "$UAPI" "$out/"
  if ! make -C "$root/usr/src/linux-headers-$kver" M="$out" CC=gcc-12 HOSTCC=gcc-12 modules > "$out/build.log" 2>&1; then
    cat "$out/build.log" >&2
    die "module build for $kver failed (log: module/build/$kver/build.log)"
  fi
  # A warning is a defect here: the module must build cleanly on every supported kernel.
  if grep -E 'warning:' "$out/build.log" | grep -v 'Skipping BTF generation' >&2; then
    die "module build for $kver printed warnings (log: module/build/$kver/build.log)"
  fi
  [ -s "$out/disnvm.ko" ] || die "no disnvm.ko for $kver"
  local vm
  vm="$(modinfo -F vermagic "$out/disnvm.ko" 2>/dev/null | cut -d' ' -f1)"
  [ "$vm" = "$kver" ] || die "module/build/$kver/disnvm.ko has vermagic '$vm', expected $kver"
  echo "$key" > "$out/.libnvm-stamp"
  log "built module/build/$kver/disnvm.ko (vermagic $vm)"
}

if [ "${1:-}" = "--one" ]; then
  build_one "$2"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Which kernels.
guest_kver() {
  [ -f "$CACHE/kernel-version" ] || die "$CACHE/kernel-version is missing: run test/vm/setup.sh first"
  tr -d ' \n' < "$CACHE/kernel-version"
}

# The newest linux-headers-6.12.<n>+deb<m>-amd64 (the plain -amd64 flavour, not -cloud or -rt).
newest_612() {
  apt-cache pkgnames linux-headers-6.12 2>/dev/null \
    | grep -E '^linux-headers-6\.12\.[0-9]+(\+deb[0-9]+)?-amd64$' \
    | sed 's/^linux-headers-//' | sort -V | tail -n1
}

if [ -n "${DISNVM_KVERS:-}" ]; then
  read -r -a KVERS <<< "$DISNVM_KVERS"
else
  K612="$(newest_612 || true)"
  if [ -z "$K612" ]; then
    apt_update_once
    K612="$(newest_612 || true)"
  fi
  [ -n "$K612" ] || die "no linux-headers-6.12.*-amd64 package found (apt-cache pkgnames linux-headers-6.12)"
  KVERS=("$(guest_kver)" "$K612")
fi

# Each version in its own process (set -e stays in force there): a failed 6.1 build still tries 6.12,
# and the script fails when either did.
rc=0
for kver in "${KVERS[@]}"; do
  bash "${BASH_SOURCE[0]}" --one "$kver" || { log "FAILED for $kver"; rc=1; }
done
exit "$rc"
