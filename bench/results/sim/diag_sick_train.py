"""Diagnosis loop for bench/results/sim/README.md: held-out SICK *train* pairs, never the scored split.

The 128 calibration sentences are the ones `npbert eval --calib-split train --calib-size 128 --seed 0`
draws; the diagnosis pairs are NPAIRS (250) other train pairs (seed 123) none of whose sentences is a
calibration sentence. Per recipe: Spearman vs gold, Spearman vs the FP32 cosines (rank_vs_fp32) and the
mean cosine between quantized and FP32 embeddings (emb_cos). 'RECIPE|PATTERN=SPEC;PATTERN=SPEC' adds
site overrides (npbert.qmodel.parse_override), e.g. 'peg|*.probs=off'.
  OPENBLAS_NUM_THREADS=1 python bench/results/sim/diag_sick_train.py peg 'peg|*.probs=off'
Appends one JSON line per recipe to /tmp/diag/results.jsonl."""
import sys, time, json, os
os.makedirs("/tmp/diag", exist_ok=True)
import numpy as np
from npbert.model import load_model
from npbert.eval.tasks import get_task, load_split
from npbert.eval.runner import calibration_sample, _order
from npbert.eval.metrics import spearman
from npbert.qmodel import quantize_model

MODEL = os.environ.get("MODEL", "weights/all-mpnet-base-v2")
NPAIRS = int(os.environ.get("NPAIRS", "250"))
t = get_task("sick-sim")
tr = load_split(t, "../shared/data/sick", "train")
texts, _ = calibration_sample(t, tr, 128, 0)
cal = set(texts)
rng = np.random.default_rng(123)
cand = [i for i in rng.permutation(len(tr)) if tr.texts[i] not in cal and tr.pairs[i] not in cal][:NPAIRS]
ex = tr.subset(np.sort(cand))
model = load_model(MODEL)
uniq = list(dict.fromkeys(list(ex.texts) + list(ex.pairs)))
order, _, _ = _order(model, uniq, None)

def embs(m):
    where = {s: i for i, s in enumerate(uniq)}
    emb = np.zeros((len(uniq), model.config.hidden_size), np.float32)
    for s in range(0, len(order), 32):
        rows = order[s:s+32]
        emb[rows] = m.embed([uniq[i] for i in rows], batch_size=32)
    return emb

def score(emb):
    where = {s: i for i, s in enumerate(uniq)}
    a = emb[[where[s] for s in ex.texts]].astype(np.float64); b = emb[[where[s] for s in ex.pairs]].astype(np.float64)
    return (a*b).sum(1)/np.linalg.norm(a,axis=1)/np.linalg.norm(b,axis=1)

cache = f"/tmp/diag/fp32-{os.path.basename(MODEL)}-{NPAIRS}.npy"
if os.path.exists(cache):
    e32 = np.load(cache)
else:
    e32 = embs(model); np.save(cache, e32)
p32 = score(e32)
print(f"# {len(ex)} pairs, {len(uniq)} sentences; fp32 spearman {100*spearman(ex.labels, p32):.2f}", flush=True)
for r in sys.argv[1:]:
    t0 = time.time()
    rr, _, ov = r.partition("|")
    qm = quantize_model(model, rr, calibration=(texts, None), overrides=[o for o in ov.split(";") if o])
    t1 = time.time()
    e = embs(qm)
    p = score(e)
    cos = np.mean(np.sum(e*e32,1)/np.linalg.norm(e,axis=1)/np.linalg.norm(e32,axis=1))
    res = dict(recipe=r, spearman=100*spearman(ex.labels, p), rank_vs_fp32=100*spearman(p32, p), emb_cos=float(cos), tq=round(t1-t0), te=round(time.time()-t1))
    print(json.dumps(res), flush=True)
    with open("/tmp/diag/results.jsonl", "a") as f: f.write(json.dumps({**res, "model": MODEL, "npairs": NPAIRS})+"\n")
