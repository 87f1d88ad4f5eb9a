#!/usr/bin/env bash
# Fresh machine → the whole product end to end: build, sign, publish, roll out to a simulated
# fleet over an embedded MQTT broker, watch a bad version halt and roll back. Extra arguments
# go to `edgeops demo` (e.g. --devices 100 --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${EDGEOPS_VENV:-.venv}/bin/activate"
exec edgeops demo "$@"
