#!/bin/bash
# Show whether the lab Asterisk runs, and what ARI reports.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
pid="$(lab_pid)"
if [ -z "$pid" ]; then
    echo "asterisk: stopped"
    exit 3
fi
echo "asterisk: running (pid $pid)"
if info="$(ari_info)"; then
    echo "ari: $LAB_ARI_URL (user $LAB_ARI_USER) $info"
else
    echo "ari: not answering at $LAB_ARI_URL"
fi
lab_cli 'core show uptime' || true
lab_cli 'pjsip show endpoints' | grep -E 'Endpoint:|Transport' || true
