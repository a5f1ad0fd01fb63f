"""Task readers: GLUE TSV layouts (SST-2, CoLA, MRPC, STS-B, RTE, QNLI) and SICK.

Files are read with `csv` using quoting=csv.QUOTE_NONE (sentences contain quote characters) and
encoding "utf-8-sig" (MRPC starts with a BOM). Every malformed row raises DataError naming the file
and its 1-based line. Layouts (see ../shared/data/README.md):

  SST-2   header `sentence label`
  CoLA    no header: source, label, original label, sentence
  MRPC    header `Quality #1 ID #2 ID #1 String #2 String`
  STS-B   header `index genre filename year old_index source1 source2 sentence1 sentence2 score`
  RTE     header `index sentence1 sentence2 label`   (entailment / not_entailment)
  QNLI    header `index question sentence label`     (entailment / not_entailment)
  SICK    header `pair_ID sentence_A sentence_B relatedness_score entailment_judgment`

Header files are read by column name (extra columns are allowed, every row must have as many
fields as the header). Entirely empty lines are skipped; anything else that does not parse is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np

from npbert.errors import DataError, InputError

__all__ = ["Examples", "Task", "TASKS", "get_task", "load_split", "resolve_data_dir", "split_path"]

# csv refuses fields over 128 KiB by default; a sentence is far below, a corrupt file may not be.
_FIELD_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class Examples:
    texts: list[str]  # first sentence of each row
    pairs: list[str] | None  # second sentence, or None for single-sentence tasks
    labels: np.ndarray  # [n] int64 class ids, or float64 scores
    source: str = ""  # the file they came from

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "Examples":
        idx = np.asarray(idx, np.int64)
        return Examples(
            [self.texts[i] for i in idx],
            None if self.pairs is None else [self.pairs[i] for i in idx],
            self.labels[idx],
            self.source,
        )


Reader = Callable[[Path], Examples]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # 'classification' | 'regression' | 'similarity'
    metrics: tuple[str, ...]  # the first is the task's main metric (the table's)
    reader: Reader  # file path -> Examples
    folder: str = ""  # the data folder's usual name: glue/<folder> or <folder>
    splits: tuple[tuple[str, str], ...] = ()  # (split, file name) of the labeled splits
    label_names: tuple[str, ...] | None = None  # string labels, index = class id (RTE, QNLI)
    n_classes: int | None = None

    @property
    def split_files(self) -> dict[str, str]:
        return dict(self.splits)


# --------------------------------------------------------------------------------- the TSV reader


def _rows(path: Path):
    """Yield (1-based line number, fields) for every non-empty line of a tab-separated file."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                for row in reader:
                    if not row:
                        continue
                    # QUOTE_NONE: one record per physical line, so line_num is the record's line.
                    yield reader.line_num, row
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num + 1}: not a readable TSV line ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); is this the right file?") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _table(path: Path, columns: tuple[str, ...] | None, n_fields: int | None = None):
    """Yield (line, {column: value}) for the needed columns.

    columns=None with n_fields: a headerless file of exactly n_fields columns, keyed by index.
    Otherwise the first line is a header that must contain `columns`.
    """
    it = _rows(path)
    if columns is None:
        for line, row in it:
            if len(row) != n_fields:
                raise DataError(f"{path}:{line}: expected {n_fields} tab-separated columns, found {len(row)}")
            yield line, row
        return
    try:
        line, header = next(it)
    except StopIteration:
        raise DataError(f"{path}: the file is empty; expected a header line with columns {list(columns)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(
            f"{path}:{line}: header {header} lacks column(s) {missing}; expected the layout with columns {list(columns)}"
        )
    pos = {c: header.index(c) for c in columns}
    for line, row in it:
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: expected {len(header)} tab-separated columns (as in the header), found {len(row)}"
            )
        yield line, {c: row[i] for c, i in pos.items()}


def _text(path: Path, line: int, value: str, column: str) -> str:
    if not value.strip():
        raise DataError(f"{path}:{line}: column {column!r} is empty; every example needs its text")
    return value


def _int_label(path: Path, line: int, value: str, allowed: tuple[int, ...] = (0, 1)) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise DataError(f"{path}:{line}: label {value!r} is not an integer (expected one of {list(allowed)})") from None
    if v not in allowed:
        raise DataError(f"{path}:{line}: label {v} is not one of {list(allowed)}")
    return v


def _name_label(path: Path, line: int, value: str, names: tuple[str, ...]) -> int:
    v = value.strip()
    if v not in names:
        raise DataError(f"{path}:{line}: label {value!r} is not one of {list(names)}")
    return names.index(v)


def _float_label(path: Path, line: int, value: str) -> float:
    try:
        v = float(value.strip())
    except ValueError:
        raise DataError(f"{path}:{line}: score {value!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{line}: score {value!r} is not finite")
    return v


def _done(path: Path, texts, pairs, labels, dtype) -> Examples:
    if not texts:
        raise DataError(f"{path}: no examples (only a header or empty lines)")
    return Examples(texts, pairs, np.asarray(labels, dtype), str(path))


# -------------------------------------------------------------------------------------- readers


def read_sst2(path: Path) -> Examples:
    texts, labels = [], []
    for line, r in _table(path, ("sentence", "label")):
        texts.append(_text(path, line, r["sentence"], "sentence"))
        labels.append(_int_label(path, line, r["label"]))
    return _done(path, texts, None, labels, np.int64)


