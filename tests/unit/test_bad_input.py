"""Bad input gets a clear NpbertError naming the file or tensor; nothing crashes."""

from __future__ import annotations

import json
import shutil
import struct
import warnings

import numpy as np
import pytest

from npbert.errors import (ConfigError, InputError, NpbertError, NpbertWarning, TokenizerError,
                           UnsupportedModelError, WeightsError)
from npbert.io.weights import load_safetensors
from npbert.model import load_model

from tests.conftest import GOLDEN

TINY = GOLDEN / "tiny-bert"


@pytest.fixture
def tiny(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    return d


def _read(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_missing_dir(tmp_path):
    with pytest.raises(WeightsError, match="no such model directory"):
        load_model(tmp_path / "nope")


def test_missing_config(tiny):
    (tiny / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json: not found"):
        load_model(tiny)


def test_malformed_config(tiny):
    (tiny / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tiny)


def test_config_missing_keys(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    del cfg["hidden_size"]
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden_size"):
        load_model(tiny)


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"architectures": ["BertForQuestionAnswering"]}, "architecture 'BertForQuestionAnswering' is not supported"),
        ({"model_type": "deberta-v2"}, "model_type 'deberta-v2' is not supported"),
        ({"position_embedding_type": "relative_key"}, "relative_key"),
    ],
)
def test_unsupported_architecture(tiny, patch, match):
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(patch)
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(tiny)


def test_missing_weights(tiny):
    (tiny / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="neither model.safetensors nor"):
        load_model(tiny)


def test_truncated_file(tiny):
    f = tiny / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(WeightsError, match="run past the end.*truncated"):
        load_model(tiny)
    f.write_bytes(raw[:5])
    with pytest.raises(WeightsError, match="too short"):
        load_model(tiny)
    f.write_bytes(raw[:200])
    with pytest.raises(WeightsError, match="exceeds the file"):
        load_model(tiny)


def test_header_not_json(tiny):
    f = tiny / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16)
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_safetensors(f)


def test_header_lies_about_shape(tiny):
    f = tiny / "model.safetensors"
    header, data = _read(f)
    header["classifier.weight"]["shape"] = [4, 30]
    _write(f, header, data)
    with pytest.raises(WeightsError, match=r"'classifier.weight'.*shape \[4, 30\]"):
        load_model(tiny)


def test_header_overlapping_offsets(tiny):
    f = tiny / "model.safetensors"
    header, data = _read(f)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = header[names[0]], header[names[1]]
    size = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]
    _write(f, header, data)
    with pytest.raises(WeightsError, match="overlap"):
        load_model(tiny)


def test_missing_tensor(tiny):
    from safetensors.numpy import load_file, save_file

    sd = load_file(tiny / "model.safetensors")
    del sd["bert.encoder.layer.1.output.dense.weight"]
    save_file(sd, tiny / "model.safetensors")
    with pytest.raises(WeightsError, match="missing.*encoder.layer.1.output.dense.weight"):
        load_model(tiny)


def test_extra_tensor(tiny):
    from safetensors.numpy import load_file, save_file

    sd = load_file(tiny / "model.safetensors")
    sd["bert.encoder.layer.2.output.dense.weight"] = np.zeros((30, 37), np.float32)
    save_file(sd, tiny / "model.safetensors")
    with pytest.raises(WeightsError, match="unexpected.*encoder.layer.2"):
        load_model(tiny)


def test_shape_mismatch_against_config(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="intermediate.dense.weight' has shape \\(37, 30\\), config.json implies \\(40, 30\\)"):
        load_model(tiny)


