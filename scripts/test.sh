#!/usr/bin/env bash
# Fresh machine → the whole test suite (slow end-to-end tests included). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EDGEOPS_VENV:-.venv}/bin/activate"
exec python -m pytest -q "$@"
