#!/usr/bin/env bash
# Fails when `nbdev_export` or `nbdev_clean` would change what git tracks: notebooks and library out of step.
set -euo pipefail
BIN=${1:-.venv/bin}
state() { git status --porcelain -- nbs vit_plasticity; git diff -- nbs vit_plasticity | sha1sum; }
before=$(state)
"$BIN/nbdev_export"
"$BIN/nbdev_clean"
after=$(state)
if [[ "$before" != "$after" ]]; then
  echo "nbdev_export / nbdev_clean changed files: run them, review and commit." >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "notebooks and library in sync"
