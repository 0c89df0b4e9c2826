#!/bin/bash
# Start the lab Asterisk (chrooted into lab/.cache/root) in the background
# and wait until ARI answers. Idempotent: returns at once if already up.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
root_ready || die "no Asterisk root at $LAB_ROOT (run lab/setup.sh first)"
[ -d "$LAB_ROOT/etc/asterisk.dist" ] || die "root is not configured (run lab/configure.sh)"
command -v curl >/dev/null || die "curl missing (run lab/setup.sh)"

pid="$(lab_pid)"
if [ -n "$pid" ]; then
    if ari_info >/dev/null; then
        log "Asterisk already running (pid $pid), ARI at $LAB_ARI_URL"
        exit 0
    fi
    die "Asterisk pid $pid is running but ARI does not answer; run lab/stop.sh"
fi
if curl -s --max-time 2 -o /dev/null "http://$LAB_HTTP_HOST:$LAB_HTTP_PORT/"; then
    die "something else already listens on $LAB_HTTP_HOST:$LAB_HTTP_PORT"
fi

# Kernel file systems the chroot needs.
mountpoint -q "$LAB_ROOT/proc" || mount -t proc proc "$LAB_ROOT/proc"
# debootstrap creates device nodes; if they are unusable (nodev mount), bind /dev.
if ! mountpoint -q "$LAB_ROOT/dev" \
        && ! head -c 1 "$LAB_ROOT/dev/urandom" >/dev/null 2>&1; then
    log "device nodes in the root are unusable; bind-mounting /dev"
    mount --bind /dev "$LAB_ROOT/dev"
fi

for d in /var/lib/asterisk /var/lib/asterisk/keys /var/spool/asterisk /var/log/asterisk \
         /var/run/asterisk /var/cache/asterisk; do
    d="$(in_root "$d")"
    mkdir -p "$d"
    chown -R root:root "$d"
done
rundir="$(in_root /var/run/asterisk)"
rm -f "$rundir/asterisk.ctl" "$rundir/asterisk.pid"

mkdir -p "$LAB_CACHE"
: >"$LAB_OUT"
# -f: stay in the foreground (we background it), -n: no colours,
# -U/-G: run as root inside the chroot (file ownership is root there),
# -p: real-time priority, as Asterisk is run in production: its RTP timing must not
#     wait behind sipp, tshark and the test suite on the same two cores.
setsid chroot "$LAB_ROOT" /usr/sbin/asterisk -f -n -p -U root -G root \
    </dev/null >>"$LAB_OUT" 2>&1 &
pid=$!
echo "$pid" >"$LAB_PIDFILE"
log "Asterisk starting (pid $pid, output: $LAB_OUT)"

deadline=$(( $(date +%s) + LAB_START_TIMEOUT ))
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$LAB_OUT" >&2 || true
        rm -f "$LAB_PIDFILE"
        umount_under "$LAB_ROOT"
        die "Asterisk exited during start-up (see $LAB_OUT)"
    fi
    if ari_info >/dev/null; then
        break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 40 "$LAB_OUT" >&2 || true
        die "ARI did not answer $LAB_ARI_URL/asterisk/info within ${LAB_START_TIMEOUT}s; Asterisk left running (pid $pid) -- run lab/stop.sh"
    fi
    sleep 0.3
done
log "Asterisk up (pid $pid); ARI $LAB_ARI_URL user $LAB_ARI_USER"
