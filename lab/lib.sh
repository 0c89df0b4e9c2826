# shellcheck shell=bash
# Shared settings for the lab scripts. Source this file; do not run it.
#
# Environment overrides:
#   LAB_CACHE            cache directory            (default: lab/.cache)
#   LAB_ROOT             Asterisk root file system  (default: $LAB_CACHE/root)
#   LAB_ARI_USER         ARI user                   (default: voiceline)
#   LAB_ARI_PASSWORD     ARI password               (default: voiceline-lab)
#   LAB_AUDIOSOCKET_PORT AudioSocket TCP port used by the `audiosocket`
#                        extension (configure time) (default: 9092)
#   LAB_SUITE            Debian suite for the root  (default: sid)
#   LAB_MIRROR           Debian mirror URI          (default: from apt sources)
#   LAB_START_TIMEOUT    seconds to wait for ARI    (default: 30)

# shellcheck disable=SC2034  # the settings below are used by the scripts sourcing this
LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_CACHE="${LAB_CACHE:-$LAB_DIR/.cache}"
LAB_ROOT="${LAB_ROOT:-$LAB_CACHE/root}"
LAB_SUITE="${LAB_SUITE:-sid}"
LAB_ARI_USER="${LAB_ARI_USER:-voiceline}"
LAB_ARI_PASSWORD="${LAB_ARI_PASSWORD:-voiceline-lab}"
LAB_AUDIOSOCKET_PORT="${LAB_AUDIOSOCKET_PORT:-9092}"
LAB_HTTP_HOST=127.0.0.1
LAB_HTTP_PORT=8088
LAB_SIP_PORT=5060
LAB_RTP_START=20000
LAB_RTP_END=20999
LAB_START_TIMEOUT="${LAB_START_TIMEOUT:-30}"
LAB_PIDFILE="$LAB_CACHE/asterisk.pid"
LAB_OUT="$LAB_CACHE/asterisk.out"
LAB_ARI_URL="http://$LAB_HTTP_HOST:$LAB_HTTP_PORT/ari"

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$(basename "$0") must run as root (it uses chroot/mount)"
}

# Mount points strictly below $1 (deepest first), read from /proc/self/mounts.
mounts_under() {
    local dir
    dir="$(readlink -f "$1")"
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts \
        | sed 's/\\040/ /g' | sort -r
}

# Unmount everything below $1 (lazy as a last resort).
umount_under() {
    local m
    [ -d "$1" ] || return 0
    while IFS= read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null \
            || log "warning: could not unmount $m"
    done < <(mounts_under "$1")
}

# Host path of PATH inside the root, resolving symlinks the way the chroot
# sees them (e.g. /var/run -> /run is an absolute link in the root).
in_root() {
    local p
    p="$(chroot "$LAB_ROOT" /usr/bin/readlink -m "$1" 2>/dev/null)" || p="$1"
    echo "$LAB_ROOT$p"
}

root_ready() { [ -x "$LAB_ROOT/usr/sbin/asterisk" ]; }

# PID of the running lab Asterisk (empty if none). The pid from the pid
# file only counts if that process really runs inside our root.
lab_pid() {
    local pid
    [ -f "$LAB_PIDFILE" ] || return 0
    pid="$(cat "$LAB_PIDFILE" 2>/dev/null || true)"
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    if kill -0 "$pid" 2>/dev/null \
            && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$(readlink -f "$LAB_ROOT")" ]; then
        echo "$pid"
    fi
}

ari_info() {
    curl -sf --max-time 2 -u "$LAB_ARI_USER:$LAB_ARI_PASSWORD" \
        "$LAB_ARI_URL/asterisk/info"
}

lab_cli() {
    chroot "$LAB_ROOT" /usr/sbin/asterisk -rx "$1"
}
