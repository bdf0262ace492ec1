#!/usr/bin/env bash
# Installs the pinned Python tools of tests/openapi/requirements.txt
# (openapi-spec-validator, Schemathesis) into a virtualenv under the cargo
# target directory and prints the virtualenv's bin directory. Run again, it
# only checks that the pinned versions are there.
#
#   tests/openapi/install.sh            -> prints e.g. target/openapi-venv/bin
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

target="${CARGO_TARGET_DIR:-target}"
venv="$target/openapi-venv"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "install.sh: $python not found; install python3 (apt-get install python3 python3-venv)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2 || { echo "install.sh: cannot create a virtualenv; install python3-venv" >&2; exit 1; }
fi
# Reinstalls only when the installed versions differ from the pins.
if ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt" ||
  ! "$venv/bin/python" -m pip check >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi
cd "$venv/bin" && pwd
