#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: unit, integration and the
# end-to-end calls through the real lab Asterisk. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
