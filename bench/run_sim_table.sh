#!/usr/bin/env bash
# Zero-shot similarity (issues 5 and 6): cosine of pooled embeddings vs gold scores, every recipe, on
# all-MiniLM-L6-v2 and all-mpnet-base-v2 (fetch: python weights/fetch.py all). STS-B: dev, calibrated
# on train sentences; SICK: trial (SICK's test file is not in ../shared), calibrated on train.
#   bash bench/run_sim_table.sh [minilm|mpnet|all]
# MiniLM: RECIPES below, 512 calibration sentences. MPNet (12 x 768, ~5x the compute): the five base
# recipes plus the option sets that bring it back to FP32 (MPNET_RECIPES), 128 calibration sentences.
# The option sets were chosen on held-out SICK *train* pairs (not a scored split); see
# bench/results/sim/README.md. OPENBLAS_NUM_THREADS=1: the W8A32/float parts otherwise spin BLAS
# threads against the numba kernels' threads on a small machine (speed only; scores are the same).
set -euo pipefail
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
SHARED=${SHARED:-../shared}
OUT=bench/results/sim
WHICH=${1:-all}
RECIPES=${RECIPES:-fp32,dynamic,tm-iqr,w8a8,w8a8-mp,peg,peg:permute=0,dynamic:weights=channel,tm-iqr:weights=channel,w8a8-mp:weights=channel,peg:weights=channel}
FIX=weights=channel:west=minmax:ff2bits=16
MPNET_RECIPES=${MPNET_RECIPES:-fp32,dynamic,tm-iqr,w8a8,w8a8-mp,peg,w8a8-mp:$FIX,peg:$FIX,peg:groups=96:$FIX}
mkdir -p "$OUT"
run() {  # name model recipes calib-size
  npbert eval --model "$2" --task sick-sim --data "$SHARED/data/sick" --split trial \
    --recipes "$3" --calib-split train --calib-size "$4" --seed 0 --json "$OUT/$1-sick.json"
  npbert eval --model "$2" --task stsb-sim --data "$SHARED/data/glue/STS-B" --split dev \
    --recipes "$3" --calib-split train --calib-size "$4" --seed 0 --json "$OUT/$1-stsb.json"
}
if [ "$WHICH" != mpnet ]; then run minilm weights/all-MiniLM-L6-v2 "$RECIPES" 512; fi
if [ "$WHICH" != minilm ]; then run mpnet weights/all-mpnet-base-v2 "$MPNET_RECIPES" 128; fi
# PEG K=6 with group sizes fitted to the range-sorted dims (split=range, added after the runs above;
# scored once, not tuned): separate files, same settings.
if [ "$WHICH" != mpnet ]; then run minilm-range weights/all-MiniLM-L6-v2 "peg,peg:split=range" 512; fi
if [ "$WHICH" != minilm ]; then run mpnet-range weights/all-mpnet-base-v2 "peg:split=range,peg:split=range:$FIX" 128; fi
npbert table "$OUT"/*.json --out "$OUT/TABLE.md"
