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
# opencv-contrib-python-headless replaced opencv-python-headless (both install cv2/): a venv that has the
# plain one drops both, so that the install below writes cv2/ once, from the contrib wheel
if .venv/bin/python -m pip show -q opencv-python-headless >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y opencv-python-headless opencv-contrib-python-headless
fi
echo "setup: installing imsim-lab and its pinned dependencies (the first time downloads torch, several GB)"
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[dev]'
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
touch .venv/.installed
echo "setup: done ($(.venv/bin/python --version))"
