#!/usr/bin/env bash
# Lint and type checks of CI (run after scripts/install.sh: mypy reads the generated alise/v1 stubs).
#   ruff check            lint rules of pyproject's [tool.ruff.lint]
#   ruff format --check   formatting (line length 120); `ruff format` fixes it
#   mypy                  strict on the files of pyproject's [tool.mypy] (services/common, the scheduler)
# All three run even when one fails; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
ruff check . || status=1
ruff format --check . || status=1
mypy || status=1
exit $status
