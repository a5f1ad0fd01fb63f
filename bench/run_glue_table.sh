#!/usr/bin/env bash
# The accuracy table (issue 5): every recipe on the five task checkpoints' dev splits, plus the
# zero-shot similarity tasks of the sentence encoders. Static recipes calibrate on a seeded sample of
# 512 train rows (never on dev). Results: bench/results/glue/*.json and bench/results/glue/TABLE.md.
#   bash bench/run_glue_table.sh            # from the repo root, with the venv active
#   OUT=bench/results/glue-wbits7 RECIPES=... bash bench/run_glue_table.sh   # another recipe set
set -euo pipefail
SHARED=${SHARED:-../shared}
OUT=${OUT:-bench/results/glue}
RECIPES=${RECIPES:-fp32,dynamic,tm-iqr,w8a8,w8a8-mp,peg,peg:permute=0,dynamic:weights=channel,tm-iqr:weights=channel,w8a8-mp:weights=channel,peg:weights=channel}
mkdir -p "$OUT"
for pair in sst2:SST-2 cola:CoLA mrpc:MRPC stsb:STS-B rte:RTE; do
  task=${pair%%:*}; dir=${pair#*:}
  npbert eval --model "$SHARED/models/minilm-l6-glue/$dir" --task "$task" --data "$SHARED/data/glue/$dir" \
    --recipes "$RECIPES" --calib-split train --calib-size 512 --seed 0 --json "$OUT/$task.json"
done
npbert table "$OUT"/{sst2,cola,mrpc,stsb,rte}.json --out "$OUT/TABLE.md"
