#!/usr/bin/env bash
# mypy (strict, setup.cfg) over the tensorgate.* packages:  bash tests/typecheck.sh [mypy args]
# The folders sit at the top level and are installed under the tensorgate namespace by setuptools' import hook,
# which mypy does not follow; a tree of links (build/typecheck/tensorgate/<package>) gives mypy the same names.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/typecheck/tensorgate
for package in clients server engines bench; do
    ln -sfn "../../../$package" "build/typecheck/tensorgate/$package"
done
exec "${PYTHON:-.venv/bin/python}" -m mypy "$@"
