#!/usr/bin/env bash
# Sets up alise (scripts/install.sh) and runs the test suite on CPU. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
python -m pytest -q "$@"
