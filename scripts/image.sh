#!/usr/bin/env bash
# Build the unsflow container image of deploy/Containerfile here, where no container
# registry is reachable, with buildah from Debian's packages.
#
#   scripts/image.sh build [TAG]   build TAG (default localhost/unsflow:<version>); print TAG
#   scripts/image.sh base          build only the base image; print its name
#
# The Containerfile's default base (python:3.11-slim-bookworm) lives in a registry,
# so the base here is made the other way: debootstrap writes a minimal Debian 12
# root with python3 and its venv module (from Debian's own packages), and an image
# `FROM scratch` adds that root as its one layer: localhost/unsflow-base:bookworm.
# The root's tarball is cached in ${UNSFLOW_CACHE_DIR:-~/.cache/unsflow}/image, so
# debootstrap runs once per machine. Then `buildah build --build-arg BASE_IMAGE=...`
# runs the Containerfile unchanged, its pip pointed (by a pip.conf mounted for the
# build only) at a wheelhouse this checkout's Python fills from PyPI beforehand.
#
# Needs root (debootstrap, chroot): run as root or with sudo. Installs buildah and
# debootstrap with apt-get when missing. RUN steps use chroot isolation (no
# container runtime, no user namespaces), and the vfs storage driver (no overlay
# mounts needed); the image store is buildah's default (/var/lib/containers).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac
IMAGE_CACHE=$CACHE/image
SUITE=bookworm
MIRROR=${UNSFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv,ca-certificates
# A change of suite or packages makes a new root (and base image).
BASE_KEY=$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-10)
ROOTFS_TAR=$IMAGE_CACHE/debian-$SUITE-python-$BASE_KEY.tar
BASE_IMAGE=localhost/unsflow-base:$SUITE-$BASE_KEY
WHEELS=$IMAGE_CACHE/wheels
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

log() { printf 'image: %s\n' "$*" >&2; }
die() {
    printf 'image: error: %s\n' "$*" >&2
    exit 1
}

# as_root (debootstrap and buildah's chroot builds need root), apt_install
# shellcheck source=scripts/lib.sh
. "$REPO_ROOT/scripts/lib.sh"

ensure_packages() {
    local missing=()
    command -v buildah >/dev/null 2>&1 || missing+=(buildah)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_install "${missing[@]}" >/dev/null
}

buildah_() { as_root env STORAGE_DRIVER="$STORAGE_DRIVER" BUILDAH_ISOLATION="$BUILDAH_ISOLATION" buildah "$@"; }

rootfs() {
    [ -s "$ROOTFS_TAR" ] && return 0
    local work start
    mkdir -p "$IMAGE_CACHE"
    work=$(mktemp -d "$IMAGE_CACHE/root.XXXXXX")
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR: once per machine, about a minute"
    start=$SECONDS
    as_root debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$work/root" "$MIRROR" \
        >"$IMAGE_CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; last lines of $IMAGE_CACHE/debootstrap.log:
$(tail -n 20 "$IMAGE_CACHE/debootstrap.log")"
    # What a container never needs: package lists and caches, documentation.
    as_root rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
        "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc" \
        "$work/root/usr/share/man" "$work/root/usr/share/info"
    as_root tar --numeric-owner -C "$work/root" -cf "$ROOTFS_TAR.tmp" .
    as_root rm -rf "$work"
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    log "root of $(du -h "$ROOTFS_TAR" | cut -f1) in $((SECONDS - start)) s: $ROOTFS_TAR"
}

# The wheels of unsflow and of everything the Containerfile's EXTRAS pull in, built and
# downloaded here with this checkout's Python (3.11, as the base's), so that the build
# itself needs no index: pip's own cache makes a rebuild take seconds, not a download.
wheelhouse() {
    local python extras
    python=${UNSFLOW_PYTHON:-$REPO_ROOT/.venv/bin/python}
    [ -x "$python" ] || python=$(command -v python3) ||
        die "no Python to build the wheels with: run scripts/setup.sh first"
    extras=$(sed -n 's/^ARG EXTRAS=//p' "$REPO_ROOT/deploy/Containerfile")
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/unsflow-*.whl
    log "wheels of unsflow[$extras] into $WHEELS"
    "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$WHEELS" \
        "$REPO_ROOT[$extras]" "setuptools>=68" wheel >"$IMAGE_CACHE/wheels.log" 2>&1 ||
        die "pip wheel failed; see $IMAGE_CACHE/wheels.log"
}

base() {
    ensure_packages
    if buildah_ inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "$BASE_IMAGE"
        return 0
    fi
    rootfs
    local ctx
    ctx=$(mktemp -d)
    ln "$ROOTFS_TAR" "$ctx/rootfs.tar" 2>/dev/null || cp "$ROOTFS_TAR" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/usr/bin/python3"]\n' >"$ctx/Containerfile"
    log "building $BASE_IMAGE FROM scratch on the debootstrap root"
    buildah_ build --quiet -f "$ctx/Containerfile" -t "$BASE_IMAGE" "$ctx" >/dev/null ||
        die "buildah could not build $BASE_IMAGE"
    rm -rf "$ctx"
    echo "$BASE_IMAGE"
}

build() {
    local tag=${1:-} version start since
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n 1)
    tag=${tag:-localhost/unsflow:$version}
    base >/dev/null
    wheelhouse
    # The build's pip installs from the wheelhouse only: a pip.conf and the wheels are
    # mounted for the build's RUN steps, never part of the image.
    printf '[global]\nno-index = true\nfind-links = /wheels\n' >"$IMAGE_CACHE/pip.conf"
    local mounts=(--volume "$WHEELS:/wheels:ro" --volume "$IMAGE_CACHE/pip.conf:/etc/pip.conf:ro")
    log "building $tag from deploy/Containerfile on $BASE_IMAGE"
    start=$SECONDS
    since=$(date -u +%Y-%m-%dT%H:%M:%S)
    buildah_ build --layers -f "$REPO_ROOT/deploy/Containerfile" "${mounts[@]}" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$tag" "$REPO_ROOT" >&2 ||
        die "buildah build of deploy/Containerfile failed (output above)"
    log "built $tag in $((SECONDS - start)) s"
    # vfs keeps every layer as a whole copy: drop the untagged images of earlier builds,
    # keeping this build's intermediate ones (the layer cache of the next build).
    local old
    old=$(buildah_ images --all --json 2>/dev/null | python3 -c '
import json, sys
since = sys.argv[1]
for image in json.load(sys.stdin) or []:
    if not image.get("names") and image.get("createdatraw", "") < since:
        print(image["id"])' "$since") || old=""
    if [ -n "$old" ]; then
        # shellcheck disable=SC2086 # one id per word
        buildah_ rmi $old >/dev/null 2>&1 || true
    fi
    echo "$tag"
}

case ${1:-} in
build) build "${2:-}" ;;
base) base ;;
*) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
