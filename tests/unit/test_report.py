"""`npbert report` and activation_stats on the tiny golden model: numbers against a direct NumPy
computation from an FP32 tap, padding never counted, the files the CLI writes, bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from npbert.cli import main
from npbert.errors import DataError, InputError, QuantError
from npbert.io.tokenizer import Batch
from npbert.model import Model, load_model
from npbert.qmodel import _FP32Tap
from npbert.report import PLOT_HINT, activation_stats, outlier_table

from tests.conftest import GOLDEN

TINY = GOLDEN / "tiny-bert"
PAIRS = [("the cat sat on the mat", "a dog runs very fast"), ("good movie", "bad film is not good at all"),
         ("the man plays guitar", "a woman eats food"), ("night and day", "the quick brown fox jumps over the lazy dog"),
         ("a b c", "d e"), ("the stock market fell", "she said the results were good"),
         ("a man is playing a flute", "a man plays the flute"), ("x", "the end")]


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY)


@pytest.fixture
def tsv(tmp_path):
    p = tmp_path / "dev.tsv"
    p.write_text("index\tsentence1\tsentence2\tscore\n" + "".join(f"{i}\t{a}\t{b}\t{i % 5}.0\n" for i, (a, b) in enumerate(PAIRS)),
                 encoding="utf-8")
    return p


def _batch(model):
    a, b = zip(*PAIRS)
    return model.tokenizer.encode(list(a), list(b))  # padded to the longest pair


def test_stats_match_numpy_from_fp32_tap(tiny):
    b = _batch(tiny)
    assert (b.attention_mask == 0).any()  # the batch does hold padding
    st = activation_stats(tiny, [b], k_sigma=2.0)
    tap = _FP32Tap(tiny.params, tiny.config)
    Model.forward(tiny, b, tap)
    m = b.attention_mask.astype(bool)
    assert st["n_tokens"] == int(m.sum()) and st["n_sequences"] == len(b)
    hidden = [s for s, v in st["sites"].items() if v["kind"] == "hidden"]
    assert "encoder.layer.1.output.dense.out" in hidden and "encoder.layer.0.output.residual" in hidden
    assert st["sites"]["encoder.layer.0.output.dense.in"]["kind"] == "intermediate"
    assert st["sites"]["encoder.layer.0.attention.self.probs"]["kind"] == "attention"
    for name in hidden:
        x = tap.seen[name][m]  # [N, C] real tokens
        s = st["sites"][name]
        np.testing.assert_array_equal(s["per_dim_absmax"], np.abs(x).max(axis=0))
        assert (s["min"], s["max"], s["absmax"]) == (float(x.min()), float(x.max()), float(np.abs(x).max()))
        x64 = x.astype(np.float64)
        np.testing.assert_allclose([s["mean"], s["std"]], [x64.mean(), x64.std()], rtol=1e-9, atol=1e-12)
        want = np.count_nonzero(np.abs(x64 - s["mean"]) > 2.0 * s["std"], axis=0)
        np.testing.assert_array_equal(s["per_dim_outlier_count"], want)
        over = np.abs(x64 - s["mean"]) > 2.0 * s["std"]
        assert set(s["outlier_tokens"]) == set(np.flatnonzero(want).tolist())
        for j, top in s["outlier_tokens"].items():  # (token id, count), most frequent first
            ids, n = np.unique(b.input_ids[m][over[:, j]], return_counts=True)
            assert top[0][1] == n.max() and dict(top).items() <= dict(zip(ids.tolist(), n.tolist())).items()
        assert s["layer"] == (None if name.startswith("embeddings") else int(name.split(".")[2]))
    # attention maps: valid query and key only
    p = tap.seen["encoder.layer.0.attention.self.probs"]
    pv = p[np.broadcast_to(m[:, None, :, None] & m[:, None, None, :], p.shape)]
    s = st["sites"]["encoder.layer.0.attention.self.probs"]
    assert s["n_values"] == pv.size and s["max"] == float(pv.max()) and s["min"] == float(pv.min())
    # with k_sigma=2 something is an outlier, and the table is sorted by max |x|
    rows = outlier_table(st, top=5)
    assert 0 < len(rows) <= 5 and [r["absmax"] for r in rows] == sorted((r["absmax"] for r in rows), reverse=True)


def test_padding_never_counted(tiny):
    """One padded batch, the same rows one at a time (no padding), and extra padding: equal stats."""
    b = _batch(tiny)
    alone = []
    for i in range(len(b)):
        T = int(b.attention_mask[i].sum())
        alone.append(Batch(b.input_ids[i:i + 1, :T], b.attention_mask[i:i + 1, :T], b.token_type_ids[i:i + 1, :T],
                           b.truncated[i:i + 1]))
    extra = 5  # more pad columns; the pad positions carry a real token id, so counting them would show
    ids = np.concatenate([b.input_ids, np.full((len(b), extra), 7, b.input_ids.dtype)], axis=1)
    padded = Batch(ids, np.pad(b.attention_mask, ((0, 0), (0, extra))), np.pad(b.token_type_ids, ((0, 0), (0, extra))),
                   b.truncated)
    ref = activation_stats(tiny, alone)
    for other in (activation_stats(tiny, [b]), activation_stats(tiny, [padded])):
        assert other["n_tokens"] == ref["n_tokens"]
        assert other["sites"].keys() == ref["sites"].keys()
        for name, s in ref["sites"].items():
            o = other["sites"][name]
            assert o["n_values"] == s["n_values"], name
            # float32 sums over a longer (masked) key axis may round differently: tolerance, not equality
            for k in ("min", "max", "absmax", "mean", "std"):
                assert o[k] == pytest.approx(s[k], rel=1e-5, abs=1e-6), (name, k)
            if s["kind"] == "hidden":
                np.testing.assert_allclose(o["per_dim_absmax"], s["per_dim_absmax"], rtol=1e-5, atol=1e-6)


def test_cli_writes_report(tsv, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["report", "--model", str(TINY), "--data", str(tsv), "--recipe", "w8a8", "--out", str(out),
               "--size", "6", "--top", "4", "--progress", "never"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("model", "data", "n_sequences", "n_tokens", "outlier_rule", "outliers", "outlier_dims",
                "ffn_per_layer", "recipe", "sites", "plots"):
        assert key in rep, key
    assert rep["n_sequences"] == 6 and rep["data"]["rows_in_file"] == len(PAIRS) and rep["data"]["pairs"]
    assert len(rep["ffn_per_layer"]) == 2 and {"ffn_out", "ffn_res"} <= rep["ffn_per_layer"][0].keys()
    s = rep["sites"]["encoder.layer.1.output.residual"]
    assert len(s["per_dim_absmax"]) == 30 and {"min", "max", "absmax", "std", "outlier_tokens_per_dim"} <= s.keys()
    r = rep["recipe"]
    assert r["name"] == "w8a8" and "same 6 sampled texts" in r["calibration"]
    assert {"nmse", "sqnr_db"} <= r["site_errors"]["encoder.layer.0.output.dense.out"].keys()
    assert "encoder.layer.0.output.dense" in r["weight_clipping"]
    md = (out / "report.md").read_text()
    assert "## SQNR (dB) of `w8a8`" in md and "ffn.res" in md and "same 6 sampled texts" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert PLOT_HINT in md and rep["plots"] == []
    else:
        assert set(rep["plots"]) == {"ffn_per_dim_absmax.png", "ffn_per_dim_heatmap.png", "sqnr_per_site.png"}
        for p in rep["plots"]:
            assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_cli_without_matplotlib_skips_plots(tsv, tmp_path, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "rep"
    assert main(["report", "--model", str(TINY), "--data", str(tsv), "--out", str(out), "--progress", "never"]) == 0
    err = capsys.readouterr().err
    assert "pip install npbert[plot]" in err and err.count("pip install") == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["recipe"] is None and rep["plots"] == []


def _run(tmp_path, *args):
    return main(["report", "--model", str(TINY), "--out", str(tmp_path / "rep"), "--progress", "never", *args])


def test_bad_input(tsv, tmp_path, capsys):
    from npbert.report import _read_data

    with pytest.raises(DataError, match="data file not found"):
        _read_data(tmp_path / "nope.tsv", 10, 0)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="no texts to report on"):
        _read_data(empty, 10, 0)
    header_only = tmp_path / "header.tsv"
    header_only.write_text("index\tsentence1\tsentence2\tscore\n")
    with pytest.raises(DataError, match="no texts"):
        _read_data(header_only, 10, 0)
    capsys.readouterr()
    assert _run(tmp_path, "--data", str(tmp_path / "nope.tsv")) == 2
    assert "data file not found" in capsys.readouterr().err
    assert _run(tmp_path, "--data", str(tsv), "--recipe", "int4") == 2
    assert "unknown recipe 'int4'" in capsys.readouterr().err
    assert _run(tmp_path, "--data", str(tsv), "--size", "0") == 2
    assert "--size must be >= 1" in capsys.readouterr().err
    assert main(["report", "--model", str(tmp_path / "no-model"), "--data", str(tsv), "--out", str(tmp_path / "r")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()  # nothing written on failure


def test_activation_stats_bad_args(tiny):
    with pytest.raises(InputError, match="at least one batch"):
        activation_stats(tiny, [])
    with pytest.raises(InputError, match="k_sigma"):
        activation_stats(tiny, [_batch(tiny)], k_sigma=0)


def test_unknown_recipe_before_any_work(tsv, tmp_path, monkeypatch):
    import npbert.report as rp

    monkeypatch.setattr(rp, "activation_stats", lambda *a, **k: pytest.fail("ran statistics for a bad recipe"))
    from npbert.qmodel import get_recipe

    with pytest.raises(QuantError):
        get_recipe("nope")
    assert _run(tmp_path, "--data", str(tsv), "--recipe", "nope") == 2
