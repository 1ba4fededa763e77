#!/usr/bin/env bash
# Decoder-only distillation of a Turbo-VAED student.
#   bash train.sh                       # CPU demo: TAEF2 teacher (configs/taef2.yaml), shared or procedural clips
#   bash train.sh ltx --data_dir /data/videos --output_dir outputs/ltx --latents_dir /data/ltx_latents
#   NUM_PROCESSES=8 bash train.sh hunyuan --data_dir ... --mixed_precision bf16   # accelerate launch
#   bash train.sh ltx --init_from outputs/ltx --output_dir outputs/ltx_stage2   # stage 2 (GAN) from a finished stage 1
# Overrides: see `python train_vae/train.py --help` (--max_steps, --resolution, --num_frames, --batch_size,
# --seed, --resume latest, --distill_weight, --disc_start, --latents_dir, ...), and --set KEY=VALUE for any
# config key (--set train.lr=1e-4 student.depthwise_kernel_size=3).
# The real-teacher configs (ltx, hunyuan, cogvideox, wan) carry the paper's recipe, effective batch 32: train.py
# sets grad_accum = 32 / (batch_size 4 x NUM_PROCESSES), e.g. 8 on one GPU, 1 with NUM_PROCESSES=8, and prints
# the product when it starts ("effective batch 32 = batch_size 4 x grad_accum 8 x 1 process(es)").
# NUM_PROCESSES > 1 without a GPU starts that many CPU processes (gloo; OMP_NUM_THREADS = cores / processes
# each unless set): `accelerate launch --cpu` alone would start just one.
# Paths on the command line (--data_dir, --output_dir, ...) start from the folder the command is given in.
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"
export WANDB_MODE="${WANDB_MODE:-offline}"
config=taef2
if [[ $# -gt 0 && $1 != --* ]]; then config=$1; shift; fi
procs="${NUM_PROCESSES:-1}"
if [[ "$procs" -gt 1 ]]; then
  if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    threads=$(( $(nproc) / procs ))
    export ACCELERATE_USE_CPU=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}"
  fi
  exec accelerate launch --multi_gpu --num_processes "$procs" --num_machines 1 --dynamo_backend no \
    "$repo/train_vae/train.py" --config "$config" "$@"
fi
exec python "$repo/train_vae/train.py" --config "$config" "$@"
