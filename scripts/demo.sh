#!/usr/bin/env bash
# The main job on a fresh machine: synthetic data, a short training, evaluation, export.
# Usage: scripts/demo.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
DATA_DIR=${1:-demo_data}
RUN_DIR=${2:-demo_runs/demo}
PY=${PY:-.venv/bin/python}
N_JETS=${N_JETS:-60000}

if [ ! -f "$DATA_DIR/train.h5" ]; then
    echo "== writing $N_JETS synthetic jets to $DATA_DIR"
    $PY -m saltx.data.synthetic --out "$DATA_DIR" --n-jets "$N_JETS" --seed 1
fi

echo "== training the demo experiment into $RUN_DIR"
$PY -m saltx.train +experiment=demo paths.data_dir="$DATA_DIR" paths.output_dir="$RUN_DIR" \
    trainer.resume=never

echo "== evaluating"
$PY -m saltx.evaluate run_dir="$RUN_DIR"

echo "== exporting to ONNX"
$PY -m saltx.export run_dir="$RUN_DIR" overwrite=true
