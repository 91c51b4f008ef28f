#!/bin/sh
# featcache-entrypoint: the image's entrypoint. Runs the command it is given, after two things:
#
# 1. Weights. When no FEATCACHE_WEIGHTS is set and a real file is mounted at
#    /weights/vgg16_notop.h5 (compose.yaml mounts FEATCACHE_WEIGHTS_FILE there), use it. Without
#    that variable compose mounts an empty placeholder there instead (compose cannot make a
#    mount conditional), which is ignored: the weights baked into the image are used.
#
# 2. Who runs it. The image's user is the unprivileged `app` (uid 10001), and so is every
#    container started the ordinary way: then this only runs the command. The compose jobs that
#    write into host folders (first-head, extract, train-head) start as root instead, with
#    FEATCACHE_RUN_AS_OWNER_OF naming the folder they write, and this drops root at once for
#    the owner of that folder, so that what they write on the host belongs to whoever owns the
#    folder (you), not to root or to a uid 10001 that cannot write there. Nothing on the host
#    is ever chowned, and the job never runs as the host's root:
#    - the folder belongs to root (made by the Docker daemon for a missing path, or a root
#      checkout): the job stops, saying which FEATCACHE_UID to pass (or to give the folder to
#      your user first);
#    - a rootless engine (rootless Docker or Podman) shows your own files as root's: container
#      root is you there, not the host's root, so the job keeps it.
#    FEATCACHE_UID / FEATCACHE_GID pick the user explicitly instead; 0 (root) is refused.
set -eu

fail() {
    echo "featcache-entrypoint: $*" >&2
    exit 64
}

if [ -z "${FEATCACHE_WEIGHTS:-}" ] && [ -s /weights/vgg16_notop.h5 ]; then
    export FEATCACHE_WEIGHTS=/weights/vgg16_notop.h5
fi

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

# Container root is the host's root unless uid 0 maps elsewhere (a user namespace: rootless).
rootless() {
    ! awk 'NR == 1 && $1 == 0 && $2 == 0 && $3 == 4294967295 { ok = 1 } END { exit !ok }' \
        /proc/self/uid_map
}

uid="${FEATCACHE_UID:-}"
gid="${FEATCACHE_GID:-}"
for n in "$uid" "$gid"; do
    case "$n" in
        "") ;;
        *[!0-9]*) fail "FEATCACHE_UID and FEATCACHE_GID take numeric ids; got '$n'" ;;
        *) [ "$n" -ne 0 ] || fail "FEATCACHE_UID=0 / FEATCACHE_GID=0 (root) is refused: the" \
            "jobs never run as root. Pass your own ids instead: FEATCACHE_UID=\$(id -u)" \
            "FEATCACHE_GID=\$(id -g), run on the host" ;;
    esac
done
folder="${FEATCACHE_RUN_AS_OWNER_OF:-}"
if [ -z "$uid" ] && [ -n "$folder" ] && [ -d "$folder" ]; then
    uid=$(stat -c %u "$folder")
    gid=$(stat -c %g "$folder")
    if [ "$uid" = 0 ]; then
        if rootless; then
            exec "$@"
        fi
        fail "$folder, a folder of the host, belongs to root; the job never runs as root and" \
            "never changes a host folder's owner. Mount a folder you own, or pass the user to" \
            "run as (one who may write that folder): FEATCACHE_UID=\$(id -u)" \
            "FEATCACHE_GID=\$(id -g), run on the host."
    fi
    [ "$gid" != 0 ] || gid="$uid"  # a folder of your own in root's group: never gid 0
fi
uid="${uid:-10001}"
gid="${gid:-$uid}"
# HOME is still root's; caches (ONNX exports, matplotlib) need one this user can write.
if [ "$uid" = 10001 ]; then
    export HOME=/home/app
else
    export HOME=/tmp
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
