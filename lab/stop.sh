#!/bin/bash
# Stop the lab Asterisk and unmount what start.sh mounted. Idempotent.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root

# Processes running inside our root (their / is the root): covers the case
# where the pid file was lost. Matches by root directory, never by name.
root_pids() {
    local p r want
    want="$(readlink -f "$LAB_ROOT" 2>/dev/null)" || return 0
    for p in /proc/[0-9]*; do
        r="$(readlink "$p/root" 2>/dev/null)" || continue
        [ "$r" = "$want" ] && echo "${p#/proc/}"
    done
    return 0
}

alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

wait_gone() {  # wait_gone SECONDS PID...
    local t=$(( $1 * 10 )); shift
    while [ "$t" -gt 0 ] && alive "$@"; do sleep 0.1; t=$(( t - 1 )); done
    ! alive "$@"
}

pids=()
pid="$(lab_pid)"
[ -n "$pid" ] && pids+=("$pid")
while read -r p; do [ -n "$p" ] && [ "$p" != "$pid" ] && pids+=("$p"); done < <(root_pids)

if [ ${#pids[@]} -gt 0 ]; then
    log "stopping Asterisk (pids ${pids[*]})"
    if [ -S "$(in_root /var/run/asterisk/asterisk.ctl)" ]; then
        timeout 10 chroot "$LAB_ROOT" /usr/sbin/asterisk -rx 'core stop now' >/dev/null 2>&1 || true
    fi
    if ! wait_gone 10 "${pids[@]}"; then
        log "still running; sending SIGTERM"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        if ! wait_gone 5 "${pids[@]}"; then
            log "still running; sending SIGKILL"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            wait_gone 5 "${pids[@]}" || die "could not stop pids ${pids[*]}"
        fi
    fi
else
    log "Asterisk is not running"
fi
rm -f "$LAB_PIDFILE"
umount_under "$LAB_ROOT"
left="$(mounts_under "$LAB_ROOT")"
[ -z "$left" ] || die "still mounted: $left"
log "stopped"
