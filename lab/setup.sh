#!/bin/bash
# One-shot lab setup on a Debian machine (as root): host tools, the cached
# Asterisk root (lab/.cache/root) and its configuration. Fast when cached.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root

# command -> Debian package providing it
declare -A TOOLS=(
    [debootstrap]=debootstrap
    [sipp]=sip-tester
    [tshark]=tshark
    [espeak-ng]=espeak-ng
    [sox]=sox
    [curl]=curl
)
missing=()
for cmd in "${!TOOLS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${TOOLS[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "apt-get not found; install: ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' \
        | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$LAB_DIR/build-root.sh"
"$LAB_DIR/configure.sh"
log "lab ready; start it with lab/start.sh"
