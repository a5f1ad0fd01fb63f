"""MPNet in the FP32 path: parity with HF transformers' MPNetModel.

What differs from BERT, and what HF's modeling_mpnet.py (transformers 5.x) does, which npbert mirrors:
  - names: `attention.attn.{q,k,v,o}` and `attention.LayerNorm` (canonicalized onto BERT's names);
    MPNetForMaskedLM prefixes `mpnet.` and carries `lm_head.*` (ignored); no token-type embeddings;
  - positions: HF hard-codes padding_idx 1, so real tokens count from 2 and pads sit at 1;
  - attention: scores / sqrt(d) + relative position bias + key-padding mask, then softmax; the bias
    is one [h, T, T] table from `arange(T)` (not from position ids: right padding does not shift it),
    shared by all layers, bucketed T5-style into 32 buckets, a number HF hard-codes whatever
    relative_attention_num_buckets says (a 64-row table uses rows 0..31);
  - post-LN layers with erf GELU and LayerNorm eps from config.json (1e-5 for all-mpnet-base-v2).

Tests without real weights build a tiny random MPNetForMaskedLM with transformers (peers). The real
all-mpnet-base-v2 test (438 MB) is marked `mpnet` and skips unless `python weights/fetch.py mpnet` ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from npbert.config import BertConfig
from npbert.errors import NpbertWarning, UnsupportedModelError
from npbert.io.tokenizer import Batch, Tokenizer
from npbert.model import load_model, position_ids, relative_position_bucket

MPNET_DIR = Path(__file__).resolve().parents[2] / "weights" / "all-mpnet-base-v2"
FETCH = "python weights/fetch.py mpnet"

# all-mpnet-base-v2 last hidden state, unmasked positions. 1e-4 is issue 6's target. The expected
# error is float32 reduction noise: NumPy's and torch's BLAS sum the K <= 3072 terms of each dot
# product in different orders, ~sqrt(K) * eps32 * |x| ~ 3e-6 relative per op, over 12 post-LN layers
# (LayerNorm re-normalizes, so it does not compound much). Measured: 7.2e-7 (batch padded to 384)
# and 6.6e-7 (a 512-token row), with |hidden| <= 0.72; the target leaves > 100x headroom.
HIDDEN_ATOL = 1e-4
# Sentence embeddings (mean pooling + L2 normalize) vs the same pooling on HF's hidden state.
# Measured: 1 - cos <= 6e-8 (float32 rounding of the cosine itself); budget 1e-5.
EMBED_MIN_COS = 0.99999
# Tiny random model (C=24, K <= 40, 2 layers, |hidden| ~ 3): sqrt(40) * eps32 * 3 ~ 1e-6 per op.
# Measured 8.3e-7; 1e-5 leaves ~10x headroom while still catching any wrong bias/position entry
# (those move outputs by ~1e-1).
TINY_ATOL = 1e-5


def _peers():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[peers]')")
    transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install -e '.[peers]')")
    return torch, transformers


def _hf_hidden(torch, hf_model, batch: Batch) -> np.ndarray:
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask))
    return out.last_hidden_state.numpy()


def _masked_max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    m = mask.astype(bool)
    return float(np.abs(a[m] - b[m]).max())


# ------------------------------------------------------------------------ no torch, no weights


def _mpnet_cfg(**kw) -> dict:
    d = dict(model_type="mpnet", architectures=["MPNetModel"], vocab_size=50, hidden_size=24, num_hidden_layers=2,
             num_attention_heads=3, intermediate_size=40, max_position_embeddings=40, pad_token_id=1,
             relative_attention_num_buckets=32)
    d.update(kw)
    return d


def test_positions_count_from_two_and_pads_sit_at_one():
    cfg = BertConfig.from_dict(_mpnet_cfg())
    ids = np.array([[0, 7, 9, 2, 1, 1], [0, 2, 1, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids(cfg, ids), [[2, 3, 4, 5, 1, 1], [2, 3, 1, 1, 1, 1]])
    assert cfg.max_tokens == 38  # 40 rows minus pad and the unused row 0


@pytest.mark.parametrize("kw", [dict(pad_token_id=0), dict(relative_attention_num_buckets=16)])
def test_configs_hf_mpnet_would_run_differently_are_refused(kw):
    with pytest.raises(UnsupportedModelError):
        BertConfig.from_dict(_mpnet_cfg(**kw))


# ------------------------------------------------------------------------ peers, tiny random model


@pytest.mark.peers
@pytest.mark.parametrize("num_buckets", [32, 16, 64])
def test_relative_position_bucket_matches_hf(num_buckets):
    torch, _ = _peers()
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    rel = np.arange(-300, 301)
    ref = MPNetEncoder.relative_position_bucket(torch.from_numpy(rel), num_buckets=num_buckets, max_distance=128)
    np.testing.assert_array_equal(relative_position_bucket(rel, num_buckets, 128), ref.numpy())  # integers: exact


@pytest.fixture(scope="module", params=[32, 64], ids=lambda n: f"buckets{n}")
def tiny_mpnet(request, tmp_path_factory):
    """A random 2-layer MPNetForMaskedLM saved as safetensors (keys `mpnet.*` plus `lm_head.*`)."""
    torch, transformers = _peers()
    torch.manual_seed(0)
    cfg = transformers.MPNetConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                   intermediate_size=40, max_position_embeddings=40,
                                   relative_attention_num_buckets=request.param)
    hf = transformers.MPNetForMaskedLM(cfg).eval()
    with torch.no_grad():  # the default init (std 0.02, unit LayerNorms) would hide a wrong bias entry
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    d = tmp_path_factory.mktemp(f"tiny-mpnet-{request.param}")
    hf.save_pretrained(d, safe_serialization=True)
    return d, hf.mpnet


@pytest.mark.peers
def test_tiny_mpnet_matches_hf_on_padded_batch(tiny_mpnet):
    torch, _ = _peers()
    d, hf = tiny_mpnet
    m = load_model(d, with_tokenizer=False)
    rng = np.random.default_rng(0)
    lens = [38, 21, 5, 1]  # the full position table, a mid row, short rows: pads sit at id 1
    ids = np.full((len(lens), max(lens)), 1, np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n] = rng.choice(np.r_[0, 2:50], n)  # anything but the pad id
        mask[i, :n] = 1
    b = Batch(ids, mask, np.zeros_like(ids), np.zeros(len(lens), bool))
    diff = _masked_max_diff(m.forward(b).last_hidden_state, _hf_hidden(torch, hf, b), mask)
    assert diff <= TINY_ATOL, diff


# ------------------------------------------------------------------------ peers, all-mpnet-base-v2


@pytest.fixture(scope="module")
def mpnet_pair():
    if not (MPNET_DIR / "model.safetensors").is_file():
        pytest.skip(f"all-mpnet-base-v2 not fetched (438 MB): run `{FETCH}`")
    torch, transformers = _peers()
    hf = transformers.MPNetModel.from_pretrained(MPNET_DIR).eval()
    return torch, load_model(MPNET_DIR), hf


def _text(rng, n_words: int) -> str:
    words = "the quick brown fox jumps over a lazy dog while seventeen photographers argue about tokenizers".split()
    return " ".join(rng.choice(words, n_words))


@pytest.mark.mpnet
@pytest.mark.peers
@pytest.mark.realmodel
def test_all_mpnet_hidden_state_and_embeddings(mpnet_pair):
    torch, m, hf = mpnet_pair
    assert m.tokenizer.max_length == 384  # sentence_bert_config.json wins over tokenizer.json's fixed 128
    assert m.pooling.mode == "mean" and m.pooling.normalize
    rng = np.random.default_rng(0)
    texts = ["Hi!", _text(rng, 30), _text(rng, 500)]  # the last one is truncated to 384 tokens
    b = m.tokenizer.encode(texts, warn=False)
    assert b.attention_mask.sum(axis=1).tolist()[-1] == 384
    ref = _hf_hidden(torch, hf, b)
    diff = _masked_max_diff(m.forward(b).last_hidden_state, ref, b.attention_mask)
    assert diff <= HIDDEN_ATOL, diff

    # sentence-transformers' pipeline on HF's output: masked mean, then L2 normalize.
    w = b.attention_mask[..., None].astype(np.float32)
    st = (ref * w).sum(axis=1) / w.sum(axis=1)
    st /= np.linalg.norm(st, axis=1, keepdims=True)
    with pytest.warns(NpbertWarning, match="truncated"):
        ours = m.embed(texts)
    cos = (ours * st).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(st, axis=1))
    assert cos.min() > EMBED_MIN_COS, cos


@pytest.mark.mpnet
@pytest.mark.peers
@pytest.mark.realmodel
def test_all_mpnet_full_512_positions(mpnet_pair):
    torch, m, hf = mpnet_pair
    # A fresh `tokenizers` object (Tokenizer sets truncation on the one it wraps): 512, the whole table.
    tok = Tokenizer(HFTokenizer.from_file(str(MPNET_DIR / "tokenizer.json")), m.config.max_tokens, m.tokenizer.pad_id)
    b = tok.encode([_text(np.random.default_rng(1), 700), "Short one."], warn=False)
    assert b.input_ids.shape[1] == 512
    diff = _masked_max_diff(m.forward(b).last_hidden_state, _hf_hidden(torch, hf, b), b.attention_mask)
    assert diff <= HIDDEN_ATOL, diff
