#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use as real peers and stand-ins:
# xdelta3, zstd, brotli and bsdiff (codec peers), docker-registry (the device's OCI registry),
# skopeo and umoci (image tooling), mosquitto (MQTT broker for the IoT Hub device SDK),
# apache2-utils (htpasswd: bcrypt users for the registry's basic-auth test mode), git (a
# git archive is one of the real tars the tar reader is tested on), mmdebstrap (Debian root
# file systems for `npm run bench`), time (/usr/bin/time -v: peak RSS in the benchmarks) and
# binutils (readelf: an independent reading of ELF program headers for the x86 filter's tests).
set -euo pipefail
packages=(xdelta3 zstd brotli bsdiff docker-registry skopeo umoci mosquitto openssl apache2-utils git mmdebstrap time binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-debian: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The packaged registry and broker start as system services on some machines; the tests run their own.
for svc in docker-registry mosquitto; do
  $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
