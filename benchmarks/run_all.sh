#!/usr/bin/env bash
# Regenerates every figure of benchmarks/results/README.md on this machine (about 40 minutes on
# 2 cores). Raw outputs land in benchmarks/results/raw/ (git-ignored); copy the figures into the
# results page by hand, stating the machine and date they were measured on.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=benchmarks/results/raw
mkdir -p "$raw"
run() { local name=$1; shift; echo "== $name: $*"; "$@" 2>&1 | tee "$raw/$name.log"; }

[ -f models/pcb/edgecoe.json ] || edgecoe demo build pcb
[ -f models/pcb-small/edgecoe.json ] || edgecoe demo build pcb-small
run demo_costs python benchmarks/demo_costs.py models/pcb
run memory_return python benchmarks/memory_return.py models/pcb-small
run soak python benchmarks/soak.py models/pcb-small --requests 20000 --csv "$raw/soak.csv" \
    --plot "$raw/img/soak_rss.png"
run faults python benchmarks/faults.py models/pcb-small
run sched_overhead python benchmarks/sched_overhead.py
run profile edgecoe profile models/pcb --device cpu -o "$raw/x86-2core-cpu.json"
run allocation python benchmarks/allocation.py models/pcb --profile "$raw/x86-2core-cpu.json"
run profile_repeat python benchmarks/profile_repeat.py models/pcb
run bench_pcb edgecoe bench models/pcb --requests 2000 --rate 250 --json "$raw/bench_pcb.json" \
    --plots "$raw/img" --trace "$raw/timeline.json"
for setting in numa uma; do
  for n in 2500 3500; do
    run "paper_${setting}_${n}" edgecoe bench --paper "$setting" --requests "$n" --rate 250 --arrival uniform \
        --json "$raw/paper_${setting}_${n}.json"
  done
done
echo "raw results in $raw"
