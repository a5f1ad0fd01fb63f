"""safetensors reading, single file or sharded index, with every header claim checked.

We parse the header ourselves rather than going through `safetensors.numpy`: NumPy has no bfloat16,
and a header that lies (shapes vs byte ranges, offsets past the end, overlaps) must become a clear
WeightsError naming the file and tensor, not a crash deep inside a reshape. Tensor bytes are
memory-mapped (read-only, zero-copy for float32); float16 and bfloat16 are widened to float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from npbert.errors import WeightsError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # reinterpreted below: bfloat16 is the top half of a float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


def read_header(path: Path) -> tuple[dict, int, int]:
    """-> (tensor entries, data start offset, data length). Validates everything the header claims."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: not found; the checkpoint is incomplete (re-download or re-convert it)")
    size = path.stat().st_size
    if size < 8:
        raise WeightsError(f"{path}: {size} bytes is too short for a safetensors file (truncated download?)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise WeightsError(
                f"{path}: header length {n} exceeds the file ({size} bytes); the file is truncated or not safetensors"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: safetensors header is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: safetensors header must be a JSON object")
    header.pop("__metadata__", None)
    data_start, data_len = 8 + n, size - 8 - n
    spans = []
    for name, e in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise WeightsError(f"{where}: header entry lacks dtype/shape/data_offsets")
        if e["dtype"] not in _DTYPES:
            raise WeightsError(f"{where}: unsupported dtype {e['dtype']!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise WeightsError(f"{where}: bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise WeightsError(f"{where}: bad data_offsets {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end:
            raise WeightsError(f"{where}: data_offsets {offs} are not an increasing byte range")
        if end > data_len:
            raise WeightsError(
                f"{where}: bytes {begin}..{end} run past the end of the data ({data_len} bytes); "
                "the file is truncated (re-download it)"
            )
        want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[e["dtype"]].itemsize
        if end - begin != want:
            raise WeightsError(
                f"{where}: header says shape {shape} {e['dtype']} ({want} bytes) but gives {end - begin} bytes"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise WeightsError(f"{path}: tensors {n0!r} and {n1!r} overlap in the data section; the file is corrupt")
    return header, data_start, data_len


def load_safetensors(path: str | Path, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """-> {name: array}; floats as float32 (memory-mapped where already float32), ints as stored."""
    path = Path(path)
    header, start, length = read_header(path)
    blob = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(length,)) if length else np.zeros(0, np.uint8)
    out = {}
    for name, e in header.items():
        if names is not None and name not in names:
            continue
        begin, end = e["data_offsets"]
        raw = blob[begin:end].view(_DTYPES[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] in ("F16", "F64"):
            arr = raw.astype(np.float32)
        else:
            arr = raw
        out[name] = arr
    return out


def load_checkpoint(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of an HF model directory: `model.safetensors` or a sharded index."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    single = model_dir / SINGLE_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{index}: not a valid safetensors index (needs a 'weight_map' object): {e}") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: 'weight_map' is empty; the checkpoint is incomplete")
        by_file: dict[str, set[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        tensors: dict[str, np.ndarray] = {}
        for fname, names in sorted(by_file.items()):
            shard = model_dir / fname
            if not shard.is_file():
                raise WeightsError(f"{shard}: shard listed in {INDEX_NAME} is missing; re-download the checkpoint")
            got = load_safetensors(shard, names)
            absent = sorted(names - got.keys())
            if absent:
                raise WeightsError(f"{shard}: tensors {absent[:5]} listed in {INDEX_NAME} are not in this shard")
            tensors.update(got)
        return tensors
    if single.is_file():
        return load_safetensors(single)
    if not model_dir.is_dir():
        raise WeightsError(f"{model_dir}: no such model directory")
    raise WeightsError(
        f"{model_dir}: neither {SINGLE_NAME} nor {INDEX_NAME} found; npbert reads safetensors checkpoints "
        "(convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
    )
