#!/usr/bin/env bash
# Sets everything up, then runs the demo: a real SIP call through the lab Asterisk
# to the engine's offline local agent, which answers two spoken questions.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python lab/demo.py "$@"
