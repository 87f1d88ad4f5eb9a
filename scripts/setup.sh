#!/usr/bin/env bash
# Installs edgeops with every extra into ./.venv (or $EDGEOPS_VENV) on a fresh machine.
# torch is installed first and pinned to the local CPU build, so nothing can pull a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDGEOPS_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
CONSTRAINTS="$(mktemp)"
echo "torch==2.13.0" > "$CONSTRAINTS"
stamp="$VENV/.edgeops-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
  python -m pip install --quiet -c "$CONSTRAINTS" -e ".[all,tflite]"
  # onnx2tf (ONNX -> TFLite) pins exact, older onnx / onnxruntime / numpy / TensorFlow releases than the
  # ones above; its real imports are in the tflite extra, so it goes in without its pins.
  python -m pip install --quiet --no-deps "onnx2tf==1.29.24"
  touch "$stamp"
fi
rm -f "$CONSTRAINTS"
# mosquitto is optional: tests and the demo fall back to the embedded amqtt broker without it.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null) || echo "note: mosquitto not installed; using the embedded broker"
fi
# promtool (Debian's prometheus package) checks deploy/prometheus/edgeops-rules.yml in the tests;
# optional: without it tests/deploy/test_prometheus_rules.py is skipped with the reason.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || echo "note: promtool not installed; the Prometheus rules test will be skipped"
fi
# Chromium and its driver (Debian's chromium, chromium-driver) run the console's browser tests
# (tests/fleet/ui/); optional: without /usr/bin/chromium they are skipped with the reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "note: chromium not installed; the browser tests will be skipped"
fi
