#!/usr/bin/env bash
# Installs Skiff's systemd units for this checkout (run scripts/install-deps first), as root.
# Usage: deploy/install.sh [--enable]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.venv"
[ -x "$venv/bin/skiff-highlevel" ] || { echo "install.sh: $venv missing: run scripts/install-deps first" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd (systemctl) not found" >&2; exit 1; }
for unit in skiff-highlevel skiff-daemon skiff-apiserver; do
  sed -e "s|@VENV@|$venv|g" -e "s|@PREFIX@|$here|g" "$here/deploy/$unit.service" \
    > "/etc/systemd/system/$unit.service"
done
systemctl daemon-reload
if [ "${1:-}" = "--enable" ]; then
  systemctl enable --now skiff-highlevel skiff-daemon skiff-apiserver
fi
echo "installed: skiff-highlevel, skiff-daemon, skiff-apiserver (systemctl start skiff-apiserver)"
