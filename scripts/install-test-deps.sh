#!/usr/bin/env bash
# Installs, as root, the Debian packages the integration suites run against:
# tgt (a real userspace iSCSI target), libiscsi's tools and qemu-img with
# iscsi:// support (independent peers), and Keystone + Cinder with their
# PostgreSQL and RabbitMQ. No service is started: the tests start their own.
set -euo pipefail
pkgs=(tgt libiscsi-bin qemu-utils qemu-block-extra
      keystone cinder-api cinder-scheduler cinder-volume
      rabbitmq-server postgresql python3-psycopg2 uwsgi-plugin-python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "test deps: all Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
# Keep package scripts from starting services: tests run their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi
echo "test deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
