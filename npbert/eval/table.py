"""Markdown results table, laid out as quantization papers print it.

Rows are (task, model) results; columns are FP32 then each recipe in order of first appearance.
Each cell is the task's main metric (the first of its metrics tuple) in percent; recipe cells add
the change from FP32 in parentheses, e.g. `87.04 (-2.75)`. The change is computed from the
two-decimal values shown, so the table's arithmetic checks by eye. A final "average" row covers the
tasks that have every column (and says how many), when there are at least two of them.
"""

from __future__ import annotations

from pathlib import Path

from npbert.errors import InputError
from npbert.eval.tasks import TASKS

__all__ = ["render_table", "main_metric"]

FP32 = "fp32"
MISSING = "n/a"
_METRIC_NAMES = {"accuracy": "Acc.", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}
_RECIPE_NAMES = {"fp32": "FP32"}


def main_metric(result: dict) -> str:
    """The metric a task is reported by: the first in its TASKS entry, else the first present."""
    t = TASKS.get(result.get("task"))
    if t is not None:
        return t.metrics[0]
    for scores in result.get("results", {}).values():
        if scores:
            return next(iter(scores))
    raise InputError(f"result for task {result.get('task')!r} has no metric values")


def _check(i: int, r) -> None:
    if not isinstance(r, dict):
        raise InputError(f"result {i}: expected a dict (one evaluate() result), got {type(r).__name__}")
    missing = [k for k in ("task", "model", "results") if k not in r]
    if missing:
        raise InputError(f"result {i}: missing key(s) {missing}; is this an `npbert eval --json` file?")
    if not isinstance(r["results"], dict) or not r["results"]:
        raise InputError(f"result {i} ({r['task']}): 'results' must map recipe -> {{metric: value}}")


def _model_name(model: str) -> str:
    """The checkpoint folder's name: `.../minilm-l6-glue/MRPC` -> `minilm-l6-glue/MRPC`."""
    p = Path(str(model))
    parts = [x for x in p.parts[-2:] if x not in ("/", "")]
    return "/".join(parts) if parts else str(model)


def _value(r: dict, recipe: str, metric: str) -> float | None:
    v = r["results"].get(recipe, {}).get(metric)
    return None if v is None else round(float(v), 2)


def _cell(v: float | None, ref: float | None, is_ref: bool) -> str:
    if v is None:
        return MISSING
    if is_ref or ref is None:
        return f"{v:.2f}"
    d = round(v - ref, 2)
    return f"{v:.2f} ({'+' if d >= 0 else '-'}{abs(d):.2f})"  # no "-0.00": d == 0 prints +0.00


def render_table(results: list[dict]) -> str:
    """-> a Markdown table (string ending in a newline) of results from `evaluate`."""
    if isinstance(results, dict):
        results = [results]
    results = list(results)
    if not results:
        raise InputError("no results to tabulate")
    for i, r in enumerate(results):
        _check(i, r)

    recipes: list[str] = []
    if any(FP32 in r["results"] for r in results):
        recipes.append(FP32)
    for r in results:
        for k in r["results"]:
            if k not in recipes:
                recipes.append(k)

    head = ["task", "model", "metric"] + [_RECIPE_NAMES.get(k, k) for k in recipes]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(recipes)) + "|"]
    complete: list[list[float]] = []
    for r in results:
        metric = main_metric(r)
        vals = [_value(r, k, metric) for k in recipes]
        ref = vals[0] if recipes[0] == FP32 else None
        task = r["task"] if r.get("split", "dev") == "dev" else f"{r['task']} ({r['split']})"
        cells = [task, _model_name(r["model"]), _METRIC_NAMES.get(metric, metric)]
        cells += [_cell(v, ref, k == FP32) for k, v in zip(recipes, vals)]
        lines.append("| " + " | ".join(cells) + " |")
        if all(v is not None for v in vals):
            complete.append(vals)

    if len(complete) >= 2:
        means = [round(sum(col) / len(complete), 2) for col in zip(*complete)]
        ref = means[0] if recipes[0] == FP32 else None
        cells = [f"average ({len(complete)} tasks)", "", ""] + [_cell(v, ref, k == FP32) for k, v in zip(recipes, means)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
