#!/usr/bin/env bash
# Create .venv with Python 3.12 and install imsim-lab with the pinned versions of
# requirements/constraints.txt. Idempotent: `make setup` only calls it when pyproject.toml or
# the constraints changed (stamp file .venv/.installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/find-python)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "setup: creating .venv with $PY"
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing imsim-lab and its pinned dependencies (the first time downloads torch, several GB)"
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[dev]'
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
touch .venv/.installed
echo "setup: done ($(.venv/bin/python --version))"
