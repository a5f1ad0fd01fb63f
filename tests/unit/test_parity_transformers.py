"""Parity with HuggingFace transformers (torch CPU) on real checkpoints. Skipped without torch."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from npbert.model import load_model

from tests.conftest import TASKS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.peers, pytest.mark.realmodel]

# Target max |diff| <= 1e-4 on the last hidden state (issue 2). Measured: 1.9e-6 (all-MiniLM-L6-v2)
# and <= 4e-6 on the task checkpoints; float32 reductions of K <= 1536 terms over 6 layers differ by
# ~sqrt(K) * eps * |x| per op between NumPy's and torch's BLAS. 1e-4 is the stated target.
HIDDEN_ATOL = 1e-4

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "npbert runs BERT in NumPy.",
    "A very long sentence " + "that keeps going and going " * 12 + "until it ends.",
    "ok",
]


def _torch_hidden(model_dir, batch, seq_cls):
    cls = transformers.AutoModelForSequenceClassification if seq_cls else transformers.AutoModel
    tm = cls.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = tm(
            input_ids=torch.tensor(batch.input_ids),
            attention_mask=torch.tensor(batch.attention_mask),
            token_type_ids=torch.tensor(batch.token_type_ids),
            output_hidden_states=True,
        )
    return tm, out


def test_minilm_hidden_state(minilm_dir):
    m = load_model(minilm_dir)
    b = m.tokenizer.encode(SENTENCES)
    _, out = _torch_hidden(minilm_dir, b, False)
    mask = b.attention_mask.astype(bool)
    diff = np.abs(m.forward(b).last_hidden_state[mask] - out.last_hidden_state.numpy()[mask]).max()
    assert diff <= HIDDEN_ATOL, diff


@pytest.mark.parametrize("task", TASKS)
def test_task_checkpoint_hidden_and_logits(task_models_dir, task):
    d = task_models_dir / task
    m = load_model(d)
    b = m.tokenizer.encode(SENTENCES, SENTENCES[::-1])
    _, out = _torch_hidden(d, b, True)
    o = m.forward(b)
    mask = b.attention_mask.astype(bool)
    assert np.abs(o.last_hidden_state[mask] - out.hidden_states[-1].numpy()[mask]).max() <= HIDDEN_ATOL
    np.testing.assert_allclose(o.logits, out.logits.numpy(), atol=HIDDEN_ATOL, rtol=0)


def _dev_rows(shared, task):
    path = shared / "data" / "glue" / task / "dev.tsv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    if task == "SST-2":
        return [r[0] for r in rows], None
    return [r[3] for r in rows], [r[4] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["SST-2", "MRPC"])
def test_argmax_on_every_dev_example(task_models_dir, shared_dir, task):
    d = task_models_dir / task
    texts, pairs = _dev_rows(shared_dir, task)
    m = load_model(d)
    ours = m.classify(texts, pairs, batch_size=64)
    tm = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    theirs = []
    with torch.no_grad():
        for s in range(0, len(texts), 64):
            enc = tok(texts[s : s + 64], pairs[s : s + 64] if pairs else None, truncation=True, max_length=128,
                      padding=True, return_tensors="pt")
            theirs.append(tm(**enc).logits.numpy())
    theirs = np.concatenate(theirs)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(ours - theirs).max() <= HIDDEN_ATOL
