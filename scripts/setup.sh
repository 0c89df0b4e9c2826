#!/usr/bin/env bash
# Sets up everything voiceline needs on a Debian machine, as root. Idempotent:
# system packages, the Python venv (.venv) with the project and its test extras,
# and the real-Asterisk lab (a cached Debian sid root with Asterisk 22).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# chromium + fonts-dejavu-core: the operator console's end-to-end test drives headless Chromium.
# kamailio + postgresql: the multi-node lab (lab/multinode.py; the load balancer and the shared history).
for pkg in python3 python3-venv python3-dev gcc debootstrap sip-tester tshark espeak-ng sox curl iproute2 procps \
           chromium fonts-dejavu-core kamailio postgresql; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  echo "setup: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The lab runs its own Kamailio inside a network namespace; where init starts packaged
# services, the Kamailio just installed would take the lab Asterisk's SIP port 5060.
if [[ " ${need_pkgs[*]:-} " == *" kamailio "* ]] && [ -d /run/systemd/system ]; then
  echo "setup: disabling the kamailio system service just installed (the lab starts its own)"
  systemctl disable --now kamailio
fi

# Prefer the python3 on PATH when it is new enough, else Debian's.
PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  PY=/usr/bin/python3
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "voiceline needs Python >= 3.11"'

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.voiceline-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing voiceline into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

lab/setup.sh
echo "setup: done"
