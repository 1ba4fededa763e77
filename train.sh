#!/usr/bin/env bash
# Decoder-only distillation of a Turbo-VAED student.
#   bash train.sh                       # CPU demo: TAEF2 teacher (configs/taef2.yaml), shared or procedural clips
#   bash train.sh ltx --data_dir /data/videos --output_dir outputs/ltx --latents_dir /data/ltx_latents
#   NUM_PROCESSES=8 bash train.sh hunyuan --data_dir ... --mixed_precision bf16   # accelerate launch
# Overrides: see `python train_vae/train.py --help` (--max_steps, --resolution, --num_frames, --batch_size,
# --seed, --resume latest, --distill_weight, --disc_start, --latents_dir, ...).
set -euo pipefail
cd "$(dirname "$0")"
export WANDB_MODE="${WANDB_MODE:-offline}"
config=taef2
if [[ $# -gt 0 && $1 != --* ]]; then config=$1; shift; fi
if [[ "${NUM_PROCESSES:-1}" -gt 1 ]]; then
  exec accelerate launch --num_processes "$NUM_PROCESSES" train_vae/train.py --config "$config" "$@"
fi
exec python train_vae/train.py --config "$config" "$@"
