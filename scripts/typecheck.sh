#!/usr/bin/env bash
# mypy on bouquet's library packages. The repository maps top-level folders into `bouquet.*`
# (pyproject's package-dir) and the editable install resolves them with an import hook that mypy
# cannot follow, so this lays the package out as symlinks in .mypy-tree/ (git-ignored), afresh on
# every run (a module added to bouquet/ is checked too).
# Usage: scripts/typecheck.sh [package ...]   (default: the whole bouquet package and the
# deploy/ tooling the tests and `make deploy-demo` run)
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.mypy-tree/bouquet
rm -rf "$tree"
mkdir -p "$tree"
for f in bouquet/*.py; do ln -s "../../$f" "$tree/$(basename "$f")"; done
for d in codecs strategies clients models data simulations; do ln -s "../../$d" "$tree/$d"; done
args=(-p bouquet -p deploy); [ $# -gt 0 ] && { args=(); for p in "$@"; do args+=(-p "bouquet.$p"); done; }
MYPYPATH="$PWD/.mypy-tree" exec .venv/bin/mypy --python-executable .venv/bin/python "${args[@]}"
