#!/usr/bin/env bash
# Install the Debian packages the tests, the demo and the benchmarks use, when missing.
# Idempotent and quick when everything is already there.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [gcc]=gcc
  [qemu-system-x86_64]=qemu-system-x86
  [busybox]=busybox-static
  [cpio]=cpio
  [umoci]=umoci
  [skopeo]=skopeo
  [debootstrap]=debootstrap
  [docker-registry]=docker-registry
  [zstd]=zstd
  [fakeroot]=fakeroot
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# busybox must be the static one: it runs inside the guest's initramfs.
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || missing+=(busybox-static)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" file >/dev/null