def test_missing_shard(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(GOLDEN / "tiny-bert-f16-sharded", d)
    shard = sorted(d.glob("model-0000*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(WeightsError, match=f"{shard.name}: shard listed"):
        load_model(d)


def test_missing_tokenizer(tiny):
    (tiny / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json: not found"):
        load_model(tiny)
    m = load_model(tiny, with_tokenizer=False)
    with pytest.raises(InputError, match="no tokenizer.json"):
        m.embed(["x"])


@pytest.mark.parametrize("texts", [[""], ["  "], ["ok", ""]])
def test_empty_text(texts):
    m = load_model(TINY)
    with pytest.raises(InputError, match="empty"):
        m.embed(texts)


def test_no_texts_and_bare_string():
    m = load_model(TINY)
    with pytest.raises(InputError, match="no texts"):
        m.embed([])
    with pytest.raises(InputError, match="not one string"):
        m.tokenizer.encode("the cat")


def test_long_text_is_truncated_with_warning():
    m = load_model(TINY)  # max_position_embeddings 40
    long = " ".join(["cat"] * 200)
    with pytest.warns(NpbertWarning, match="truncated"):
        emb = m.embed([long, "the dog"])
    assert np.isfinite(emb).all()
    b = m.tokenizer.encode([long], warn=False)
    assert b.input_ids.shape[1] == m.config.max_tokens and b.truncated[0]


def test_no_warning_when_short():
    m = load_model(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NpbertWarning)
        m.embed(["the cat sat"])


def test_bad_token_ids():
    from npbert.io.tokenizer import Batch

    m = load_model(TINY)
    ids = np.array([[2, 500, 3]])
    with pytest.raises(InputError, match="token ids must lie in"):
        m.forward(Batch(ids, np.ones_like(ids), np.zeros_like(ids), np.zeros(1, bool)))


@pytest.mark.parametrize("recipe", [None, "dynamic"])
def test_mask_or_types_of_another_shape(recipe):
    """An attention mask or token types not shaped like the ids, or an empty batch, is refused before any
    kernel reads it (the quantizers read one mask entry per row)."""
    from npbert.io.tokenizer import Batch
    from npbert.qmodel import quantize_model

    m = load_model(TINY)
    m = m if recipe is None else quantize_model(m, recipe)
    ids = np.array([[2, 5, 3], [2, 6, 3]])
    for mask, types in ((np.ones((1, 3)), np.zeros_like(ids)), (np.ones((2, 2)), np.zeros_like(ids)),
                        (np.ones_like(ids), np.zeros((2, 1), np.int64))):
        with pytest.raises(InputError, match="must have the shape of the token ids"):
            m.forward(Batch(ids, mask, types, np.zeros(2, bool)))
    for empty in (ids[:0], ids[:, :0]):  # no sequence, no token: a clear error, not NumPy's reduction failure
        with pytest.raises(InputError, match="an empty batch of token ids"):
            m.forward(Batch(empty, np.ones_like(empty), np.zeros_like(empty), np.zeros(len(empty), bool)))


def test_classify_needs_head():
    m = load_model(GOLDEN / "tiny-bert-token")
    with pytest.raises(UnsupportedModelError, match="no sequence-classification head"):
        m.classify(["the cat"])


def test_every_error_is_one_family():
    for cls in (ConfigError, WeightsError, UnsupportedModelError, TokenizerError, InputError):
        assert issubclass(cls, NpbertError)


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    from npbert.cli import main

    assert main(["embed", "--model", str(tmp_path / "missing"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npbert: error:") and "no such model directory" in err
    assert main(["classify", "--model", str(TINY), "--json", "the cat", "the dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"label", "logits"} and len(out["logits"]) == 3
    npy = tmp_path / "e.npy"
    assert main(["embed", "--model", str(TINY), "-o", str(npy), "the cat", "a dog"]) == 0
    assert np.load(npy).shape == (2, 30)
    # a recipe with options runs; a bad option is a usage error naming the valid ones
    assert main(["embed", "--model", str(TINY), "--recipe", "dynamic:wbits=7:weights=channel", "-o", str(npy), "the cat"]) == 0
    assert np.load(npy).shape == (1, 30)
    with pytest.raises(SystemExit) as e:
        main(["embed", "--model", str(TINY), "--recipe", "dynamic:wbits=5", "the cat"])
    assert e.value.code == 2 and "bad option 'wbits=5'" in capsys.readouterr().err
