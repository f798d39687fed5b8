#!/usr/bin/env bash
# Installs Prometheus from Debian's packages when it is missing. The Prometheus
# metrics source is tested against this real server.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "error: prometheus is not installed and this user cannot install packages. Install it: apt-get install prometheus" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "[setup] installing prometheus (Debian package) for the Prometheus-source tests"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# --no-install-recommends: the server only, no node exporter and friends
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on :9090 where an init system runs; tests start their own.
$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
command -v prometheus >/dev/null
