#!/usr/bin/env bash
# Local deployment demo: CA + certificates and SuperNode keys in deploy/.state/, a TLS SuperLink
# with SuperNode authentication, N SuperNodes, one experiment via `flwr run`; results in
# outputs/deploy/<timestamp>/. Every process is stopped on exit. Arguments go to deploy/cli.py:
#   deploy/demo.sh --nodes 3 --overrides "dataset=digits client=topk strategy=kl_weighted"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PATH="$(dirname "$PY"):$PATH"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export BOUQUET_DATA="${BOUQUET_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/bouquet/data}"
exec "$PY" "$ROOT/deploy/cli.py" "$@"
