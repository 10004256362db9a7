#!/bin/bash
# Segment a cohort with a Slurm array: each task takes every N-th volume of the sorted list (--shard),
# so no coordinator is needed; --continue makes a re-submitted array skip finished volumes.
#SBATCH --job-name=autopath
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=02:00:00
set -euo pipefail
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$HOME/autopath/.deps/python-gpu/onnxruntime/capi/libonnxruntime.so.1.31.1}"
BUNDLE="${BUNDLE:-$HOME/bundles/liver}"
IN="${IN:-/data/cohort/images}"
OUT="${OUT:-/data/cohort/autopath}"
autopath-run --bundle "$BUNDLE" -i "$IN" -o "$OUT" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --continue --ep cuda --allow-fallback --threads 4 --report "$OUT/report-$SLURM_ARRAY_TASK_ID.jsonl" --quiet
