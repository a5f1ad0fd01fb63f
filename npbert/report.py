"""`npbert report`: where the activation outliers live, and what a quantization recipe does there.

    npbert report --model weights/all-MiniLM-L6-v2 --data ../shared/data/glue/STS-B/dev.tsv --recipe w8a8 --out rep/

Statistics flow through the forward's site hook (model.py) over real tokens only: padding is masked
out of every number. For each named site: min, max, max |x|, mean and standard deviation over all
real-token values; for the [B, T, C] hidden-size sites also max |x| per hidden dimension and, per
dimension, how many tokens are outliers by the rule

    |x - mean_site| > k * std_site     (k = 6 by default; mean and std over all values of that site)

That rule needs the site's std before it can count, so `activation_stats` runs the FP32 forward
twice (moments, then counts): exact counts for the price of one more forward.

With --recipe, per-site NMSE and SQNR of the quantized model against FP32 come from
`npbert.qmodel.site_errors`; static recipes calibrate on the same sampled texts they are scored on
(the report says so). Writes report.json, report.md and, when matplotlib is importable (the `plot`
extra), PNG plots; every file is written to a temporary name and renamed into place.

Shapes: B batch, T tokens, C hidden, I intermediate, h heads, N real tokens.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from npbert.errors import CalibrationError, DataError, InputError
from npbert.model import Executor, Model

__all__ = ["activation_stats", "outlier_table", "outlier_dims", "weight_clipping", "build_report", "render_markdown", "write_plots",
           "register", "cmd_report", "FAMILY_SHORT", "PLOT_HINT"]

REPORT_VERSION = 1
DEFAULT_K_SIGMA = 6.0
TOKEN_DIMS_PER_SITE = 16  # report.json names the outlier tokens of this many dims per site
PLOT_HINT = "matplotlib not installed: plots skipped (pip install npbert[plot])"

# Per-layer site families, in execution order, with the short column names the tables use.
FAMILY_SHORT = {
    "attention.self.query.out": "q",
    "attention.self.key.out": "k",
    "attention.self.value.out": "v",
    "attention.self.scores": "scores",
    "attention.self.probs": "probs",
    "attention.output.dense.in": "ctx",
    "attention.output.dense.out": "attn.out",
    "attention.output.residual": "attn.res",
    "attention.output.LayerNorm.out": "attn.LN",
    "output.dense.in": "ffn.hid",
    "output.dense.out": "ffn.out",
    "output.residual": "ffn.res",
    "output.LayerNorm.out": "ffn.LN",
}
FFN_OUT, FFN_RES = "output.dense.out", "output.residual"
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def split_site(name: str) -> tuple[int | None, str]:
    """'encoder.layer.3.output.dense.out' -> (3, 'output.dense.out'); 'embeddings.sum' -> (None, 'embeddings.sum')."""
    m = _LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


# ---------------------------------------------------------------------------------- statistics


class _StatsTap(Executor):
    """FP32 forward that hands every site's real-token values to `sink(name, values, kind)`.

    values: [N, C] or [N, I] for [B, T, *] sites (padded tokens dropped), the valid (query, key) entries
    of [B, h, T, T] attention maps as a flat vector, [B, C] as is for the head's per-sequence sites.
    """

    def __init__(self, params, cfg, sink):
        super().__init__(params, cfg)
        self.sink = sink

    def site(self, name, x):
        if x is None:
            return x
        a = np.asarray(x, np.float32)
        m = self.mask.astype(bool) if self.mask is not None else None
        if a.ndim == 3:  # [B, T, X] -> [N, X]
            vals = a[m] if m is not None else a.reshape(-1, a.shape[-1])
            kind = "hidden" if a.shape[-1] == self.cfg.hidden_size else "intermediate"
        elif a.ndim == 4:  # [B, h, T, T]: valid query and valid key only
            vals = a[np.broadcast_to(m[:, None, :, None] & m[:, None, None, :], a.shape)] if m is not None else a.ravel()
            kind = "attention"
        else:  # [B, C]: one vector per sequence (the head reads the first token, always real)
            vals, kind = a.reshape(-1, a.shape[-1]), "vector"
        self.sink(name, vals, kind)
        return x

    def attention(self, prefix, q, k, v, bias):
        from npbert.qmodel import _Calibrator  # the same scores/probs sites the calibrator sees

        return _Calibrator.attention(self, prefix, q, k, v, bias)


def activation_stats(model: Model, batches: Iterable, k_sigma: float = DEFAULT_K_SIGMA, progress: bool = False) -> dict:
    """Activation ranges of the FP32 model over real tokens, per site, in execution order.

    batches: npbert Batch objects (or the (rows, Batch) pairs Model.batches yields); read twice.
    Returns {"n_sequences", "n_tokens", "hidden_size", "k_sigma", "outlier_rule", "sites": {name: {
        "layer": int | None, "family": str, "kind": hidden | intermediate | attention | vector,
        "n_values", "min", "max", "absmax", "mean", "std", "threshold" (= k_sigma * std),
        hidden sites only: "per_dim_absmax" float64 [C], "per_dim_outlier_count" int64 [C] (tokens with
        |x - mean| > threshold in that dim; divide by n_tokens for the fraction), "outlier_tokens" {dim:
        [(token id, outlier count), ...]} the five token ids most often outliers in that dim}}}.
    """
    if not (isinstance(k_sigma, (int, float)) and math.isfinite(k_sigma) and k_sigma > 0):
        raise InputError(f"k_sigma must be a positive number, got {k_sigma!r}")
    batches = [b[1] if isinstance(b, tuple) else b for b in batches]
    if not batches:
        raise InputError("activation_stats needs at least one batch of texts")
    from npbert.progress import Progress

    acc: dict[str, dict] = {}

    def moments(name, vals, kind):
        s = acc.get(name)
        if s is None:
            s = acc[name] = {"kind": kind, "n": 0, "s1": 0.0, "s2": 0.0, "min": math.inf, "max": -math.inf}
            if kind == "hidden":
                s["dim_absmax"] = np.zeros(vals.shape[-1], np.float64)
        if vals.size == 0:
            return
        v64 = vals.astype(np.float64)
        s["n"] += vals.size
        s["s1"] += float(v64.sum())
        s["s2"] += float(np.square(v64).sum())
        s["min"] = min(s["min"], float(vals.min()))
        s["max"] = max(s["max"], float(vals.max()))
        if kind == "hidden":
            np.maximum(s["dim_absmax"], np.abs(vals).max(axis=0), out=s["dim_absmax"])

    V = model.config.vocab_size
    cur_ids = np.zeros(0, np.int64)  # token ids of the current batch's real tokens, in x[mask] order

    def counts(name, vals, kind):
        s = acc[name]
        if kind != "hidden" or vals.size == 0:
            return
        over = np.abs(vals.astype(np.float64) - s["mean"]) > s["threshold"]  # [N, C]
        s["dim_count"] += np.count_nonzero(over, axis=0)
        tok, dim = np.nonzero(over)
        if tok.size:  # which tokens carry the outliers: (dim, token id) pairs, counted once at the end
            s["dim_token_keys"].append(dim.astype(np.int64) * V + cur_ids[tok])

    n_seq = sum(len(b) for b in batches)
    n_tok = int(sum(int(np.count_nonzero(b.attention_mask)) for b in batches))
    with Progress(2 * len(batches), "activation stats", enabled=progress, unit="batch") as bar:
        for b in batches:
            Model.forward(model, b, _StatsTap(model.params, model.config, moments))
            bar.update(1)
        for s in acc.values():
            n = max(s["n"], 1)
            s["mean"] = s["s1"] / n
            s["std"] = math.sqrt(max(s["s2"] / n - s["mean"] ** 2, 0.0))
            s["threshold"] = k_sigma * s["std"]
            if s["kind"] == "hidden":
                s["dim_count"] = np.zeros(s["dim_absmax"].shape, np.int64)
                s["dim_token_keys"] = []
        for b in batches:
            cur_ids = np.asarray(b.input_ids)[np.asarray(b.attention_mask).astype(bool)].astype(np.int64)
            Model.forward(model, b, _StatsTap(model.params, model.config, counts))
            bar.update(1)

    sites = {}
    for name, s in acc.items():
        layer, family = split_site(name)
        seen = s["n"] > 0
        d = {
            "layer": layer, "family": family, "kind": s["kind"], "n_values": s["n"],
            "min": s["min"] if seen else None, "max": s["max"] if seen else None,
            "absmax": max(abs(s["min"]), abs(s["max"])) if seen else None,
            "mean": s["mean"], "std": s["std"], "threshold": s["threshold"],
        }
        if s["kind"] == "hidden":
            d["per_dim_absmax"] = s["dim_absmax"]
            d["per_dim_outlier_count"] = s["dim_count"]
            d["outlier_tokens"] = _top_tokens(s["dim_token_keys"], V)
        sites[name] = d
    return {
        "n_sequences": n_seq, "n_tokens": n_tok, "hidden_size": model.config.hidden_size, "k_sigma": float(k_sigma),
        "outlier_rule": (f"a token is an outlier in hidden dim j of a site when |x_j - mean| > {k_sigma:g} * std, "
                         "mean and std taken over all real-token values of that site (all dims); padding excluded"),
        "sites": sites,
    }


def _top_tokens(keys: list[np.ndarray], V: int, k: int = 5) -> dict[int, list[tuple[int, int]]]:
    """(dim * V + token id) keys -> {dim: [(token id, outlier count), ...] most frequent k first}."""
    if not keys:
        return {}
    u, c = np.unique(np.concatenate(keys), return_counts=True)
    dims, ids = u // V, u % V
    out: dict[int, list[tuple[int, int]]] = {}
    for j in np.unique(dims):
        sel = np.flatnonzero(dims == j)
        best = sel[np.argsort(-c[sel], kind="stable")[:k]]
        out[int(j)] = [(int(ids[i]), int(c[i])) for i in best]
    return out


def _layer_label(layer: int | None, site: str = "") -> str:
    if layer is not None:
        return str(layer)
    return "emb" if site.startswith("embeddings.") else "head"


def outlier_table(stats: dict, top: int = 10) -> list[dict]:
    """(dim, layer, site) entries with at least one outlier token, largest max |x| first, top N."""
    rows = []
    n_tok = max(stats["n_tokens"], 1)
    for name, s in stats["sites"].items():
        if s["kind"] != "hidden":
            continue
        cnt, amax = s["per_dim_outlier_count"], s["per_dim_absmax"]
        for j in np.flatnonzero(cnt):
            rows.append({
                "dim": int(j), "layer": s["layer"], "site": name, "family": s["family"], "absmax": float(amax[j]),
                "site_std": s["std"], "absmax_over_std": float(amax[j]) / s["std"] if s["std"] > 0 else None,
                "outlier_tokens": int(cnt[j]), "outlier_fraction": int(cnt[j]) / n_tok,
                "top_tokens": [[t, n] for t, n in s["outlier_tokens"].get(int(j), [])],
            })
    rows.sort(key=lambda r: -r["absmax"])
    return rows[:top]


def outlier_dims(stats: dict, top: int = 10) -> list[dict]:
    """Hidden dims that are outliers somewhere, with the (layer, site)s they are flagged at; largest max |x| first."""
    by: dict[int, dict] = {}
    n_tok = max(stats["n_tokens"], 1)
    for name, s in stats["sites"].items():
        if s["kind"] != "hidden":
            continue
        cnt, amax = s["per_dim_outlier_count"], s["per_dim_absmax"]
        for j in np.flatnonzero(cnt):
            e = by.setdefault(int(j), {"dim": int(j), "n_sites": 0, "layers": set(), "families": set(), "absmax": 0.0,
                                        "where": None, "max_outlier_fraction": 0.0})
            e["n_sites"] += 1
            if s["layer"] is not None:
                e["layers"].add(s["layer"])
            e["families"].add(s["family"])
            e["max_outlier_fraction"] = max(e["max_outlier_fraction"], int(cnt[j]) / n_tok)
            if amax[j] > e["absmax"]:
                e["absmax"], e["where"] = float(amax[j]), name
    out = sorted(by.values(), key=lambda e: -e["absmax"])[:top]
    for e in out:
        e["layers"], e["families"] = sorted(e["layers"]), sorted(e["families"], key=_family_order)
    return out


def _family_order(f: str) -> tuple[int, str]:
    """Layer families in execution order, then the rest (embeddings, head) by name: deterministic."""
    keys = list(FAMILY_SHORT)
    return (keys.index(f), "") if f in keys else (len(keys), f)


def ffn_table(stats: dict, n_layers: int) -> list[dict]:
    """Per layer: max |x| (and its dim) of the FFN output and the FFN residual sum, vs the median dim."""
    rows = []
    for i in range(n_layers):
        row = {"layer": i}
        for key, fam in (("ffn_out", FFN_OUT), ("ffn_res", FFN_RES)):
            s = stats["sites"].get(f"encoder.layer.{i}.{fam}")
            if s is None or s["kind"] != "hidden":
                continue
            pd = s["per_dim_absmax"]
            row[key] = {"absmax": float(pd.max()), "dim": int(pd.argmax()), "median_dim_absmax": float(np.median(pd)),
                        "std": s["std"], "outlier_dims": int(np.count_nonzero(s["per_dim_outlier_count"]))}
        rows.append(row)
    return rows


def weight_clipping(qm, fp32) -> dict:
    """Per linear layer of a QuantizedModel: how much of W its weight quantizer clips.

    fp32: the FP32 Model qm was quantized from (a quantized model keeps only the int8 codes).
    {name: {"absmax", "clip" (largest representable |w| of the row holding absmax), "n_clipped",
    "row" (that row, in HF order)}}. Clipped weights feeding an outlier dim erase the outlier whatever
    the activation ranges are, so a low SQNR at a linear's output can come from here.
    """
    out = {}
    from npbert.qmodel import fold_permutation

    C = qm.config.hidden_size
    float_params = fp32.params if qm.perm is None else fold_permutation(fp32.params, fp32.config, qm.perm)
    for name, w in qm.qweights.items():
        W = float_params[name + ".weight"]  # [N, K] float32, in the quantized model's (possibly permuted) order
        qmax = 2 ** (qm.recipe.weight_bits - 1) - 1
        clip = w.scale.astype(np.float64) * qmax  # [N]
        over = np.abs(W) > clip[:, None] * (1 + 1e-6)
        row = int(np.abs(W).max(axis=1).argmax())
        hf_row = row
        if qm.perm is not None and W.shape[0] == C and name.endswith(("attention.output.dense", "output.dense")):
            hf_row = int(qm.perm[row])  # rows of residual-stream writers are permuted by PEG
        out[name] = {"absmax": float(np.abs(W).max()), "clip": float(clip[row]), "n_clipped": int(over.sum()),
                     "row": hf_row}
    return out


# ------------------------------------------------------------------------------------- report


def build_report(stats: dict, meta: dict, errors: dict | None = None, recipe: str | None = None, top: int = 10,
                 weights: dict | None = None, id_to_token=None) -> dict:
    """The JSON-able report: meta (model, data), site stats, outlier tables, FFN table, recipe errors.

    id_to_token: token id -> string (the tokenizer's), to name the tokens that carry outliers.
    """
    def tok(t: int) -> str:
        name = id_to_token(t) if id_to_token is not None else None
        return name if name is not None else f"id {t}"

    n_layers = meta["model"]["num_hidden_layers"]
    sites = {}
    for name, s in stats["sites"].items():
        d = {k: v for k, v in s.items() if k not in ("per_dim_absmax", "per_dim_outlier_count", "outlier_tokens")}
        if s["kind"] == "hidden":
            d["per_dim_absmax"] = [float(f"{v:.4g}") for v in s["per_dim_absmax"]]  # 4 digits: a report, not a fixture
            cnt = s["per_dim_outlier_count"]
            d["outlier_tokens_per_dim"] = {str(int(j)): int(cnt[j]) for j in np.flatnonzero(cnt)}  # dim -> count
            # which tokens: the three most frequent, for the (up to) 16 flagged dims with the largest max |x|
            flagged = np.flatnonzero(cnt)
            keep = sorted(flagged[np.argsort(-s["per_dim_absmax"][flagged], kind="stable")[:TOKEN_DIMS_PER_SITE]])
            d["outlier_top_tokens"] = {str(j): [[tok(t), n] for t, n in s["outlier_tokens"].get(int(j), [])[:3]]
                                       for j in keep}
        sites[name] = d
    rep = {
        "npbert_report_version": REPORT_VERSION,
        **meta,
        "n_sequences": stats["n_sequences"],
        "n_tokens": stats["n_tokens"],
        "outlier_rule": {"k_sigma": stats["k_sigma"], "text": stats["outlier_rule"]},
        "outliers": [{**r, "top_tokens": [[tok(t), n] for t, n in r["top_tokens"]]} for r in outlier_table(stats, top)],
        "outlier_dims": outlier_dims(stats, top),
        "ffn_per_layer": ffn_table(stats, n_layers),
        "recipe": None,
        "sites": sites,
    }
    if recipe is not None:
        rep["recipe"] = {
            "name": recipe,
            "calibration": meta.get("calibration_note", ""),
            "errors": "per-site NMSE = sum (q - x)^2 / sum x^2 over real tokens vs FP32; SQNR = -10 log10 NMSE",
            "site_errors": {n: errors[n] for n in sites if errors and n in errors},
            "weight_clipping": weights or {},
        }
    rep.pop("calibration_note", None)
    return rep


def _g(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _md_tok(t: str) -> str:
    return t.replace("|", "\\|").replace("`", "'")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def sqnr_grid(report: dict) -> tuple[list[str], list[int], np.ndarray]:
    """-> (families present, layers, SQNR dB [layers, families] with NaN where absent)."""
    errs = (report.get("recipe") or {}).get("site_errors") or {}
    n_layers = report["model"]["num_hidden_layers"]
    fams = [f for f in FAMILY_SHORT if any(f"encoder.layer.{i}.{f}" in errs for i in range(n_layers))]
    grid = np.full((n_layers, len(fams)), np.nan)
    for i in range(n_layers):
        for j, f in enumerate(fams):
            e = errs.get(f"encoder.layer.{i}.{f}")
            if e is not None:
                grid[i, j] = np.inf if e["sqnr_db"] is None else e["sqnr_db"]
    return fams, list(range(n_layers)), grid


def render_markdown(report: dict, plots: list[str] | None = None, plot_note: str | None = None) -> str:
    m, d = report["model"], report["data"]
    top_n = max(len(report["outliers"]), len(report["outlier_dims"]), 10)
    L = [f"# Activation outlier report: {m['name']}", ""]
    L.append(f"- model: `{m['dir']}` ({m['architecture']}, {m['num_hidden_layers']} layers, hidden {m['hidden_size']}, "
             f"FFN {m['intermediate_size']})")
    pairs = " (sentence pairs)" if d["pairs"] else ""
    L.append(f"- data: `{d['path']}`: {report['n_sequences']} texts{pairs}, a seeded sample (seed {d['seed']}) of "
             f"{d['rows_in_file']} rows; {report['n_tokens']} real tokens (padding excluded from every statistic)")
    L.append(f"- outlier rule: {report['outlier_rule']['text']}")
    rec = report.get("recipe")
    if rec:
        L.append(f"- recipe `{rec['name']}`: {rec['calibration']}")
    L += ["", f"## Outlier hidden dimensions (top {len(report['outliers'])} by max |x|)", ""]
    if report["outliers"]:
        rows = [[str(r["dim"]), _layer_label(r["layer"], r["site"]), f"`{r['family']}`", _g(r["absmax"]), _g(r["site_std"], 3),
                 _g(r["absmax_over_std"], 3), f"{r['outlier_tokens']} ({r['outlier_fraction']:.2%})",
                 ", ".join(f"`{_md_tok(t)}` {n / r['outlier_tokens']:.0%}" for t, n in r["top_tokens"][:3])]
                for r in report["outliers"]]
        L += _md_table(["dim", "layer", "site", "max \\|x\\|", "site std", "max/std", "outlier tokens",
                        "which tokens (share of its outliers)"], rows)
    else:
        L.append("No hidden dimension exceeds the rule at any site.")
    if report["outlier_dims"]:
        L += ["", "Per dimension (where it is flagged):", ""]
        rows = [[str(e["dim"]), str(e["n_sites"]), ",".join(map(str, e["layers"])) or "-",
                 " ".join(FAMILY_SHORT.get(f, f) for f in e["families"]), f"{_g(e['absmax'])} at `{e['where']}`",
                 f"{e['max_outlier_fraction']:.2%}"] for e in report["outlier_dims"]]
        L += _md_table(["dim", "sites flagged", "layers", "site families", "max \\|x\\|", "max outlier tokens"], rows)
    L += ["", "## FFN output and FFN residual sum per layer", "",
          "max |x| over all dims (the dim holding it) against the median over dims of the per-dim max |x|.", ""]
    rows = []
    for r in report["ffn_per_layer"]:
        row = [str(r["layer"])]
        for key in ("ffn_out", "ffn_res"):
            e = r.get(key)
            row += ([_g(e["absmax"]), str(e["dim"]), _g(e["median_dim_absmax"]), str(e["outlier_dims"])] if e
                    else ["n/a"] * 4)
        rows.append(row)
    L += _md_table(["layer", "FFN out max \\|x\\|", "dim", "median dim", "outlier dims",
                    "FFN res max \\|x\\|", "dim", "median dim", "outlier dims"], rows)
    if rec:
        fams, layers, grid = sqnr_grid(report)
        L += ["", f"## SQNR (dB) of `{rec['name']}` against FP32, per site family per layer", ""]
        rows = [[str(i)] + [_g(float(v), 3) if np.isfinite(v) or np.isinf(v) else "-" for v in grid[i]] for i in layers]
        with np.errstate(all="ignore"):
            finite = np.where(np.isfinite(grid), grid, np.nan)
            mean = np.nanmean(finite, axis=0) if len(layers) else np.array([])
        rows.append(["**mean**"] + [f"**{_g(float(v), 3)}**" if np.isfinite(v) else "-" for v in mean])
        L += _md_table(["layer", *(FAMILY_SHORT[f] for f in fams)], rows)
        clipped = sorted(((n, w) for n, w in rec.get("weight_clipping", {}).items() if w["n_clipped"]),
                         key=lambda nw: -nw[1]["absmax"] / max(nw[1]["clip"], 1e-30))[:top_n]
        if clipped:
            L += ["", "Weights the recipe's weight quantizer clips (largest max |w| / clip first): a clipped weight that "
                  "feeds an outlier dim erases the outlier whatever the activation ranges are.", ""]
            L += _md_table(["linear", "max \\|w\\|", "row", "clip at (that row)", "clipped weights"],
                           [[f"`{n}`", _g(w["absmax"]), str(w["row"]), _g(w["clip"]), str(w["n_clipped"])]
                            for n, w in clipped])
        other = [(n, e) for n, e in rec["site_errors"].items() if split_site(n)[0] is None]
        if other:
            L += ["", "Outside the layers: " + ", ".join(f"`{n}` {_g(e['sqnr_db'], 3)} dB" for n, e in other)]
        L += ["", "Columns: " + ", ".join(f"{s} = `{f}`" for f, s in FAMILY_SHORT.items() if f in fams) + ".",
              "NMSE = sum (q - x)^2 / sum x^2 over real tokens; SQNR = -10 log10 NMSE. "
              "Each site is measured inside the quantized model, so its error includes everything upstream."]
    L += ["", "## Plots", ""]
    if plots:
        L += [f"![{p}]({p})" for p in plots]
    else:
        L.append(plot_note or "no plots")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------- plots


def _png_bytes(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_plots(report: dict, out_dir: Path) -> list[str] | None:
    """PNG plots next to the report; None (nothing written) when matplotlib is not importable."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from npbert.cli import atomic_write_bytes

    written = []
    n_layers = report["model"]["num_hidden_layers"]
    sites = report["sites"]
    name = report["model"]["name"]

    def per_dim(i, fam):
        s = sites.get(f"encoder.layer.{i}.{fam}")
        return None if s is None or "per_dim_absmax" not in s else np.asarray(s["per_dim_absmax"])

    # 1) per-dim max |x| per layer, FFN output and FFN residual sum (the PEG paper's Figure 2 view)
    fams = [(FFN_OUT, "FFN output (output.dense.out)"), (FFN_RES, "FFN residual sum (output.residual)")]
    if all(per_dim(0, f) is not None for f, _ in fams):
        fig = Figure(figsize=(12, 1.05 * n_layers + 1.0))
        FigureCanvasAgg(fig)
        axes = fig.subplots(n_layers, 2, sharex=True, squeeze=False)
        for i in range(n_layers):
            for c, (fam, title) in enumerate(fams):
                ax, y = axes[i, c], per_dim(i, fam)
                ax.plot(np.arange(len(y)), y, lw=0.7, color="C0" if c == 0 else "C3")
                j = int(y.argmax())
                ax.annotate(f"dim {j}: {y[j]:.3g}", (j, y[j]), xytext=(4, -2), textcoords="offset points",
                            fontsize=7, va="top", ha="left" if j < 0.7 * len(y) else "right")
                ax.set_ylim(0, y.max() * 1.15)
                ax.tick_params(labelsize=7)
                ax.set_ylabel(f"L{i}", fontsize=8, rotation=0, labelpad=12, va="center")
                if i == 0:
                    ax.set_title(title, fontsize=9)
        for c in range(2):
            axes[-1, c].set_xlabel("hidden dimension", fontsize=8)
            axes[-1, c].set_xlim(0, len(per_dim(0, fams[0][0])) - 1)
        fig.suptitle(f"{name}: per-dimension max |x| over real tokens, per layer", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97 if n_layers > 4 else 0.93))
        atomic_write_bytes(out_dir / "ffn_per_dim_absmax.png", _png_bytes(fig, 80))
        written.append("ffn_per_dim_absmax.png")

        # 2) the same as heatmaps: layer x hidden dim, log colour scale (outlier dims show as stripes)
        C = len(per_dim(0, FFN_OUT))
        fig = Figure(figsize=(max(8.0, C / 80 + 2), 1.2 + 0.5 * n_layers * 2))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 1, squeeze=False)[:, 0]
        for ax, (fam, title) in zip(axes, fams):
            g = np.stack([per_dim(i, fam) for i in range(n_layers)])
            im = ax.imshow(np.maximum(g, 1e-6), aspect="auto", interpolation="nearest", cmap="magma",
                           norm=LogNorm(vmin=max(np.median(g) / 10, 1e-6), vmax=g.max()))
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("layer", fontsize=8)
            ax.set_yticks(range(n_layers))
            ax.tick_params(labelsize=7)
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03).ax.tick_params(labelsize=7)
        axes[-1].set_xlabel("hidden dimension", fontsize=8)
        fig.suptitle(f"{name}: per-dimension max |x| (log scale)", fontsize=10)
        fig.tight_layout()
        atomic_write_bytes(out_dir / "ffn_per_dim_heatmap.png", _png_bytes(fig, 100))
        written.append("ffn_per_dim_heatmap.png")

    # 3) SQNR per site family per layer
    if report.get("recipe"):
        fams_q, layers, grid = sqnr_grid(report)
        if fams_q:
            fig = Figure(figsize=(1.0 + 0.75 * len(fams_q), 1.3 + 0.38 * len(layers)))
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            shown = np.where(np.isfinite(grid), grid, np.nan)
            im = ax.imshow(shown, aspect="auto", cmap="RdYlGn", interpolation="nearest",
                           vmin=np.nanmin(shown) if np.isfinite(shown).any() else 0,
                           vmax=np.nanmax(shown) if np.isfinite(shown).any() else 1)
            for i in range(len(layers)):
                for j in range(len(fams_q)):
                    v = grid[i, j]
                    ax.text(j, i, "inf" if np.isinf(v) else ("-" if np.isnan(v) else f"{v:.1f}"),
                            ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(fams_q)), [FAMILY_SHORT[f] for f in fams_q], rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04, label="SQNR dB").ax.tick_params(labelsize=7)
            ax.set_title(f"{name}, {report['recipe']['name']}: SQNR (dB) vs FP32 per site", fontsize=9)
            fig.tight_layout()
            atomic_write_bytes(out_dir / "sqnr_per_site.png", _png_bytes(fig, 100))
            written.append("sqnr_per_site.png")
    return written


