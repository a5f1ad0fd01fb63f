"""Evaluate a checkpoint (FP32 and quantization recipes) on one task split.

    evaluate(model_dir, task, data_dir, split="dev", recipes=("fp32", "dynamic")) ->
      {"task": "mrpc", "model": "...", "split": "dev", "n": 408,
       "results": {"fp32": {"f1": 86.48, "accuracy": 80.15}, "dynamic": {...}},
       "calibration": {...}, "seconds": {...}, "truncated": 0, "label_map": {...}, "data": "..."}

Metric values are percentages (86.48, not 0.8648); an undefined correlation (constant predictions)
is None. Task kinds:
  classification  argmax of the sequence-classification logits vs the gold class
  regression      logits[:, 0] of a one-output regression head vs the gold score
  similarity      cosine of the pooled embeddings of sentence A and sentence B vs the gold score

Static recipes calibrate on `calib_split` (a seeded random sample of `calib_size` rows), never on
the scored split: that is checked, not assumed.
"""

from __future__ import annotations

import importlib
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from npbert.errors import CalibrationError, InputError, NpbertError, NpbertWarning, QuantError, UnsupportedModelError
from npbert.eval.metrics import METRICS
from npbert.progress import Progress, progress_enabled
from npbert.eval.tasks import Examples, Task, get_task, load_split, split_path

__all__ = ["evaluate", "parse_recipes", "calibration_sample", "score"]

FP32 = "fp32"


def parse_recipes(recipes: str | Sequence[str]) -> tuple[str, ...]:
    """'fp32, dynamic' or ['fp32', 'dynamic'] -> ('fp32', 'dynamic'): stripped, duplicates dropped."""
    items = recipes.split(",") if isinstance(recipes, str) else list(recipes)
    out: list[str] = []
    for r in items:
        if not isinstance(r, str):
            raise InputError(f"recipe names must be strings, got {r!r}")
        r = r.strip()
        if r and r not in out:
            out.append(r)
    if not out:
        raise InputError("no recipe given; pass e.g. --recipes fp32,dynamic")
    return tuple(out)


def _show(progress) -> bool | None:
    """progress=True: auto (stderr is a TTY); 'always'/'force': on; False/None/'never': off."""
    if isinstance(progress, str):
        p = progress.strip().lower()
        if p in ("always", "force", "on"):
            return True
        if p in ("never", "off"):
            return False
        if p == "auto":
            return None
        raise InputError(f"progress must be True, False, 'auto', 'always' or 'never', got {progress!r}")
    return None if progress else False


def _quantize_api():
    """(quantize_model, the npbert.qmodel module), or a clear error if this build has none yet."""
    try:
        qmodel = importlib.import_module("npbert.qmodel")
    except ImportError as e:
        if e.name not in (None, "npbert.qmodel"):  # qmodel exists but one of its imports is broken
            raise
        qmodel = None
    fn = getattr(qmodel, "quantize_model", None)
    if fn is None:
        raise NpbertError(
            "quantized recipes need npbert.qmodel.quantize_model, which this build does not provide; "
            "only the 'fp32' recipe can be evaluated"
        )
    return fn, qmodel


def _needs_calibration(qmodel, recipe: str) -> bool:
    """Whether the recipe has statically calibrated sites (qmodel resolves names and options)."""
    return qmodel.get_recipe(recipe).needs_calibration


