"""Make the committed golden fixtures: tiny random checkpoints + transformers' outputs on a padded batch.

    python tests/golden/make_golden.py      # needs torch==2.13.0 and transformers (pip install -e .[peers])

The default test suite reads only the files this writes, so it needs no torch. Sizes are odd on
purpose (hidden 30 with 3 heads, FFN 37, vocab 97) so no kernel can lean on multiples of 8/16.
Each model stores weights differently to exercise the loader: single float32 file, sharded float16,
single bfloat16. Run it again only when the fixture format must change; commit the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors, normalizers

HERE = Path(__file__).resolve().parent
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "slow", "is", "not", "good", "bad", "and",
         "movie", "film", "very", "big", "small", "red", "blue", "green", "house", "tree", "man", "woman", "plays",
         "guitar", "eats", "food", "quick", "brown", "fox", "jumps", "over", "lazy", "time", "day", "night"]


def tiny_tokenizer(special: list[str], cls: str, sep: str, vocab_size: int) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(special + WORDS)}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token=special[1] if special[1] == "[UNK]" else "<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return tok


def batch(vocab_size: int, pad: int, lo: int, rng) -> dict[str, np.ndarray]:
    lengths = [11, 4, 17, 1 + 1]  # ragged, so padding is exercised
    T = max(lengths)
    ids = np.full((len(lengths), T), pad, np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(lo, vocab_size, n)
        mask[b, :n] = 1
        types[b, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def run(model, inputs, use_types: bool):
    kw = {k: torch.tensor(v) for k, v in inputs.items() if use_types or k != "token_type_ids"}
    with torch.no_grad():
        out = model(**kw, output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


def make(name: str, model, tok: Tokenizer, inputs, use_types: bool, **save_kw):
    d = HERE / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True, **save_kw)
    tok.save(str(d / "tokenizer.json"))
    hidden, logits = run(model, inputs, use_types)
    np.savez(d / "golden.npz", **inputs, last_hidden_state=hidden, logits=logits)
    print(name, sorted(p.name for p in d.iterdir()))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    common = dict(vocab_size=97, hidden_size=30, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
                  max_position_embeddings=40, hidden_act="gelu", layer_norm_eps=1e-12)

    cfg = transformers.BertConfig(**common, type_vocab_size=2, num_labels=3)
    bert = transformers.BertForSequenceClassification(cfg).eval()
    make("tiny-bert", bert, tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", 97),
         batch(97, 0, 5, rng), True)

    # Same architecture stored as float16 shards: the sharded-index path and the f16 widening.
    bert16 = transformers.BertForSequenceClassification(cfg).eval().half().float()
    tmp = HERE / "_tmp16"
    bert16.half().save_pretrained(tmp, safe_serialization=True, max_shard_size="20KB")
    bert16 = transformers.BertForSequenceClassification.from_pretrained(tmp, dtype=torch.float32).eval()
    inputs = batch(97, 0, 5, rng)
    d = HERE / "tiny-bert-f16-sharded"
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)
    tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", 97).save(str(d / "tokenizer.json"))
    hidden, logits = run(bert16, inputs, True)
    np.savez(d / "golden.npz", **inputs, last_hidden_state=hidden, logits=logits)
    print(d.name, sorted(p.name for p in d.iterdir()))

    rcfg = transformers.RobertaConfig(**{**common, "max_position_embeddings": 42}, type_vocab_size=1, pad_token_id=1,
                                      bos_token_id=0, eos_token_id=2, num_labels=1, problem_type="regression")
    rob = transformers.RobertaForSequenceClassification(rcfg).eval()
    inputs = batch(97, 1, 4, rng)
    inputs["token_type_ids"][:] = 0
    make("tiny-roberta-bf16", rob.to(torch.bfloat16).to(torch.float32), tiny_tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<mask>"][::1], "<s>", "</s>", 97),
         inputs, True)
    # bf16 storage: rewrite the checkpoint in bfloat16 (values were rounded to bf16 above, so the
    # golden outputs computed from them stay exact).
    d = HERE / "tiny-roberta-bf16"
    from safetensors.torch import load_file, save_file
    sd = load_file(d / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, d / "model.safetensors",
              metadata={"format": "pt"})

    tcfg = transformers.BertConfig(**common, type_vocab_size=2, num_labels=5)
    tokc = transformers.BertForTokenClassification(tcfg).eval()
    make("tiny-bert-token", tokc, tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", 97),
         batch(97, 0, 5, rng), True)
    (HERE / "VERSIONS.json").write_text(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}, indent=1))


if __name__ == "__main__":
    main()
