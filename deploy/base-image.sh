#!/usr/bin/env bash
# Build Burst's local Python base image (burst-base:py311, also tagged python:3.11-slim)
# on a machine with no container registry: debootstrap a minimal Debian bookworm from the
# mirror this machine's apt sources name, add Python, and `docker import` it.
#
#   deploy/base-image.sh            build unless the image exists
#   deploy/base-image.sh --force    rebuild
#
# Needs root, debootstrap and a Docker engine (DOCKER_HOST is honoured). Registry and mirror
# hostnames are read from this machine's configuration, never written here. The machine's
# extra CA certificates and /etc/pip.conf are copied in, so `pip install` inside image
# builds reaches the same package index the machine uses.
set -euo pipefail

TAG=burst-base:py311
ALIAS=python:3.11-slim
force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG: present"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base-image.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: apt-get install debootstrap" >&2; exit 1; }

# The Debian mirror: the first non-security URI of the machine's apt sources (deb822 or
# one-line format).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; if (u !~ /security/) { print u; exit } }')
fi
[ -n "$mirror" ] || { echo "base-image.sh: no Debian mirror in /etc/apt/sources*" >&2; exit 1; }

t0=$SECONDS
work=$(mktemp -d /tmp/burst-base.XXXXXX)
root="$work/root"
cleanup() {
    for m in proc sys dev; do umount -l "$root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> debootstrap bookworm (minbase) from the machine's mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# The machine's apt sources, CA certificates and pip configuration.
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
mkdir -p "$root/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"

echo "==> python3 into the image"
mount -t proc proc "$root/proc"
chroot "$root" /bin/sh -c '
    set -e
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3 python3-venv python3-pip \
        python-is-python3 ca-certificates
    update-ca-certificates
    apt-get clean
' >"$work/chroot.log" 2>&1 || { tail -30 "$work/chroot.log" >&2; exit 1; }
umount -l "$root/proc"

# pip may install into the system interpreter (the image is the environment).
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
: >"$root/etc/resolv.conf"

echo "==> docker import $TAG"
tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >/dev/null
docker tag "$TAG" "$ALIAS"
echo "base image $TAG ($ALIAS) built in $((SECONDS - t0)) s"
