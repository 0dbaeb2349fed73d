#!/usr/bin/env bash
# Re-runs every command behind benchmarks/results/README.md on this machine, writing the raw
# JSON the page is generated from, then regenerates the page. Several hours on 2 cores (the
# two pcb headline runs take most of it); run nothing else meanwhile: the machine's noise is
# what the repeats and side-by-side ratios are for, not something to add to.
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
run() { local name=$1; shift; echo "== $name: $*"; "$@"; }

[ -f models/pcb/edgecoe.json ] || edgecoe demo build pcb
[ -f models/pcb-small/edgecoe.json ] || edgecoe demo build pcb-small
entries=samba,samba-parallel,coserve,edgecoe,all-resident

run pcb-page-cache edgecoe bench models/pcb --policies "$entries" --requests 3000 --rate 250 \
    --seeds 11,12 --repeat 3 --json "$results/pcb-medians/pcb_3000_seeds11-12_x3.json"
run pcb-device-memory edgecoe bench models/pcb --policies "$entries" --requests 3000 --rate 250 \
    --seeds 11,12 --repeat 3 --device-memory auto --json "$results/device-memory/pcb_3000_seeds11-12_x3.json"
plots=$(mktemp -d)
run tail edgecoe bench models/pcb --simulate --profile x86-2core-cpu --policies coserve,edgecoe,all-resident \
    --requests 3000 --sweep rate=20,40,60,80,100,120,150,200 --seeds 22,23 --slo-ms 2000 \
    --json "$results/tail/pcb_sim_rate_sweep.json" --plots "$plots"
cp "$plots/tail.png" "$results/tail/img/tail.png"
run tail-real edgecoe bench models/pcb-small --policies coserve,edgecoe,all-resident --requests 1000 \
    --sweep rate=40,80,120,160,200,280 --seeds 22,23 --slo-ms 1000 \
    --json "$results/tail/pcb_small_rate_sweep.json" --plots "$plots"
cp "$plots/tail.png" "$results/tail/img/tail_pcb_small.png"
run bound-ab python benchmarks/delay_bound_ab.py models/pcb --bounds 5000,30000 --seeds 13,14 \
    --json "$results/tail/delay_bound_ab_pcb.json"
run overhead python benchmarks/sched_overhead.py --repeat 5 --json "$results/overhead/sched_overhead.json"
run paper python benchmarks/paper_assumptions.py --json "$results/paper/paper_assumptions.json"
for mode in wait reject; do
  run "queue-bound-$mode" python benchmarks/queue_bound.py models/pcb-small --mode "$mode" \
      --json "$results/hostile/queue_bound_$mode.json"
done
[ -f models/moe-tiny/edgecoe.json ] || edgecoe demo build moe-tiny
[ -f models/moe-large/edgecoe.json ] || edgecoe demo build moe-large
for model in moe-tiny moe-large; do
  run "$model" python benchmarks/moe_generate.py --package "models/$model" --checkpoint "models/$model-hf" \
      --prompts 20 --new-tokens 32 --budgets 100%,50%,25% --repeat 3 --json "$results/moe/$model.json"
done
run quantize python benchmarks/moe_quantize.py --checkpoint models/moe-tiny-hf --block-sizes 32,128 \
    --json "$results/moe/quantize_moe_tiny.json"
for model in moe-tiny moe-large; do
  run "predictors-$model" python benchmarks/moe_predictors.py --package "models/$model" \
      --json "$results/moe/predictors_${model//-/_}.json"
done
run schedules python benchmarks/moe_schedules.py --package models/moe-large --checkpoint models/moe-large-hf \
    --budget 25% --prompts 8 --new-tokens 24 --repeat 3 --concurrent-chunks 0,16 \
    --json "$results/moe/schedules_moe_large.json"
run variants python benchmarks/moe_variants.py --recipe models/recipes/moe-tiny-variants.yaml \
    --json "$results/moe/variants_moe_tiny.json"
run variants-light python benchmarks/moe_variants.py --recipe models/recipes/moe-tiny-variants-light.yaml \
    --json "$results/moe/variants_moe_tiny_light.json"
run variant-serving python benchmarks/moe_variant_serving.py --package models/moe-tiny-variants \
    --checkpoints models/moe-tiny-variants-hf --json "$results/moe/variant_serving_moe_tiny.json"
run expert-exec-large python benchmarks/moe_expert_exec.py --hidden 1024 --intermediate 2048 --experts 8 \
    --repeat 3 --json "$results/moe/expert_exec_large.json"
run expert-exec-tiny python benchmarks/moe_expert_exec.py --hidden 128 --intermediate 256 --experts 8 \
    --repeat 3 --json "$results/moe/expert_exec_tiny.json"
python benchmarks/make_results_page.py
