"""render_table on hand-made results, and the `eval` / `table` subcommands through argparse."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from npbert.errors import DataError, InputError
from npbert.eval import commands
from npbert.eval.commands import read_results, register, write_json_atomic
from npbert.eval.table import main_metric, render_table


def res(task, model, results, split="dev"):
    return {"task": task, "model": model, "split": split, "n": 10, "results": results}


SST2 = res("sst2", "/m/minilm-l6-glue/SST-2", {"fp32": {"accuracy": 89.79357}, "dynamic": {"accuracy": 87.04128}})
MRPC = res("mrpc", "/m/minilm-l6-glue/MRPC", {"fp32": {"f1": 86.4775, "accuracy": 80.147}, "dynamic": {"f1": 85.6198, "accuracy": 78.68}})


def rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.strip().splitlines()]


def test_table_layout_and_drops():
    t = render_table([SST2, MRPC])
    r = rows(t)
    assert r[0] == ["task", "model", "metric", "FP32", "dynamic"]
    assert r[1] == ["---", "---", "---", "---:", "---:"]
    assert r[2] == ["sst2", "minilm-l6-glue/SST-2", "Acc.", "89.79", "87.04 (-2.75)"]
    assert r[3] == ["mrpc", "minilm-l6-glue/MRPC", "F1", "86.48", "85.62 (-0.86)"]
    # averages of the shown two-decimal values, the drop computed from the shown averages
    assert r[4][0] == "average (2 tasks)"
    assert r[4][3] == f"{round((89.79 + 86.48) / 2, 2):.2f}"
    mean_q = round((87.04 + 85.62) / 2, 2)
    assert r[4][4] == f"{mean_q:.2f} ({round(mean_q - round((89.79 + 86.48) / 2, 2), 2):+.2f})"
    assert t.endswith("\n")


def test_average_only_over_complete_rows_and_missing_cells():
    cola = res("cola", "/m/CoLA", {"fp32": {"mcc": 29.9, "accuracy": 73.0}, "w8a8": {"mcc": 31.0, "accuracy": 74.0}})
    t = render_table([SST2, MRPC, cola])
    r = rows(t)
    assert r[0][3:] == ["FP32", "dynamic", "w8a8"]
    assert r[2][3:] == ["89.79", "87.04 (-2.75)", "n/a"]
    assert r[4][3:] == ["29.90", "n/a", "31.00 (+1.10)"]
    assert len(r) == 5  # no row has every column: no average row


def test_single_result_no_average_and_zero_drop():
    r = rows(render_table([res("rte", "/m/RTE", {"fp32": {"accuracy": 55.9567}, "peg": {"accuracy": 55.9567}})]))
    assert len(r) == 3 and r[2][3:] == ["55.96", "55.96 (+0.00)"]
    r = rows(render_table(res("rte", "/m/RTE", {"fp32": {"accuracy": 55.96}, "peg": {"accuracy": 55.95999}})))
    assert r[2][4] == "55.96 (+0.00)"  # never "-0.00"


def test_recipes_without_fp32_and_none_values():
    r = rows(render_table([res("sick-sim", "/m/minilm", {"dynamic": {"spearman": None, "pearson": 1.0}}, split="trial")]))
    assert r[0][3:] == ["dynamic"] and r[2][:3] == ["sick-sim (trial)", "m/minilm", "Spearman"] and r[2][3] == "n/a"


def test_main_metric_and_bad_input():
    assert main_metric(MRPC) == "f1" and main_metric(SST2) == "accuracy"
    assert main_metric(res("custom", "m", {"fp32": {"bleu": 1.0}})) == "bleu"
    with pytest.raises(InputError, match="no results"):
        render_table([])
    with pytest.raises(InputError, match=r"result 1: missing key\(s\) \['results'\]"):
        render_table([SST2, {"task": "x", "model": "m"}])


# -------------------------------------------------------------------------------- commands


def parser():
    ap = argparse.ArgumentParser(prog="npbert")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    return ap


def test_register_eval_arguments():
    a = parser().parse_args(["eval", "--model", "M", "--task", "mrpc", "--data", "D"])
    assert a.func is commands.cmd_eval
    assert (a.split, a.recipes, a.calib_split, a.calib_size, a.seed, a.batch_size, a.json, a.progress) == (
        "dev", "fp32", "train", 512, 0, 32, None, "auto")
    a = parser().parse_args(["eval", "--model", "M", "--task", "sick-sim", "--data", "D", "--split", "trial",
                             "--recipes", "fp32,dynamic", "--calib-size", "64", "--json", "o.json"])
    assert (a.task, a.split, a.recipes, a.calib_size, a.json) == ("sick-sim", "trial", "fp32,dynamic", 64, "o.json")
    with pytest.raises(SystemExit):
        parser().parse_args(["eval", "--model", "M", "--task", "mnli", "--data", "D"])  # choices from TASKS


def test_eval_command_prints_table_and_writes_json(tmp_path, monkeypatch, capsys):
    fake = res("mrpc", "M", {"fp32": {"f1": np.float64(86.4775), "accuracy": 80.147}})
    fake["seconds"] = {"fp32": 1.5}
    seen = {}

    def fake_evaluate(model, task, data, **kw):
        seen.update(kw, model=model, task=task, data=data)
        return fake

    monkeypatch.setattr("npbert.eval.runner.evaluate", fake_evaluate)
    out = tmp_path / "sub" / "mrpc.json"
    a = parser().parse_args(["eval", "--model", "M", "--task", "mrpc", "--data", "D", "--recipes", "fp32,w8a8",
                             "--seed", "5", "--json", str(out), "--progress", "never"])
    assert a.func(a) == 0
    assert seen["recipes"] == "fp32,w8a8" and seen["seed"] == 5 and seen["progress"] == "never"
    cap = capsys.readouterr()
    assert "| mrpc | M | F1 | 86.48 |" in cap.out and "f1 86.48, accuracy 80.15" in cap.err
    assert json.loads(out.read_text())["results"]["fp32"]["f1"] == pytest.approx(86.4775)
    assert [p.name for p in out.parent.iterdir()] == ["mrpc.json"]  # no temp file left behind


def test_table_command(tmp_path, capsys):
    a_json, b_json = tmp_path / "a.json", tmp_path / "b.json"
    write_json_atomic(a_json, SST2)
    write_json_atomic(b_json, [MRPC])
    md = tmp_path / "t.md"
    a = parser().parse_args(["table", str(a_json), str(b_json), "--out", str(md)])
    assert a.func is commands.cmd_table and a.func(a) == 0
    out = capsys.readouterr().out
    assert out == md.read_text() == render_table([SST2, MRPC])


def test_json_is_strict_and_results_are_checked(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, res("stsb", "M", {"fp32": {"pearson": float("nan"), "spearman": np.float32(1.5)}}))
    assert json.loads(p.read_text())["results"]["fp32"] == {"pearson": None, "spearman": 1.5}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json:1: not valid JSON"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match=r"other\.json: not an evaluation result"):
        read_results(tmp_path / "other.json")
    with pytest.raises(DataError, match="not found"):
        read_results(tmp_path / "missing.json")


def test_cli_wires_eval_and_table():
    """npbert.cli (owned by the CLI engineer) registers these subcommands when it imports this module."""
    cli = pytest.importorskip("npbert.cli")
    ap = cli.build_parser()
    assert ap.parse_args(["table", "x.json"]).func is commands.cmd_table
    assert ap.parse_args(["eval", "--model", "M", "--task", "rte", "--data", "D"]).func is commands.cmd_eval
