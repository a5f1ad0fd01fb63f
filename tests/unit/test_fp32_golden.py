"""FP32 forward against committed transformers outputs (tests/golden/make_golden.py), no torch needed."""

from __future__ import annotations

import numpy as np
import pytest

from npbert.io.tokenizer import Batch
from npbert.model import load_model

from tests.conftest import GOLDEN

# Tolerance: the tiny models have |activations| ~ 1 and reductions of at most 37 terms over 2 layers;
# float32 summation-order differences between NumPy and torch are ~ sqrt(K) * eps * |x| ~ 1e-6 per op,
# the A&S erf adds <= 1.5e-7. 2e-5 leaves ~10x headroom over the ~2e-6 measured.
GOLDEN_ATOL = 2e-5

MODELS = ["tiny-bert", "tiny-bert-f16-sharded", "tiny-roberta-bf16", "tiny-bert-token"]


@pytest.mark.parametrize("name", MODELS)
def test_matches_transformers(name):
    d = GOLDEN / name
    g = np.load(d / "golden.npz")
    model = load_model(d)
    b = Batch(g["input_ids"], g["attention_mask"], g["token_type_ids"], np.zeros(len(g["input_ids"]), bool))
    out = model.forward(b)
    m = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out.last_hidden_state[m], g["last_hidden_state"][m], atol=GOLDEN_ATOL, rtol=0)
    if name == "tiny-bert-token":
        np.testing.assert_allclose(out.logits[m], g["logits"][m], atol=GOLDEN_ATOL, rtol=0)
    else:
        np.testing.assert_allclose(out.logits, g["logits"], atol=GOLDEN_ATOL, rtol=0)


def test_heads_and_families():
    assert load_model(GOLDEN / "tiny-roberta-bf16").config.is_regression
    assert load_model(GOLDEN / "tiny-bert").config.n_labels == 3
    assert load_model(GOLDEN / "tiny-bert-token").config.head == "token"


def test_text_api_end_to_end():
    model = load_model(GOLDEN / "tiny-bert")
    logits = model.classify(["the cat sat", "a dog runs very fast on the mat"], ["on the mat", "no"])
    assert logits.shape == (2, 3) and np.isfinite(logits).all()
    emb = model.embed(["the cat sat", "a dog"])
    assert emb.shape == (2, 30)
    # Batched text API equals one-by-one (length-sorted batching must restore the order).
    one = np.concatenate([model.embed([t]) for t in ["the cat sat", "a dog"]])
    np.testing.assert_allclose(emb, one, atol=1e-6)
