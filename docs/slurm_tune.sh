#!/usr/bin/env bash
# One Optuna study, many SLURM jobs: every array task is an independent
# `twinsight tune` worker on the same storage and study name. No head node, no
# ports, no daemon: the journal file on the shared file system is the study.
#
#   sbatch docs/slurm_tune.sh            # 16 workers x 25 trials = 400 trials
#
# Each worker rewrites STUDY/best.yaml, trials.csv and the figures from the whole
# study when it ends, so the last one to finish leaves the final picture.
# base.yaml holds the fixed choices, e.g. runtime: {accelerator: gpu}.
# With a PostgreSQL server instead, use --storage postgresql+psycopg2://user:pw@host/db.
#SBATCH --job-name=twinsight-tune
#SBATCH --array=0-15
#SBATCH --cpus-per-task=4
#SBATCH --gres=gpu:1
#SBATCH --time=04:00:00
#SBATCH --output=logs/tune-%A_%a.log
set -euo pipefail

DATA=${DATA:-/shared/data/sims.h5}
STUDY=${STUDY:-/shared/studies/sims}          # on the shared file system
mkdir -p "$STUDY" logs

# --resume: join the study folder (it exists once the first task made it).
# --seed: each worker its own sampler seed, so that the random start-up
#         trials of workers started together differ.
# --no-baseline: only task 0 runs the defaults as the first trial.
baseline=--no-baseline
[ "${SLURM_ARRAY_TASK_ID:-0}" -eq 0 ] && baseline=--baseline

twinsight tune "$DATA" --out "$STUDY" --resume \
  --storage "journal://$STUDY/study.log" --study-name sims \
  --trials 25 --epochs 30 --pruner asha \
  --seed "${SLURM_ARRAY_TASK_ID:-0}" "$baseline" \
  --config "${BASE:-base.yaml}" 2>&1
