#!/usr/bin/env bash
# Skiff's systemd units for this checkout (run scripts/install-deps first), as root.
# Usage: deploy/install.sh [--enable]   install the units and the `skiff` group (--enable: and start them)
#        deploy/install.sh uninstall    stop, disable and remove the units (containers keep running;
#                                       the `skiff` group and the state under /var/lib/skiff stay)
#        deploy/install.sh render DIR   only write the units, filled in for this checkout, into DIR
# To try them under a real systemd without touching the host's: scripts/dev-systemd-boot boots one as
# PID 1 in private namespaces (tests/e2e/test_systemd_boot.py does so, then runs this script inside).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.venv"
units=(skiff-highlevel.service skiff-daemon.service skiff-apiserver.service skiff.socket skiff-cri.service)
target=/etc/systemd/system

render() {
  local dir="$1" unit
  mkdir -p "$dir"
  for unit in "${units[@]}"; do
    sed -e "s|@VENV@|$venv|g" -e "s|@PREFIX@|$here|g" "$here/deploy/$unit" > "$dir/$unit"
  done
}

case "${1:-}" in
  render)
    [ -n "${2:-}" ] || { echo "install.sh: render needs a folder" >&2; exit 2; }
    render "$2"
    exit 0 ;;
  uninstall)
    command -v systemctl >/dev/null || { echo "install.sh: systemd (systemctl) not found" >&2; exit 1; }
    # The services stop; with KillMode=process their containers (and shims) keep running.
    systemctl disable --now skiff-cri skiff.socket skiff-apiserver skiff-daemon skiff-highlevel 2>/dev/null || true
    for unit in "${units[@]}"; do rm -f "$target/$unit"; done
    systemctl daemon-reload
    echo "uninstalled: ${units[*]} (group skiff and /var/lib/skiff left in place)"
    exit 0 ;;
  ""|--enable) ;;
  *) echo "install.sh: unknown argument: $1 (use --enable, uninstall or render DIR)" >&2; exit 2 ;;
esac

[ -x "$venv/bin/skiff-highlevel" ] || { echo "install.sh: $venv missing: run scripts/install-deps first" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd (systemctl) not found" >&2; exit 1; }
# The API socket's group, as docker's: its members may use the engine (and so are root-equivalent).
getent group skiff >/dev/null || groupadd --system skiff
render "$target"
systemctl daemon-reload
if [ "${1:-}" = "--enable" ]; then
  systemctl enable --now skiff.socket skiff-highlevel skiff-daemon skiff-apiserver skiff-cri
fi
echo "installed: ${units[*]} (systemctl start skiff-apiserver, or just connect to /run/skiff/skiff.sock; kubelet: systemctl start skiff-cri)"
