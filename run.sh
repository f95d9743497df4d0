#!/usr/bin/env bash
# mammo-kt: the two commands of the README.
#   bash run.sh reproduce [--profile demo|smoke|full] [--data-root DIR] [--device cpu|cuda] [--force]
#   bash run.sh test
# Each sets up (or reuses) the virtual environment .venv first, so both work on a new machine.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MAMMO_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  # (Re)install when pyproject.toml changed since the last install; the stamp records its hash.
  local want have
  want="$(sha256sum pyproject.toml | cut -c1-64)"
  have="$(cat "$VENV/.mammo-kt-stamp" 2>/dev/null || true)"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version 2>&1)"
    "$PY" -m venv "$VENV"
  fi
  if [ "$want" != "$have" ]; then
    echo "[setup] installing mammo-kt and its dependencies into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$VENV/.mammo-kt-stamp"
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  reproduce)
    setup
    exec "$VENV/bin/python" -m mammo_lib.reproduce "$@"
    ;;
  test)
    setup
    export MPLBACKEND=Agg
    # 1) the library's tests, two processes with one torch thread each
    OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -n 2 -q --durations=15 tests "$@"
    # 2) the notebooks on the smoke profile under nbval, from scratch (in order: later ones reuse earlier results)
    rm -rf runs/smoke
    MAMMO_PROFILE=smoke "$VENV/bin/python" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
      --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 900 notebooks
    # 3) what they wrote must be what is committed: a stale result cannot land (bit for bit on an
    #    AVX2 CPU; elsewhere decisions equal and numbers within the stated tolerance: docs/DECISIONS.md)
    "$VENV/bin/python" -m mammo_lib.repro.fingerprint --check runs/smoke/results results/smoke
    ;;
  *)
    echo "usage: bash run.sh reproduce [--profile demo|smoke|full] [--data-root DIR]" >&2
    echo "        [--device cpu|cuda] [--force | --fresh] [--only NN ...] [--no-progress]" >&2
    echo "         --fresh  delete the profile's caches and results, recompute everything" >&2
    echo "                  (this reproduces the committed results/)" >&2
    echo "         --force  rerun every notebook, over the caches" >&2
    echo "       bash run.sh test" >&2
    exit 2
    ;;
esac
