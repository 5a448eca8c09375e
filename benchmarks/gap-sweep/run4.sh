#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 4: the same budget as rounds 2 and 3 (SST-2, the suite's
# sample, seed 0, up to 15 epochs, patience 4, batch 32, one torch thread per run) for the
# chosen rows, each with one change to how it trains: batches of mixed lengths
# (--no-group-by-length: the default batches texts of similar length together, so one step may
# see only short phrases) or a moving average of the trained tensors (--ema 0.995: evaluated,
# selected and saved in place of the live ones). Each line of the queue: run name, method,
# then its extra options. run7.sh runs it (SST-2, seed 0), resuming and sharing its queue.
set -euo pipefail
# run7.sh's queue lines are: run name, dataset, seed, method, options
QUEUE=<(grep -v '^#' "${QUEUE:-benchmarks/gap-sweep/queue4.txt}" | awk '{$1 = $1 " sst2 0"; print}') \
  OUT=${OUT:-benchmarks/gap-sweep/runs4} JOBS=${JOBS:-2} exec bash benchmarks/gap-sweep/run7.sh