def calibration_sample(t: Task, examples: Examples, size: int, seed: int) -> tuple[list[str], list[str] | None]:
    """A fixed seeded random sample of `size` rows (pairs kept together) of the calibration split.

    Similarity tasks embed sentences one at a time, so their calibration texts are `size` single
    sentences drawn from the pool of all sentence A and sentence B of the split.
    """
    if size < 1:
        raise InputError(f"calib_size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    if t.kind == "similarity":
        pool = list(examples.texts) + list(examples.pairs or [])
        idx = np.sort(rng.choice(len(pool), size=min(size, len(pool)), replace=False))
        return [pool[i] for i in idx], None
    idx = np.sort(rng.choice(len(examples), size=min(size, len(examples)), replace=False))
    sub = examples.subset(idx)
    return sub.texts, sub.pairs


def _label_map(t: Task, model) -> np.ndarray | None:
    """For string-labeled tasks: dataset class id -> model class id, read from config.id2label when
    it names the task's labels (any order); None = identity (generic names such as LABEL_0)."""
    cfg = model.config
    if t.label_names is None or not cfg.id2label:
        return None
    names = [cfg.id2label.get(str(i)) for i in range(cfg.n_labels)]
    if sorted(n for n in names if n is not None) != sorted(t.label_names):
        return None
    return np.array([names.index(n) for n in t.label_names], np.int64)


def _check_model(t: Task, model) -> None:
    cfg = model.config
    src = getattr(model, "source", "") or "the model"
    if t.kind == "similarity":
        return
    if cfg.head != "sequence":
        raise UnsupportedModelError(
            f"{src}: task {t.name!r} needs a sequence-classification checkpoint "
            f"(*ForSequenceClassification), but {cfg.architecture} has no such head; use a fine-tuned "
            f"task checkpoint, or a similarity task (stsb-sim, sick-sim) for a bare encoder"
        )
    if t.kind == "regression" and not (cfg.is_regression and cfg.n_labels == 1):
        raise UnsupportedModelError(
            f"{src}: task {t.name!r} is regression, but the checkpoint is a {cfg.n_labels}-label classifier "
            "(config.json problem_type / num_labels); use the task's regression checkpoint"
        )
    if t.kind == "classification":
        if cfg.is_regression:
            raise UnsupportedModelError(
                f"{src}: task {t.name!r} is classification, but the checkpoint has a regression head; "
                "use the task's classification checkpoint"
            )
        if t.n_classes is not None and cfg.n_labels != t.n_classes:
            raise UnsupportedModelError(
                f"{src}: task {t.name!r} has {t.n_classes} classes, but the checkpoint predicts {cfg.n_labels} labels "
                f"({cfg.id2label}); is this the task's checkpoint?"
            )


def score(t: Task, gold: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """The task's metrics as percentages; None where a correlation is undefined."""
    out: dict[str, float | None] = {}
    for m in t.metrics:
        v = METRICS[m](gold, pred)
        out[m] = None if not np.isfinite(v) else 100.0 * float(v)
    return out


# ------------------------------------------------------------------------------------ prediction


def _order(model, texts: list[str], pairs: list[str] | None) -> tuple[np.ndarray, int, int]:
    """Rows longest first (Model.batches' own order, so chunks of batch_size are its batches),
    plus (number of truncated rows, token limit)."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        enc = tok.encode(texts, pairs, warn=False)
        lengths = enc.attention_mask.sum(axis=1)
        return np.argsort(-lengths, kind="stable"), int(enc.truncated.sum()), int(tok.max_length)
    lengths = np.array([len(a) + (len(pairs[i]) if pairs is not None else 0) for i, a in enumerate(texts)])
    return np.argsort(-lengths, kind="stable"), 0, 0


def _in_chunks(fn, order: np.ndarray, out: np.ndarray, batch_size: int, bar: Progress) -> np.ndarray:
    """out[rows] = fn(rows) for consecutive batch_size slices of `order`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NpbertWarning)  # truncation is counted once by the caller
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            out[rows] = fn(rows)
            bar.update(len(rows))
    return out


def _predict(t: Task, m, cfg, ex: Examples, order: np.ndarray, batch_size: int, bar: Progress) -> np.ndarray:
    """-> predictions [n]: class ids (classification) or scores (regression, similarity).
    `cfg` is the FP32 model's config (a quantized model has the same outputs)."""
    texts, pairs = ex.texts, ex.pairs
    if t.kind == "similarity":
        return _similarity(m, cfg.hidden_size, ex, order, batch_size, bar)
    n_out = cfg.n_labels
    logits = np.zeros((len(texts), n_out), np.float32)

    def run(rows):
        return m.classify([texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows], batch_size=batch_size)

    logits = _in_chunks(run, order, logits, batch_size, bar)
    if not np.isfinite(logits).all():
        raise NpbertError(f"{t.name}: the model produced NaN or infinite logits")
    if t.kind == "regression":
        return logits[:, 0].astype(np.float64)
    return np.argmax(logits, axis=1)


def _similarity(m, hidden: int, ex: Examples, order: np.ndarray, batch_size: int, bar: Progress) -> np.ndarray:
    """Cosine of embed(A) and embed(B), embedding each distinct sentence once. `order` indexes the
    distinct sentences (longest first)."""
    uniq = list(dict.fromkeys(list(ex.texts) + list(ex.pairs)))
    where = {s: i for i, s in enumerate(uniq)}
    emb = np.zeros((len(uniq), hidden), np.float32)
    emb = _in_chunks(lambda rows: m.embed([uniq[i] for i in rows], batch_size=batch_size), order, emb, batch_size, bar)
    a = emb[[where[s] for s in ex.texts]].astype(np.float64)
    b = emb[[where[s] for s in ex.pairs]].astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not (np.isfinite(num).all() and np.isfinite(den).all()):
        raise NpbertError("the model produced NaN or infinite embeddings")
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


# -------------------------------------------------------------------------------------- evaluate


def evaluate(
    model_dir,
    task: str | Task,
    data_dir,
    split: str = "dev",
    recipes: str | Sequence[str] = (FP32,),
    calib_split: str = "train",
    calib_size: int = 512,
    seed: int = 0,
    batch_size: int = 32,
    progress=True,
) -> dict:
    """Score FP32 and each quantization recipe on one split; see the module docstring for the result.

    model_dir: an HF model directory, or an already loaded Model. progress: True shows progress bars
    on stderr when it is a terminal; 'always' forces them, False hides them.
    """
    t0 = time.perf_counter()
    t = get_task(task)
    recipes = parse_recipes(recipes)
    show = _show(progress)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    quantized = [r for r in recipes if r != FP32]
    calibration = None
    if quantized:  # everything that can fail does so before the slow work
        quantize_model, qmodel = _quantize_api()
        for r in quantized:
            qmodel.get_recipe(r)  # unknown names and bad options fail here, before any scoring
        if any(_needs_calibration(qmodel, r) for r in quantized):
            if calib_size < 1:
                raise InputError(f"calib_size must be >= 1, got {calib_size}")
            calibration = _calibration(t, data_dir, split, calib_split, calib_size, seed)

    ex = load_split(t, data_dir, split)
    scored_path = Path(ex.source)
    if isinstance(model_dir, (str, Path)):
        from npbert.model import load_model

        model = load_model(model_dir)
        model_name = str(model_dir)
    else:  # an already loaded Model (tests, notebooks)
        model = model_dir
        model_name = getattr(model, "source", "") or type(model).__name__
    _check_model(t, model)
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}

    gold = ex.labels
    result: dict = {"task": t.name, "model": model_name, "split": split, "n": len(ex), "results": {}}
    extras: dict = {"data": str(scored_path)}
    lmap = _label_map(t, model)
    if t.label_names is not None:
        ids = lmap if lmap is not None else np.arange(len(t.label_names))
        extras["label_map"] = {name: int(i) for name, i in zip(t.label_names, ids)}
        if lmap is not None:
            gold = lmap[gold]

    # Row order and truncation, from the FP32 model's tokenizer (every recipe shares it).
    if t.kind == "similarity":
        uniq = list(dict.fromkeys(list(ex.texts) + list(ex.pairs)))
        order, n_trunc, limit = _order(model, uniq, None)
        n_inputs = len(uniq)
    else:
        order, n_trunc, limit = _order(model, ex.texts, ex.pairs)
        n_inputs = len(ex)
    extras["truncated"] = n_trunc
    if n_trunc:
        what = "pairs" if ex.pairs is not None and t.kind != "similarity" else "sentences"
        warnings.warn(
            f"{t.name} {split}: {n_trunc} of {n_inputs} {what} are longer than {limit} tokens and were "
            "truncated (longest first), as the checkpoint's tokenizer does",
            NpbertWarning,
            stacklevel=2,
        )

    if calibration is not None:
        extras["calibration"] = calibration[2]
        # never calibrate on the scored split (checked by name in _calibration, here by file)
        assert Path(calibration[2]["data"]).resolve() != scored_path.resolve(), "calibrating on the scored split"
    # quantize_model's own progress (calibration) takes a plain bool
    q_progress = show if show is not None else progress_enabled()
    for recipe in recipes:
        m = model
        if recipe != FP32:
            calib = calibration[:2] if calibration is not None and _needs_calibration(qmodel, recipe) else None
            tq = time.perf_counter()
            m = quantize_model(model, recipe, calibration=calib, progress=q_progress)
            seconds[f"{recipe}.quantize"] = time.perf_counter() - tq
        tp = time.perf_counter()
        with Progress(n_inputs, desc=f"{t.name} {split} {recipe}", enabled=show) as bar:
            pred = _predict(t, m, model.config, ex, order, batch_size, bar)
        seconds[recipe] = time.perf_counter() - tp
        result["results"][recipe] = score(t, gold, pred)

    seconds["total"] = time.perf_counter() - t0
    result.update(extras)
    result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return result


def _calibration(t: Task, data_dir, split: str, calib_split: str, calib_size: int, seed: int):
    """-> (texts, pairs | None, description) sampled from calib_split. Refuses the scored split."""
    if calib_split == split:
        raise CalibrationError(
            f"calibration split {calib_split!r} is the split being scored; calibrate on another split "
            "(--calib-split train) so the scores are not fitted to the test data"
        )
    cal_path = split_path(t, data_dir, calib_split)
    if cal_path.resolve() == split_path(t, data_dir, split).resolve():
        raise CalibrationError(f"{cal_path}: the calibration file is the scored file; pick another --calib-split")
    cal = load_split(t, data_dir, calib_split)
    texts, pairs = calibration_sample(t, cal, calib_size, seed)
    desc = {"split": calib_split, "size": len(texts), "requested": int(calib_size), "seed": int(seed), "data": cal.source}
    return texts, pairs, desc