def read_cola(path: Path) -> Examples:
    texts, labels = [], []
    for line, r in _table(path, None, n_fields=4):  # source, label, original label, sentence
        labels.append(_int_label(path, line, r[1]))
        texts.append(_text(path, line, r[3], "sentence"))
    return _done(path, texts, None, labels, np.int64)


def read_mrpc(path: Path) -> Examples:
    texts, pairs, labels = [], [], []
    for line, r in _table(path, ("Quality", "#1 String", "#2 String")):
        labels.append(_int_label(path, line, r["Quality"]))
        texts.append(_text(path, line, r["#1 String"], "#1 String"))
        pairs.append(_text(path, line, r["#2 String"], "#2 String"))
    return _done(path, texts, pairs, labels, np.int64)


def _pair_reader(a: str, b: str, label: str, names: tuple[str, ...] | None):
    def read(path: Path) -> Examples:
        texts, pairs, labels = [], [], []
        for line, r in _table(path, (a, b, label)):
            texts.append(_text(path, line, r[a], a))
            pairs.append(_text(path, line, r[b], b))
            if names is None:
                labels.append(_float_label(path, line, r[label]))
            else:
                labels.append(_name_label(path, line, r[label], names))
        return _done(path, texts, pairs, labels, np.float64 if names is None else np.int64)

    return read


ENTAILMENT = ("entailment", "not_entailment")  # class ids 0, 1 (RTE's config.json: 0 = entailment)

read_stsb = _pair_reader("sentence1", "sentence2", "score", None)
read_rte = _pair_reader("sentence1", "sentence2", "label", ENTAILMENT)
read_qnli = _pair_reader("question", "sentence", "label", ENTAILMENT)
read_sick = _pair_reader("sentence_A", "sentence_B", "relatedness_score", None)


# ------------------------------------------------------------------------------------- registry

_GLUE_SPLITS = (("train", "train.tsv"), ("dev", "dev.tsv"))
_SICK_SPLITS = (("train", "SICK_train.txt"), ("trial", "SICK_trial.txt"), ("test", "SICK_test_annotated.txt"))
_CORR = ("pearson", "spearman")
_SIM = ("spearman", "pearson")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sst2", "classification", ("accuracy",), read_sst2, "SST-2", _GLUE_SPLITS, n_classes=2),
        Task("cola", "classification", ("mcc", "accuracy"), read_cola, "CoLA", _GLUE_SPLITS, n_classes=2),
        Task("mrpc", "classification", ("f1", "accuracy"), read_mrpc, "MRPC", _GLUE_SPLITS, n_classes=2),
        Task("stsb", "regression", _CORR, read_stsb, "STS-B", _GLUE_SPLITS),
        Task("rte", "classification", ("accuracy",), read_rte, "RTE", _GLUE_SPLITS, ENTAILMENT, 2),
        Task("qnli", "classification", ("accuracy",), read_qnli, "QNLI", _GLUE_SPLITS, ENTAILMENT, 2),
        Task("stsb-sim", "similarity", _SIM, read_stsb, "STS-B", _GLUE_SPLITS),
        Task("sick-sim", "similarity", _SIM, read_sick, "sick", _SICK_SPLITS),
    )
}


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    t = TASKS.get(str(task).strip().lower())
    if t is None:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return t


def resolve_data_dir(task: str | Task, data_dir: str | Path) -> Path:
    """The folder holding the task's files: data_dir itself, or data_dir/<folder>, data_dir/glue/<folder>.

    So `--data ../shared/data/glue/MRPC`, `--data ../shared/data/glue` and `--data ../shared/data` all work.
    """
    t = get_task(task)
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data folder not found (expected the {t.folder} folder of task {t.name!r})")
    files = [name for _, name in t.splits]
    for cand in (d, d / t.folder, d / "glue" / t.folder):
        if cand.is_dir() and any((cand / f).is_file() for f in files):
            return cand
    raise DataError(
        f"{d}: holds none of {files} for task {t.name!r}, and neither does {d / t.folder} or "
        f"{d / 'glue' / t.folder}; pass the task's data folder"
    )


def available_splits(task: str | Task, data_dir: str | Path) -> list[str]:
    t = get_task(task)
    d = Path(data_dir)
    return [s for s, name in t.splits if (d / name).is_file()]


def split_path(task: str | Task, data_dir: str | Path, split: str) -> Path:
    """The file of one labeled split; DataError naming the path and the splits present otherwise."""
    t = get_task(task)
    d = resolve_data_dir(t, data_dir)
    files = t.split_files
    have = available_splits(t, d)
    if split not in files:
        raise DataError(
            f"task {t.name!r} has no labeled split {split!r}; its splits are {list(files)} "
            f"(present in {d}: {have or 'none'})"
        )
    path = d / files[split]
    if not path.is_file():
        raise DataError(f"{path}: split {split!r} of task {t.name!r} not found; available splits in {d}: {have or 'none'}")
    return path


def load_split(task: str | Task, data_dir: str | Path, split: str) -> Examples:
    """Read one labeled split of a task -> Examples(texts, pairs | None, labels)."""
    if not isinstance(split, str) or not split:
        raise InputError(f"split must be a non-empty string, got {split!r}")
    t = get_task(task)
    return t.reader(split_path(t, data_dir, split))
