#!/usr/bin/env bash
# Run the test suite (sets up .venv first when needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${DEPTH_NODE_VENV:-.venv}/bin/activate"
exec python -m pytest -q -p no:cacheprovider "$@"
