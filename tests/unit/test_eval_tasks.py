"""Task readers: the real files in ../shared/data (row counts from its README) and malformed TSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from npbert.errors import DataError, InputError
from npbert.eval.tasks import TASKS, load_split, resolve_data_dir

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present (the evaluation data lives in ../shared)")


# ------------------------------------------------------------------------------- real files

# (task, folder, split, rows, has pairs, label kind) from ../shared/data/README.md's table.
REAL = [
    ("sst2", "glue/SST-2", "dev", 872, False, "int"),
    ("cola", "glue/CoLA", "dev", 1043, False, "int"),
    ("mrpc", "glue/MRPC", "dev", 408, True, "int"),
    ("stsb", "glue/STS-B", "dev", 1500, True, "float"),
    ("rte", "glue/RTE", "dev", 277, True, "int"),
    ("qnli", "glue/QNLI", "dev", 5463, True, "int"),
    ("stsb-sim", "glue/STS-B", "dev", 1500, True, "float"),
    ("sick-sim", "sick", "trial", 500, True, "float"),
    ("sick-sim", "sick", "train", 4500, True, "float"),
    ("mrpc", "glue/MRPC", "train", 3668, True, "int"),
    ("rte", "glue/RTE", "train", 2490, True, "int"),
    ("cola", "glue/CoLA", "train", 8551, False, "int"),
]


@needs_data
@pytest.mark.parametrize("task,folder,split,rows,paired,kind", REAL)
def test_real_files(task, folder, split, rows, paired, kind):
    ex = load_split(task, DATA / folder, split)
    assert len(ex) == len(ex.texts) == len(ex.labels) == rows
    assert (ex.pairs is not None) == paired
    if paired:
        assert len(ex.pairs) == rows and all(p.strip() for p in ex.pairs)
    assert all(t.strip() for t in ex.texts)
    if kind == "int":
        assert ex.labels.dtype == np.int64 and set(np.unique(ex.labels)) == {0, 1}
    else:
        assert ex.labels.dtype == np.float64 and np.isfinite(ex.labels).all()
        lo, hi = (1.0, 5.0) if task == "sick-sim" else (0.0, 5.0)
        assert ex.labels.min() >= lo and ex.labels.max() <= hi


@needs_data
def test_real_file_contents():
    mrpc = load_split("mrpc", DATA / "glue" / "MRPC", "dev")  # BOM header, quotes kept verbatim
    assert mrpc.labels[:3].tolist() == [1, 0, 0]
    assert mrpc.pairs[0].startswith('"The foodservice pie business')
    rte = load_split("rte", DATA / "glue" / "RTE", "dev")  # not_entailment -> 1
    assert rte.texts[0].startswith("Dana Reeve") and rte.labels[0] == 1
    qnli = load_split("qnli", DATA / "glue" / "QNLI", "dev")  # question first, then the sentence
    assert qnli.texts[0].startswith("What came into force") and qnli.labels[0] == 0
    stsb = load_split("stsb", DATA / "glue" / "STS-B", "dev")
    assert stsb.labels[:2].tolist() == [5.0, 4.75]
    cola = load_split("cola", DATA / "glue" / "CoLA", "dev")
    assert cola.texts[0] == "The sailors rode the breeze clear of the rocks." and cola.labels[0] == 1


@needs_data
def test_data_dir_may_be_a_parent():
    for d in (DATA, DATA / "glue", DATA / "glue" / "MRPC"):
        assert resolve_data_dir("mrpc", d) == DATA / "glue" / "MRPC"
    assert resolve_data_dir("sick-sim", DATA) == DATA / "sick"


@needs_data
def test_missing_split_names_path_and_available_splits():
    with pytest.raises(DataError) as e:  # SICK test file is not in ../shared
        load_split("sick-sim", DATA / "sick", "test")
    msg = str(e.value)
    assert "SICK_test_annotated.txt" in msg and "'train'" in msg and "'trial'" in msg
    with pytest.raises(DataError, match=r"QNLI/train\.tsv.*available splits.*\['dev'\]"):
        load_split("qnli", DATA / "glue" / "QNLI", "train")
    with pytest.raises(DataError, match="no labeled split 'test'"):  # CoLA's test.tsv is unlabeled
        load_split("cola", DATA / "glue" / "CoLA", "test")


# ----------------------------------------------------------------------------- made files


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text, encoding="utf-8")
    return p


def test_registry():
    assert set(TASKS) == {"sst2", "cola", "mrpc", "stsb", "rte", "qnli", "stsb-sim", "sick-sim"}
    for t in TASKS.values():
        assert t.kind in ("classification", "regression", "similarity")
        assert t.metrics and callable(t.reader)
    assert TASKS["mrpc"].metrics[0] == "f1" and TASKS["cola"].metrics[0] == "mcc"
    assert TASKS["stsb"].metrics[0] == "pearson" and TASKS["sick-sim"].metrics[0] == "spearman"


def test_unknown_task_lists_valid_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown task 'mnli'.*sst2.*sick-sim"):
        load_split("mnli", tmp_path, "dev")


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_split("sst2", tmp_path / "nope", "dev")
    with pytest.raises(DataError, match="holds none of"):
        load_split("sst2", tmp_path, "dev")  # exists, but no task files anywhere


def test_bad_split_argument(tmp_path):
    with pytest.raises(InputError):
        load_split("sst2", tmp_path, "")


def test_wrong_column_count_names_file_and_line(tmp_path):
    p = _write(tmp_path, "dev.tsv", "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(DataError) as e:
        load_split("sst2", tmp_path, "dev")
    assert f"{p}:3:" in str(e.value) and "found 3" in str(e.value)


def test_headerless_cola_column_count(tmp_path):
    p = _write(tmp_path, "dev.tsv", "gj04\t1\t\tFine sentence.\ngj04\t0\tBroken line\n")
    with pytest.raises(DataError, match=rf"{p}:2: expected 4 tab-separated columns, found 3"):
        load_split("cola", tmp_path, "dev")


def test_unparsable_labels(tmp_path):
    _write(tmp_path / "a", "dev.tsv", "sentence\tlabel\nok\t1\nfine\tpositive\n")
    with pytest.raises(DataError, match=r"a/dev\.tsv:3: label 'positive' is not an integer"):
        load_split("sst2", tmp_path / "a", "dev")
    _write(tmp_path / "b", "dev.tsv", "sentence\tlabel\nok\t2\n")
    with pytest.raises(DataError, match=r"b/dev\.tsv:2: label 2 is not one of \[0, 1\]"):
        load_split("sst2", tmp_path / "b", "dev")
    _write(tmp_path / "c", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tcontradiction\n")
    with pytest.raises(DataError, match=r"c/dev\.tsv:2: label 'contradiction' is not one of"):
        load_split("rte", tmp_path / "c", "dev")
    _write(tmp_path / "d", "SICK_trial.txt",
           "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\tA.\tB.\tn/a\tNEUTRAL\n")
    with pytest.raises(DataError, match=r"SICK_trial\.txt:2: score 'n/a' is not a number"):
        load_split("sick-sim", tmp_path / "d", "trial")
    _write(tmp_path / "e", "SICK_trial.txt",
           "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\tA.\tB.\tnan\tNEUTRAL\n")
    with pytest.raises(DataError, match="not finite"):
        load_split("sick-sim", tmp_path / "e", "trial")


def test_wrong_header_and_empty_text(tmp_path):
    _write(tmp_path / "a", "dev.tsv", "text\tlabel\nok\t1\n")
    with pytest.raises(DataError, match=r"dev\.tsv:1: header .* lacks column\(s\) \['sentence'\]"):
        load_split("sst2", tmp_path / "a", "dev")
    _write(tmp_path / "b", "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhy?\t \tentailment\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: column 'sentence' is empty"):
        load_split("qnli", tmp_path / "b", "dev")
    _write(tmp_path / "c", "dev.tsv", "")
    with pytest.raises(DataError, match="empty"):
        load_split("sst2", tmp_path / "c", "dev")
    _write(tmp_path / "d", "dev.tsv", "sentence\tlabel\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_split("sst2", tmp_path / "d", "dev")


def test_bom_quotes_and_blank_lines(tmp_path):
    # A BOM before the header, a stray double quote in a sentence, a blank line, CRLF endings.
    text = '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\t"Quoted start.\tEnd "quote\r\n\r\n0\t3\t4\tA\tB\r\n'
    _write(tmp_path, "dev.tsv", text)
    ex = load_split("mrpc", tmp_path, "dev")
    assert ex.texts == ['"Quoted start.', "A"] and ex.pairs == ['End "quote', "B"]
    assert ex.labels.tolist() == [1, 0]


def test_line_numbers_count_blank_lines(tmp_path):
    p = _write(tmp_path, "dev.tsv", "sentence\tlabel\n\nok\t1\n\nbad\n")
    with pytest.raises(DataError, match=rf"{p}:5:"):
        load_split("sst2", tmp_path, "dev")


def test_not_utf8(tmp_path):
    tmp_path.joinpath("dev.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe bad\t1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_split("sst2", tmp_path, "dev")


def test_subset_keeps_rows_together(tmp_path):
    _write(tmp_path, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA0\tB0\tentailment\n1\tA1\tB1\tnot_entailment\n2\tA2\tB2\tentailment\n")
    ex = load_split("rte", tmp_path, "dev")
    sub = ex.subset([2, 1])
    assert sub.texts == ["A2", "A1"] and sub.pairs == ["B2", "B1"] and sub.labels.tolist() == [0, 1]
