"""Per-site NMSE / SQNR of every recipe against FP32 on a real task checkpoint (issue 4).

    python bench/site_nmse.py --model ../shared/models/minilm-l6-glue/MRPC --task mrpc \
        --data ../shared/data/glue/MRPC --out bench/results/site_nmse_mrpc

Calibration: a seeded sample of the train split; errors: measured on a seeded sample of dev.
Site errors compound through the network (each site's value is compared with FP32's value at the
same site), so deeper sites show the accumulated effect of everything before them.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from npbert.eval.tasks import load_split
from npbert.model import load_model
from npbert.qmodel import quantize_model, site_errors

_L = r"encoder\.layer\.\d+\."
FAMILIES = {  # family -> regex over site names
    "QKV": _L + r"attention\.self\.(query|key|value)\.out$",
    "attention probs": _L + r"attention\.self\.probs$",
    "context": _L + r"attention\.output\.dense\.in$",
    "attention output": _L + r"attention\.output\.dense\.out$",
    "attention residual": _L + r"attention\.output\.residual$",
    "FFN input": _L + r"attention\.output\.LayerNorm\.out$",
    "FFN hidden (FF2 input)": _L + r"output\.dense\.in$",
    "FFN output": _L + r"output\.dense\.out$",
    "FFN residual": _L + r"output\.residual$",
    "layer output": _L + r"output\.LayerNorm\.out$",
}


def family_of(site: str) -> str | None:
    return next((fam for fam, rx in FAMILIES.items() if re.match(rx, site)), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipes", default="dynamic,tm-iqr,w8a8,w8a8-mp,peg,peg:permute=0")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--eval-size", type=int, default=128)
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    m = load_model(a.model)
    rng = np.random.default_rng(0)
    tr = load_split(a.task, a.data, "train")
    dev = load_split(a.task, a.data, "dev")
    ci = np.sort(rng.choice(len(tr.texts), min(a.calib_size, len(tr.texts)), replace=False))
    di = np.sort(rng.choice(len(dev.texts), min(a.eval_size, len(dev.texts)), replace=False))
    calib = ([tr.texts[i] for i in ci], [tr.pairs[i] for i in ci] if tr.pairs else None)
    texts, pairs = [dev.texts[i] for i in di], ([dev.pairs[i] for i in di] if dev.pairs else None)
    batches = [b for _, b in m.batches(texts, pairs, 32)]
    result = {"command": " ".join(sys.argv), "model": a.model, "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "recipes": {}}
    for r in a.recipes.split(","):
        qm = quantize_model(m, r, calibration=calib)
        result["recipes"][r] = site_errors(qm, m, batches)
        print(f"{r}: done", file=sys.stderr)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    # Markdown: SQNR (dB) per site family, averaged over layers (mean of NMSE, then dB).
    recipes = list(result["recipes"])
    lines = [f"# Per-site SQNR vs FP32 (dB; higher is better): {a.model}", "",
             f"`{result['command']}`", "",
             "| site family | " + " | ".join(recipes) + " |", "|---|" + "---|" * len(recipes)]
    for fam in FAMILIES:
        row = []
        for r in recipes:
            vals = [v["nmse"] for s, v in result["recipes"][r].items() if family_of(s) == fam]
            row.append(f"{-10 * np.log10(np.mean(vals)):.1f}" if vals and np.mean(vals) > 0 else "-")
        lines.append(f"| {fam} | " + " | ".join(row) + " |")
    L = m.config.num_hidden_layers
    lines += ["", "FFN residual sum per layer (dB):", "", "| layer | " + " | ".join(recipes) + " |",
              "|---|" + "---|" * len(recipes)]
    for i in range(L):
        s = f"encoder.layer.{i}.output.residual"
        lines.append(f"| {i} | " + " | ".join(f"{result['recipes'][r][s]['sqnr_db']:.1f}" for r in recipes) + " |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
