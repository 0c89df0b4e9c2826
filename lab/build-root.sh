#!/bin/bash
# Build (once, cached) a Debian root file system with Asterisk in
# lab/.cache/root, using debootstrap. Exits fast if it already exists.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root

if root_ready; then
    log "root already built: $LAB_ROOT"
    exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap missing (run lab/setup.sh)"

# The Debian archive URI from this machine's apt sources (not -security,
# not third-party repositories); fall back to deb.debian.org.
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        while read -r uri; do
            case "$uri" in
                *debian-security*|*security.debian.org*) ;;
                http://*/debian|https://*/debian|http://*/debian/|https://*/debian/)
                    echo "${uri%/}"; return 0 ;;
            esac
        done < <(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f")
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        while read -r uri; do
            case "$uri" in
                *debian-security*|*security.debian.org*) ;;
                http://*/debian|https://*/debian|http://*/debian/|https://*/debian/)
                    echo "${uri%/}"; return 0 ;;
            esac
        done < <(sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
                 | awk '$1 == "deb" { print $2 }')
    done
    echo "http://deb.debian.org/debian"
}

MIRROR="${LAB_MIRROR:-$(find_mirror)}"
mkdir -p "$LAB_CACHE"

# Remove leftovers of interrupted builds (unmounting anything debootstrap
# left mounted inside them first).
for old in "$LAB_CACHE"/root.tmp.*; do
    [ -d "$old" ] || continue
    log "removing leftover partial build $old"
    umount_under "$old"
    rm -rf --one-file-system "$old"
done

TMP="$LAB_CACHE/root.tmp.$$"
DB_PID=""
cleanup() {
    # debootstrap runs in its own process group: stop all of it (by its id).
    if [ -n "$DB_PID" ] && kill -0 "$DB_PID" 2>/dev/null; then
        log "stopping debootstrap (process group $DB_PID)"
        kill -TERM -- "-$DB_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DB_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$DB_PID" 2>/dev/null || true
    fi
    if [ -d "$TMP" ]; then
        log "build did not finish; removing $TMP"
        umount_under "$TMP"
        rm -rf --one-file-system "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "debootstrap $LAB_SUITE from $MIRROR into $TMP (takes a minute or a few)"
start=$(date +%s)
# In the background (own session) so that a signal to this script is acted
# on at once instead of after debootstrap ends.
setsid debootstrap --variant=minbase --include=asterisk,asterisk-modules \
    "$LAB_SUITE" "$TMP" "$MIRROR" >"$LAB_CACHE/debootstrap.log" 2>&1 </dev/null &
DB_PID=$!
db_rc=0
wait "$DB_PID" || db_rc=$?
DB_PID=""
if [ "$db_rc" -ne 0 ]; then
    tail -n 30 "$LAB_CACHE/debootstrap.log" >&2 || true
    [ -f "$TMP/debootstrap/debootstrap.log" ] && tail -n 30 "$TMP/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (full log: $LAB_CACHE/debootstrap.log)"
fi
umount_under "$TMP"
[ -x "$TMP/usr/sbin/asterisk" ] || die "debootstrap finished but $TMP/usr/sbin/asterisk is missing"

# Drop the package cache (about 100 MB of .debs) to keep the cache small.
rm -rf --one-file-system "$TMP"/var/cache/apt/archives/*.deb

# An earlier root without Asterisk (broken by hand?) is replaced.
if [ -e "$LAB_ROOT" ]; then
    umount_under "$LAB_ROOT"
    rm -rf --one-file-system "$LAB_ROOT"
fi
mv "$TMP" "$LAB_ROOT"
log "root ready: $LAB_ROOT ($(( $(date +%s) - start )) s, $(du -sh "$LAB_ROOT" | cut -f1))"