# ------------------------------------------------------------------------------------- output


def _round(x, sig: int = 6):
    """JSON-able copy: NumPy -> Python, floats to `sig` significant digits, non-finite -> None."""
    if isinstance(x, dict):
        return {str(k): _round(v, sig) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_round(v, sig) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return float(f"{x:.{sig}g}") if math.isfinite(x) else None
    return x


def _has_dict(x) -> bool:
    return isinstance(x, dict) or (isinstance(x, list) and any(_has_dict(v) for v in x))


def dumps_report(report: dict) -> str:
    """Indented JSON with lists that hold no objects kept on one line (per-dim arrays stay small)."""
    flat: dict[str, str] = {}

    def pack(x):
        if isinstance(x, dict):
            return {k: pack(v) for k, v in x.items()}
        if isinstance(x, list):
            if x and not _has_dict(x):
                key = f"@@{len(flat)}@@"
                flat[key] = json.dumps(x, separators=(",", ":"), allow_nan=False)
                return key
            return [pack(v) for v in x]
        return x

    text = json.dumps(pack(_round(report)), indent=1, allow_nan=False)
    return re.sub(r'"(@@\d+@@)"', lambda m: flat[m.group(1)], text) + "\n"


# ------------------------------------------------------------------------------------- CLI


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="activation outlier report: per-site ranges, outlier dims, per-site SQNR of a recipe",
        description="Activation ranges per layer and site over real tokens, the hidden dims holding the outliers, "
                    "and (with --recipe) per-site SQNR against FP32. Writes report.json, report.md and PNG plots.")
    p.add_argument("--model", default=None, help="HF model directory (default: all-MiniLM-L6-v2 in weights/)")
    p.add_argument("--data", required=True, help="TSV with a GLUE/SICK header (pairs are used), or one text per line")
    p.add_argument("--recipe", default=None, help="also measure per-site SQNR of this recipe (static ones calibrate on "
                                                  "the same sampled texts)")
    p.add_argument("--size", type=int, default=256, help="seeded random sample of this many rows (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--top", type=int, default=10, help="rows of the outlier tables (default 10)")
    p.add_argument("--k-sigma", type=float, default=DEFAULT_K_SIGMA, help="outlier rule: |x - mean| > K * std (default 6)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="threads for numba kernels (default: all cores)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bars on stderr (auto: only when stderr is a terminal)")
    p.set_defaults(func=cmd_report)


def _read_data(path: Path, size: int, seed: int):
    from npbert.qmodel_cli import read_calibration_tsv

    if not path.is_file():
        raise DataError(f"{path}: data file not found; pass a TSV with a GLUE/SICK header or a file of one text per line")
    try:
        texts_all, _ = read_calibration_tsv(path, None, seed)
        texts, pairs = read_calibration_tsv(path, size, seed)
    except CalibrationError as e:  # the reader speaks of calibration; here it is the report's data
        raise DataError(f"{path}: no texts to report on ({e}); the file needs a GLUE/SICK header and rows, "
                        "or one text per line") from None
    return texts, pairs, len(texts_all)


def _id_to_token(model_dir: Path):
    """The tokenizer's id -> token string (None for unknown ids), or None without a usable tokenizer.json."""
    try:
        from tokenizers import Tokenizer as _HFTokenizer

        return _HFTokenizer.from_file(str(model_dir / "tokenizer.json")).id_to_token
    except Exception:  # tokenizers raises plain Exceptions; naming tokens is a nicety, ids still print
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from npbert.cli import atomic_write_bytes, default_model_dir
    from npbert.progress import progress_enabled
    from npbert.model import load_model

    recipe = None if args.recipe in (None, "fp32") else args.recipe
    if recipe is not None:
        from npbert.qmodel import get_recipe

        get_recipe(recipe)  # unknown names fail here, before any work
    if args.size < 1:
        raise InputError(f"--size must be >= 1, got {args.size}")
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    progress = {"always": True, "never": False}.get(args.progress, progress_enabled())
    data = Path(args.data)
    texts, pairs, n_rows = _read_data(data, args.size, args.seed)
    model_dir = Path(args.model) if args.model else default_model_dir()
    model = load_model(model_dir)
    batches = [b for _, b in model.batches(texts, pairs, args.batch_size)]
    stats = activation_stats(model, batches, args.k_sigma, progress=progress)

    cfg = model.config
    meta = {
        "model": {"name": model_dir.resolve().name, "dir": str(model_dir), "architecture": cfg.architecture,
                  "family": cfg.family, "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
                  "intermediate_size": cfg.intermediate_size},
        "data": {"path": str(data), "rows_in_file": n_rows, "size": args.size, "seed": args.seed,
                 "pairs": pairs is not None, "batch_size": args.batch_size},
    }
    errors = weights = None
    if recipe is not None:
        from npbert.qmodel import get_recipe, quantize_model, site_errors

        rec = get_recipe(recipe)
        meta["calibration_note"] = (
            f"static ranges calibrated on the same {len(texts)} sampled texts the report measures (not held out)"
            if rec.needs_calibration else "no calibration (ranges from the current values)")
        qm = quantize_model(model, recipe, calibration=(texts, pairs) if rec.needs_calibration else None,
                            progress=progress, batch_size=args.batch_size)
        errors = site_errors(qm, model, batches)
        weights = weight_clipping(qm, model)
    report = build_report(stats, meta, errors, recipe, args.top, weights, _id_to_token(model_dir))

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    plots = write_plots(report, out)
    note = None
    if plots is None:
        note = PLOT_HINT
        print(f"npbert: {PLOT_HINT}", file=sys.stderr)
    report["plots"] = plots or []
    atomic_write_bytes(out / "report.json", dumps_report(report).encode())
    atomic_write_bytes(out / "report.md", render_markdown(report, plots, note).encode())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f" and {len(plots)} plots" if plots else ""),
          file=sys.stderr)
    return 0
