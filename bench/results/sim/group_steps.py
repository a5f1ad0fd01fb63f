"""How PEG's equal-size groups treat all-mpnet-base-v2's residual stream, from the committed report's
FP32 per-dim max |x| (bench/results/report-mpnet-w8a8/report.json, STS-B dev, 256 pairs).

Ranks the dims as QuantizedModel.calibrate does (range / site median, maximised over the PEG sites;
max |x| stands in for the range), splits them into K equal groups and prints, for a few sites, the
8-bit step of the group holding the outlier dims and how many dims span fewer than 8 steps of their
group's grid. No model run:  python bench/results/sim/group_steps.py
"""
import json, numpy as np, re
d = json.load(open('bench/results/report-mpnet-w8a8/report.json'))
S = d['sites']
pat = re.compile(r'encoder\.layer\.\d+\.(attention\.output\.(dense\.out|residual|LayerNorm\.out)|output\.(dense\.out|residual))$')
peg_sites = [s for s in S if pat.match(s)]
A = {s: np.array(S[s]['per_dim_absmax'], float) for s in peg_sites}
rel = np.max([a / np.median(a) for a in A.values()], axis=0)
perm = np.argsort(-rel, kind='stable')
for site in ['encoder.layer.8.output.residual', 'encoder.layer.7.output.dense.out', 'encoder.layer.3.output.residual']:
    a = A[site][perm]
    print(site, 'max', a.max().round(1), 'median dim absmax', np.median(a).round(2))
    for K in (1, 6, 24, 48, 96):
        g = np.array_split(np.arange(768), K)
        step = [2 * a[i].max() / 255 for i in g]   # ~ asymmetric 8-bit grid over [-absmax, absmax]
        # dims whose own absmax spans < 8 steps of their group's grid (< 3 bits of resolution)
        crushed = sum(int((a[i] < 8 * st).sum()) for i, st in zip(g, step))
        top = g[0]
        print(f'  K={K:3d}: group 0 ({len(top)} dims) step {step[0]:.2f}, its median dim absmax {np.median(a[top]):.2f}; dims < 8 steps: {crushed}')
