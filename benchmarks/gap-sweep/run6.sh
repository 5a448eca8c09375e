#!/usr/bin/env bash
# Issue "close the gap to LoRA", round 6: seeds 1 and 2 of the rows rounds 4 and 5 chose on
# seed 0's validation, under the same budget (SST-2, the suite's sample, up to 15 epochs,
# patience 4, batch 32, one torch thread per run). Each line of the queue: run name, seed,
# method, then its options. run7.sh runs it (SST-2), resuming and sharing its queue.
set -euo pipefail
# run7.sh's queue lines are: run name, dataset, seed, method, options
QUEUE=<(grep -v '^#' "${QUEUE:-benchmarks/gap-sweep/queue6.txt}" | awk '{$1 = $1 " sst2"; print}') \
  OUT=${OUT:-benchmarks/gap-sweep/runs6} JOBS=${JOBS:-2} exec bash benchmarks/gap-sweep/run7.sh
