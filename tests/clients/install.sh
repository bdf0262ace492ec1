#!/usr/bin/env bash
# Installs the Python webhook libraries in requirements.txt (the `svix` and
# `standardwebhooks` packages from PyPI) for tests/signatures.rs, into the
# python3 on PATH. Called by .ci/run; run it by hand to run those tests.
set -euo pipefail
cd "$(dirname "$0")"
if python3 -c 'import svix, standardwebhooks' 2>/dev/null; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r requirements.txt
python3 -c 'import svix, standardwebhooks'
