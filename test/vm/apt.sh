# shellcheck shell=bash
# Debian packages for the test/vm scripts: sourced (not run) by setup.sh and build-module.sh, after
# they define log() and set -euo pipefail, which stay in force in these functions.
#
#   apt_install_missing PKG...   install those of PKG... not installed ("install ok installed")
#   apt_update_once              apt-get update, at most once per shell (a subshell has its own count)
#   apt_download DIR PKG[=VER]...  apt-get download into DIR; on failure apt_update_once and retry
#
# apt-get runs through sudo when not root and sudo exists.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo" || true
fi

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
}

apt_install_missing() {
  local p
  local missing=()
  for p in "$@"; do
    # "install ok installed" only: a removed-but-not-purged package also answers dpkg -s.
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "installing: ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

apt_download() {
  local dir="$1"
  shift
  # apt-get download drops privileges to _apt when it can; a dir it cannot write to only produces
  # a warning, and the download then happens as root.
  (cd "$dir" && apt-get download "$@" 2> >(grep -v 'unsandboxed' >&2)) \
    || { apt_update_once; (cd "$dir" && apt-get download "$@"); }
}
