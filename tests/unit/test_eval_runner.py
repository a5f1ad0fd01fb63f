"""evaluate(): scoring per task kind, label mapping, calibration plumbing and errors, on a fake model
(fast, no weights); plus one marked test of FP32 on the real MRPC checkpoint (README numbers)."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from npbert.config import BertConfig
from npbert.errors import CalibrationError, NpbertError, UnsupportedModelError
from npbert.progress import Progress
from npbert.eval.runner import calibration_sample, evaluate, parse_recipes
from npbert.eval.tasks import TASKS

SHARED = Path(__file__).resolve().parents[2].parent / "shared"

BASE = dict(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4)


class FakeModel:
    """Model's classify/embed API over a lookup table: logits[text|pair], embeddings[text]."""

    tokenizer = None

    def __init__(self, cfg: dict, logits=None, emb=None):
        self.config = BertConfig.from_dict({**BASE, **cfg})
        self.logits = logits or {}
        self.emb = emb or {}
        self.source = "fake"
        self.calls = 0

    def classify(self, texts, pairs=None, batch_size=32, executor=None):
        assert len(texts) <= batch_size
        self.calls += 1
        keys = [t if pairs is None else f"{t}|{p}" for t, p in zip(texts, pairs or texts)]
        return np.array([self.logits[k] for k in keys], np.float32)

    def embed(self, texts, batch_size=32, executor=None):
        assert len(texts) <= batch_size
        self.calls += 1
        return np.array([self.emb[t] for t in texts], np.float32)


