#!/usr/bin/env bash
# Zero-shot similarity (issues 5 and 6): cosine of pooled embeddings vs gold scores, every recipe, on
# all-MiniLM-L6-v2 and all-mpnet-base-v2 (fetch: python weights/fetch.py all). STS-B: dev, calibrated
# on train sentences; SICK: trial (SICK's test file is not in ../shared), calibrated on train.
#   bash bench/run_sim_table.sh [minilm|mpnet|all]
set -euo pipefail
SHARED=${SHARED:-../shared}
OUT=bench/results/sim
WHICH=${1:-all}
RECIPES=${RECIPES:-fp32,dynamic,tm-iqr,w8a8,w8a8-mp,peg,peg:permute=0,dynamic:weights=channel,tm-iqr:weights=channel,w8a8-mp:weights=channel,peg:weights=channel}
mkdir -p "$OUT"
run() {  # name model
  npbert eval --model "$2" --task stsb-sim --data "$SHARED/data/glue/STS-B" --split dev \
    --recipes "$RECIPES" --calib-split train --calib-size 512 --seed 0 --json "$OUT/$1-stsb.json"
  npbert eval --model "$2" --task sick-sim --data "$SHARED/data/sick" --split trial \
    --recipes "$RECIPES" --calib-split train --calib-size 512 --seed 0 --json "$OUT/$1-sick.json"
}
if [ "$WHICH" != mpnet ]; then run minilm weights/all-MiniLM-L6-v2; fi
if [ "$WHICH" != minilm ]; then run mpnet weights/all-mpnet-base-v2; fi
npbert table "$OUT"/*.json --out "$OUT/TABLE.md"