def _tsv(folder: Path, name: str, header: str, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


SEQ = {"architectures": ["BertForSequenceClassification"]}


def test_classification_accuracy_f1(tmp_path):
    rows = ["1\t1\t2\tA0\tB0", "0\t3\t4\tA1\tB1", "1\t5\t6\tA2\tB2", "0\t7\t8\tA3\tB3"]
    _tsv(tmp_path, "dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", rows)
    # predictions: 1, 0, 0, 1 against gold 1, 0, 1, 0 -> acc 50, f1 = 2*1/(2+1+1) = 50
    logits = {"A0|B0": [0, 1], "A1|B1": [1, 0], "A2|B2": [2, 1], "A3|B3": [0, 3]}
    m = FakeModel(SEQ, logits)
    r = evaluate(m, "mrpc", tmp_path, batch_size=3, progress=False)
    assert {k: r[k] for k in ("task", "model", "split", "n")} == {"task": "mrpc", "model": "fake", "split": "dev", "n": 4}
    assert r["results"] == {"fp32": {"f1": 50.0, "accuracy": 50.0}}
    assert m.calls == 2  # batches of 3
    assert set(r["seconds"]) >= {"load", "fp32", "total"}


def test_rte_label_map_follows_id2label(tmp_path):
    rows = ["0\tP0\tH0\tentailment", "1\tP1\tH1\tnot_entailment", "2\tP2\tH2\tnot_entailment"]
    _tsv(tmp_path, "dev.tsv", "index\tsentence1\tsentence2\tlabel", rows)
    # A checkpoint whose class 0 is not_entailment: the gold ids must be remapped to its order.
    cfg = {**SEQ, "id2label": {"0": "not_entailment", "1": "entailment"}}
    logits = {"P0|H0": [0, 1], "P1|H1": [1, 0], "P2|H2": [1, 0]}  # predicts entailment, not, not
    r = evaluate(FakeModel(cfg, logits), "rte", tmp_path, progress=False)
    assert r["results"]["fp32"]["accuracy"] == 100.0
    assert r["label_map"] == {"entailment": 1, "not_entailment": 0}
    # The GLUE order (RTE's config.json: 0 = entailment) and generic names keep the identity.
    for names in ({"0": "entailment", "1": "not_entailment"}, {"0": "LABEL_0", "1": "LABEL_1"}):
        logits = {"P0|H0": [1, 0], "P1|H1": [0, 1], "P2|H2": [0, 1]}
        r = evaluate(FakeModel({**SEQ, "id2label": names}, logits), "rte", tmp_path, progress=False)
        assert r["results"]["fp32"]["accuracy"] == 100.0 and r["label_map"] == {"entailment": 0, "not_entailment": 1}


def test_regression_uses_first_logit(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tg\tf\ty\t0\tn\tn\tA{i}\tB{i}\t{s}" for i, s in enumerate([0.0, 1.0, 2.5, 5.0])]
    _tsv(tmp_path, "dev.tsv", head, rows)
    preds = [0.1, 1.2, 2.0, 4.0]
    m = FakeModel({**SEQ, "num_labels": 1, "problem_type": "regression"}, {f"A{i}|B{i}": [p] for i, p in enumerate(preds)})
    r = evaluate(m, "stsb", tmp_path, progress=False)
    assert r["results"]["fp32"]["spearman"] == pytest.approx(100.0)
    gold = np.array([0.0, 1.0, 2.5, 5.0])
    pred32 = np.array(preds, np.float32).astype(np.float64)  # logits are float32
    assert r["results"]["fp32"]["pearson"] == pytest.approx(100 * np.corrcoef(gold, pred32)[0, 1], abs=1e-9)


def test_similarity_cosine_of_embeddings(tmp_path):
    head = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    rows = ["1\tS1\tS2\t1.0\tN", "2\tS1\tS3\t3.0\tN", "3\tS2\tS3\t4.5\tN"]
    _tsv(tmp_path, "SICK_trial.txt", head, rows)
    emb = {"S1": [1, 0, 0, 0], "S2": [0, 1, 0, 0], "S3": [1, 1, 0, 0]}  # cos: 0, 0.707, 0.707
    m = FakeModel({}, emb=emb)  # a bare encoder is fine for similarity tasks
    r = evaluate(m, "sick-sim", tmp_path, split="trial", progress=False)
    cos = np.array([0.0, np.sqrt(0.5), np.sqrt(0.5)])
    gold = np.array([1.0, 3.0, 4.5])
    assert r["results"]["fp32"]["pearson"] == pytest.approx(100 * np.corrcoef(gold, cos)[0, 1], abs=1e-5)
    assert r["results"]["fp32"]["spearman"] == pytest.approx(100 * np.corrcoef([1, 2, 3], [1, 2.5, 2.5])[0, 1], abs=1e-9)
    assert m.calls == 1  # three distinct sentences, embedded once each


def test_constant_predictions_give_none_correlation(tmp_path):
    head = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    _tsv(tmp_path, "SICK_trial.txt", head, ["1\tS1\tS2\t1.0\tN", "2\tS1\tS3\t3.0\tN"])
    m = FakeModel({}, emb={"S1": [1, 0, 0, 0], "S2": [0, 1, 0, 0], "S3": [0, 0, 1, 0]})
    r = evaluate(m, "sick-sim", tmp_path, split="trial", progress=False)
    assert r["results"]["fp32"] == {"spearman": None, "pearson": None}


def test_model_head_mismatches(tmp_path):
    _tsv(tmp_path, "dev.tsv", "sentence\tlabel", ["good\t1"])
    with pytest.raises(UnsupportedModelError, match="sequence-classification"):
        evaluate(FakeModel({}), "sst2", tmp_path, progress=False)  # bare BertModel
    with pytest.raises(UnsupportedModelError, match="regression head"):
        evaluate(FakeModel({**SEQ, "num_labels": 1, "problem_type": "regression"}), "sst2", tmp_path, progress=False)
    with pytest.raises(UnsupportedModelError, match="3 labels"):
        evaluate(FakeModel({**SEQ, "num_labels": 3}), "sst2", tmp_path, progress=False)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _tsv(tmp_path / "stsb", "dev.tsv", head, ["0\tg\tf\ty\t0\tn\tn\tA\tB\t1.0"])
    with pytest.raises(UnsupportedModelError, match="regression"):
        evaluate(FakeModel(SEQ), "stsb", tmp_path / "stsb", progress=False)


def test_quantized_recipe_without_qmodel(tmp_path, monkeypatch):
    _tsv(tmp_path, "dev.tsv", "sentence\tlabel", ["good\t1"])
    monkeypatch.setitem(sys.modules, "npbert.qmodel", None)  # import fails as if the file were absent
    with pytest.raises(NpbertError, match="only the 'fp32' recipe"):
        evaluate(FakeModel(SEQ, {"good": [0, 1]}), "sst2", tmp_path, recipes="fp32,dynamic", progress=False)


@pytest.fixture
def fake_qmodel(monkeypatch):
    """npbert.qmodel stand-in: records calls; 'w8a8' is static, 'dynamic' is not."""
    calls = []

    class Quantized:
        def __init__(self, model, recipe):
            self.model, self.recipe, self.config = model, recipe, model.config

        def classify(self, texts, pairs=None, batch_size=32, executor=None):
            out = self.model.classify(texts, pairs, batch_size)
            return out[:, ::-1].copy() if self.recipe == "flip" else out

    def quantize_model(model, recipe, calibration=None, overrides=None, progress=True):
        calls.append((recipe, calibration))
        return Quantized(model, recipe)

    mod = types.ModuleType("npbert.qmodel")
    mod.quantize_model = quantize_model
    mod.RECIPES = {
        "dynamic": types.SimpleNamespace(needs_calibration=False),
        "w8a8": types.SimpleNamespace(needs_calibration=True),
        "flip": types.SimpleNamespace(needs_calibration=False),
    }

    def get_recipe(name):
        if name not in mod.RECIPES:
            from npbert.errors import QuantError

            raise QuantError(f"unknown recipe {name!r}")
        return mod.RECIPES[name]

    mod.get_recipe = get_recipe
    monkeypatch.setitem(sys.modules, "npbert.qmodel", mod)
    return calls


def _sst2_dirs(tmp_path, n_train=50):
    _tsv(tmp_path, "dev.tsv", "sentence\tlabel", ["dev good\t1", "dev bad\t0"])
    _tsv(tmp_path, "train.tsv", "sentence\tlabel", [f"train {i}\t{i % 2}" for i in range(n_train)])
    return FakeModel(SEQ, {"dev good": [0, 1], "dev bad": [1, 0]})


def test_static_recipes_calibrate_on_a_seeded_train_sample(tmp_path, fake_qmodel):
    m = _sst2_dirs(tmp_path)
    r = evaluate(m, "sst2", tmp_path, recipes="fp32, dynamic,w8a8,flip", calib_size=8, seed=3, progress=False)
    assert list(r["results"]) == ["fp32", "dynamic", "w8a8", "flip"]
    assert r["results"]["w8a8"] == {"accuracy": 100.0} and r["results"]["flip"] == {"accuracy": 0.0}
    by = dict(fake_qmodel)
    assert by["dynamic"] is None and by["flip"] is None
    texts, pairs = by["w8a8"]
    assert pairs is None and len(texts) == 8 and all(t.startswith("train ") for t in texts)
    assert len(set(texts)) == 8  # sampled without replacement
    assert r["calibration"] == {"split": "train", "size": 8, "requested": 8, "seed": 3, "data": str(tmp_path / "train.tsv")}
    # Same seed, same sample; another seed, another sample.
    fake_qmodel.clear()
    evaluate(m, "sst2", tmp_path, recipes="w8a8", calib_size=8, seed=3, progress=False)
    assert fake_qmodel[0][1][0] == texts
    fake_qmodel.clear()
    evaluate(m, "sst2", tmp_path, recipes="w8a8", calib_size=8, seed=4, progress=False)
    assert fake_qmodel[0][1][0] != texts


def test_never_calibrates_on_the_scored_split(tmp_path, fake_qmodel):
    m = _sst2_dirs(tmp_path)
    with pytest.raises(CalibrationError, match="split being scored"):
        evaluate(m, "sst2", tmp_path, split="dev", recipes="w8a8", calib_split="dev", progress=False)
    with pytest.raises(CalibrationError, match="split being scored"):
        evaluate(m, "sst2", tmp_path, split="train", recipes="w8a8", calib_split="train", progress=False)
    assert fake_qmodel == []


def test_recipe_and_calibration_errors_come_before_any_scoring(tmp_path, fake_qmodel):
    from npbert.errors import DataError, QuantError

    m = _sst2_dirs(tmp_path)
    with pytest.raises(QuantError, match=r"unknown recipe 'w4'"):
        evaluate(m, "sst2", tmp_path, recipes="fp32,w4", progress=False)
    (tmp_path / "train.tsv").unlink()  # like QNLI: no train split to calibrate on
    with pytest.raises(DataError, match=r"train\.tsv: split 'train' .* not found; available splits .*\['dev'\]"):
        evaluate(m, "sst2", tmp_path, recipes="fp32,w8a8", progress=False)
    assert m.calls == 0 and fake_qmodel == []
    r = evaluate(m, "sst2", tmp_path, recipes="fp32,dynamic", progress=False)  # dynamic needs no train split
    assert "calibration" not in r and r["results"]["dynamic"] == {"accuracy": 100.0}


def test_calibration_sample_small_split_and_similarity():
    t = TASKS["sick-sim"]
    from npbert.eval.tasks import Examples

    ex = Examples(["a1", "a2", "a3"], ["b1", "b2", "b3"], np.zeros(3))
    texts, pairs = calibration_sample(t, ex, 100, seed=0)
    assert pairs is None and sorted(texts) == ["a1", "a2", "a3", "b1", "b2", "b3"]  # capped at the pool
    texts, pairs = calibration_sample(TASKS["rte"], ex, 2, seed=0)
    assert len(texts) == 2 and [p[1] for p in pairs] == [t[1] for t in texts]  # pairs stay together


def test_parse_recipes():
    assert parse_recipes("fp32, dynamic,,fp32") == ("fp32", "dynamic")
    assert parse_recipes(["w8a8"]) == ("w8a8",)
    with pytest.raises(Exception, match="no recipe"):
        parse_recipes(" , ")


def test_progress_shows_only_when_enabled():
    buf = io.StringIO()  # not a TTY: auto mode stays silent
    with Progress(10, "x", stream=buf) as bar:
        bar.update(10)
    assert buf.getvalue() == ""
    buf = io.StringIO()
    with Progress(10, "task dev fp32", enabled=True, stream=buf, interval=0) as bar:
        bar.update(4)
        bar.update(6)
    out = buf.getvalue()
    assert out.startswith("\rtask dev fp32") and "10/10" in out and "100%" in out and out.endswith("\n")


def test_progress_env_forces(monkeypatch):
    monkeypatch.setenv("NPBERT_PROGRESS", "1")
    assert Progress(1, stream=io.StringIO()).enabled
    monkeypatch.setenv("NPBERT_PROGRESS", "0")
    assert not Progress(1, stream=io.StringIO(), enabled=None).enabled


# ------------------------------------------------------------------------- the real checkpoint


@pytest.mark.realmodel
@pytest.mark.slow
def test_fp32_mrpc_matches_readme():
    """../shared/models/README.md: MRPC FP32 (transformers) F1 86.48, accuracy 80.15 on dev."""
    model = SHARED / "models" / "minilm-l6-glue" / "MRPC"
    data = SHARED / "data" / "glue" / "MRPC"
    if not (model / "config.json").is_file() or not (data / "dev.tsv").is_file():
        pytest.skip(f"{model} or {data} not present (they live in ../shared)")
    r = evaluate(model, "mrpc", data, progress=False)
    assert r["n"] == 408 and r["truncated"] == 0
    assert r["results"]["fp32"]["f1"] == pytest.approx(86.48, abs=0.01)
    assert r["results"]["fp32"]["accuracy"] == pytest.approx(80.15, abs=0.01)
