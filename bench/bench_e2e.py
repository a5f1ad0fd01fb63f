"""End to end: how fast is npbert next to its peers, measured in the same run.

    flock /tmp/npbert-heavy.lock python bench/bench_e2e.py                      # everything -> results/e2e.{json,md}
    flock /tmp/npbert-heavy.lock python bench/bench_e2e.py --engines npbert-fp32,torch-fp32
                                                                                # the FP32 question -> results/fp32.{json,md}
    python bench/bench_e2e.py --models minilm --batches 1 --threads 1 --engines npbert-dynamic,ort-int8 \
        --sections throughput --min-time 0.5                                    # a quick look -> results/e2e-subset.*

Engines: npbert fp32 and every recipe (dynamic, tm-iqr, w8a8, w8a8-mp, peg), PyTorch FP32 eager, PyTorch
dynamic int8 (torch.ao.quantization.quantize_dynamic on nn.Linear), ONNX Runtime FP32 and ONNX Runtime
dynamic int8 (onnxruntime.quantization.quantize_dynamic on the exported graph). Models: all-MiniLM-L6-v2
and a BERT-base-shaped model with random weights (12 x 768, 12 heads, FFN 3072, vocab 30522) written once
by transformers into the cache folder and read by every engine from the same files.

What is timed: the encoder forward on a pre-tokenized batch of B sequences of exactly T=128 real tokens
(no padding), input ids -> last hidden state. Tokenization, model loading, quantization and calibration are
not timed. Every (thread count, model, engine) runs in a fresh subprocess whose OMP/MKL/OpenBLAS/numba
thread variables, numba.set_num_threads, torch.set_num_threads and ORT intra_op_num_threads all equal that
count; engines of different libraries never share a process (numba's OpenMP pool slows torch ~25x). Per engine and batch: one checked
call, `--warmup` untimed calls, then timed calls until >= --min-repeats samples and >= --min-time seconds;
the median is reported. Static recipes are calibrated once per process on --calib-size STS-B sentences.

Correctness before timing: npbert FP32's last hidden state must lie within 1e-3 (max |diff|) of torch
FP32's on the bench batch (computed once per model in its own process) or it is not timed; int8 engines print the cosine of their pooled output against
torch FP32's (no threshold: that is the accuracy benchmarks' job).

Also (sections): memory (model bytes; peak RSS of a fresh process that loads and runs one batch), jit
(first quantized forward with numba's cache off vs on), cli (wall time of `npbert embed hello`), profile
(where one dynamic int8 forward spends its time, by phase and by cProfile).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _util  # noqa: E402

if "--worker" in sys.argv:  # BLAS / OpenMP / numba read their thread counts when they load
    _util.set_threads_env(_util.threads_from_argv(1))

SEQ = 128
TOL_FP32 = 1e-3  # npbert FP32 vs torch FP32, max |diff| of the last hidden state (the issue's bound; measured ~1e-5)
HEAVY_LOCK = "/tmp/npbert-heavy.lock"
STSB = Path("/work/shared/data/glue/STS-B/train.tsv")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "npbert-bench-e2e"  # outside the repo: nothing for git to see
EXPORT_VERSION = 1  # bump when the ONNX export settings change (invalidates cached .onnx files)

MODELS = {
    "minilm": {"name": "all-MiniLM-L6-v2", "kind": "weights", "path": ROOT / "weights" / "all-MiniLM-L6-v2"},
    "bert-base": {"name": "bert-base (random)", "kind": "random", "layers": 12, "hidden": 768, "heads": 12,
                  "ffn": 3072, "vocab": 30522, "seed": 0},
}
# the five recipes, and the fastest exact variant: 7-bit per-channel weights on the u8 x s7 vpmaddubsw kernel
NPBERT_RECIPES = ("dynamic", "tm-iqr", "w8a8", "w8a8-mp", "peg", "dynamic:wbits=7:weights=channel")
ENGINES = ("npbert-fp32", *(f"npbert-{r}" for r in NPBERT_RECIPES), "torch-fp32", "torch-int8", "ort-fp32", "ort-int8")
INT8_ENGINES = tuple(e for e in ENGINES if not e.endswith("fp32"))
SECTIONS = ("throughput", "memory", "jit", "cli", "profile")
FP32_PAIR = {"npbert-fp32", "torch-fp32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
FALLBACK_TEXTS = [  # used only when the STS-B file is absent
    "A plane is taking off.", "A man is playing a large flute.", "A man is spreading shredded cheese on a pizza.",
    "Three men are playing chess.", "A man is playing the cello.", "Some men are fighting.", "A man is smoking.",
    "The man is playing the piano.", "A man is playing on a guitar and singing.", "A person is throwing a cat.",
    "The man hit the other man with a stick.", "A woman picks up and holds a baby kangaroo.",
    "A man is cutting up a cucumber.", "A woman is dancing in the rain.", "A kid is riding a bike down a hill.",
    "The dog is chasing a ball across the green field.",
]


# =============================================================================== shared helpers


def sentences(data: Path, n: int, seed: int, second: bool = False) -> list[str]:
    """n real sentences: a seeded sample of STS-B's sentence1 (second=True: sentence2) column, or the
    fallback list repeated when the file is absent."""
    if data.is_file():
        from npbert.qmodel_cli import read_calibration_tsv

        texts, pairs = read_calibration_tsv(data, size=n, seed=seed)
        return list(pairs) if second and pairs is not None else list(texts)
    return [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(n)]


def bench_ids(model_dir: Path, B: int, T: int, data: Path):
    """[B, T] int64 ids of real text: [CLS] + concatenated sentences cut to T-2 tokens + [SEP]; full mask."""
    import numpy as np

    from npbert.io.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    probe = tok.encode(["x"], warn=False).input_ids[0]
    cls, sep = int(probe[0]), int(probe[-1])
    pool = sentences(data, 64 * B, seed=1, second=True)  # not the calibration sample
    rows, i = [], 0
    for _ in range(B):
        body: list[int] = []
        while len(body) < T - 2:
            chunk = " ".join(pool[i % len(pool) : i % len(pool) + 6])
            i += 6
            body += tok.encode([chunk], warn=False).input_ids[0][1:-1].tolist()
        rows.append([cls, *body[: T - 2], sep])
    ids = np.array(rows, np.int64)
    return ids, np.ones_like(ids), np.zeros_like(ids)


def cosine_rows(a, b):
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def quiet_transformers():
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as tl

        tl.set_verbosity_error()
        tl.disable_progress_bar()
    except Exception:  # noqa: BLE001 - only cosmetics
        pass


def heavy_lock_held() -> bool | None:
    """True if someone (normally the `flock` wrapping this run) holds the heavy lock right now."""
    try:
        fd = os.open(HEAVY_LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# =============================================================================== engines (worker side)


class Engine:
    """build() loads (untimed); bind(ids, mask, types) -> zero-argument callable returning [B, T, C] float32."""

    info: dict

    def bind(self, ids, mask, types):
        raise NotImplementedError


class NpbertEngine(Engine):
    def __init__(self, model_dir: Path, recipe: str, calib: list[str]):
        from npbert.model import load_model
        from npbert.qmodel import quantize_model

        t0 = time.perf_counter()
        model = load_model(model_dir)
        self.info = {"load_s": time.perf_counter() - t0}
        if recipe != "fp32":
            t0 = time.perf_counter()
            model = quantize_model(model, recipe, calibration=calib)
            self.info["quantize_s"] = time.perf_counter() - t0
            self.info["calibration_texts"] = len(calib) if model.static_sites else 0
        self.model = model

    def bind(self, ids, mask, types):
        import numpy as np

        from npbert.io.tokenizer import Batch

        batch = Batch(ids, mask, types, np.zeros(len(ids), bool))
        return lambda: self.model.forward(batch).last_hidden_state


class TorchEngine(Engine):
    def __init__(self, model_dir: Path, int8: bool):
        import torch
        from transformers import BertModel

        t0 = time.perf_counter()
        m = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
        self.info = {"load_s": time.perf_counter() - t0, "attn_implementation": m.config._attn_implementation}
        if int8:
            t0 = time.perf_counter()
            m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
            self.info["quantize_s"] = time.perf_counter() - t0
            self.info["quantized_engine"] = torch.backends.quantized.engine
        self.m = m

    def bind(self, ids, mask, types):
        import torch

        i, a, t = (torch.from_numpy(x) for x in (ids, mask, types))

        def run():
            with torch.inference_mode():
                return self.m(input_ids=i, attention_mask=a, token_type_ids=t).last_hidden_state.numpy()

        return run


class OrtEngine(Engine):
    def __init__(self, onnx_path: Path, threads: int, profile_prefix: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if profile_prefix is not None:  # ONNX Runtime's own per-node timing (bench/profile_ort.py)
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        t0 = time.perf_counter()
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.info = {"load_s": time.perf_counter() - t0, "onnx": str(onnx_path),
                     "onnx_bytes": onnx_path.stat().st_size, "intra_op_num_threads": threads}

    def bind(self, ids, mask, types):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return lambda: self.sess.run(["last_hidden_state"], feeds)[0]


def make_engine(name: str, m: dict, calib: list[str], threads: int) -> Engine:
    d = Path(m["dir"])
    if name.startswith("npbert-"):
        return NpbertEngine(d, name[len("npbert-") :], calib)
    if name == "torch-fp32":
        return TorchEngine(d, int8=False)
    if name == "torch-int8":
        return TorchEngine(d, int8=True)
    if name == "ort-fp32":
        return OrtEngine(Path(m["onnx_fp32"]), threads)
    if name == "ort-int8":
        return OrtEngine(Path(m["onnx_int8"]), threads)
    raise ValueError(name)


# =============================================================================== workers


def worker_prepare(spec: dict) -> dict:
    """Make sure every model directory (and, if ORT runs, its FP32 and int8 ONNX files) exists."""
    out: dict = {"models": {}}
    cache = Path(spec["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    need_onnx = spec["need_onnx"]
    minilm = MODELS["minilm"]["path"]
    for key in spec["models"]:
        info = MODELS[key]
        if info["kind"] == "weights":
            d = Path(info["path"])
            if not (d / "model.safetensors").is_file():
                print(f"[prepare] {d} missing: running weights/fetch.py", flush=True)
                subprocess.run([sys.executable, str(ROOT / "weights" / "fetch.py")], check=True)
        else:
            d = cache / f"{key}-seed{info['seed']}"
            if not (d / "model.safetensors").is_file():
                make_random_bert(d, info, minilm)
        entry = {"dir": str(d), "name": info["name"]}
        if need_onnx:
            entry.update(export_onnx(d, cache / "onnx" / key))
        out["models"][key] = entry
    return out


def make_random_bert(d: Path, info: dict, tokenizer_src: Path) -> None:
    """BERT-base shape, transformers' own random init (seeded), saved as safetensors + the MiniLM tokenizer
    (same uncased 30522-token vocabulary) so npbert can tokenize calibration text for it."""
    import torch
    from transformers import BertConfig, BertModel

    quiet_transformers()
    print(f"[prepare] creating {info['name']} in {d}", flush=True)
    torch.manual_seed(info["seed"])
    cfg = BertConfig(vocab_size=info["vocab"], hidden_size=info["hidden"], num_hidden_layers=info["layers"],
                     num_attention_heads=info["heads"], intermediate_size=info["ffn"], max_position_embeddings=512,
                     type_vocab_size=2)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
    try:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        except TypeError:  # transformers versions that always write safetensors dropped the argument
            model.save_pretrained(tmp)
        for f in TOKENIZER_FILES:
            if (tokenizer_src / f).is_file():
                shutil.copy2(tokenizer_src / f, tmp / f)
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_onnx(model_dir: Path, out: Path) -> dict:
    """model.onnx (TorchScript exporter, eager attention) and model.int8.onnx (ORT dynamic quantization),
    rebuilt when the weights or the library versions change."""
    import onnxruntime
    import torch
    import transformers

    st = model_dir / "model.safetensors"
    stamp = {"weights": str(st.resolve()), "size": st.stat().st_size, "mtime_ns": st.stat().st_mtime_ns,
             "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
             "export_version": EXPORT_VERSION}
    f32, i8, stamp_file = out / "model.onnx", out / "model.int8.onnx", out / "stamp.json"
    res = {"onnx_fp32": str(f32), "onnx_int8": str(i8)}
    if f32.is_file() and i8.is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return res
    quiet_transformers()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertModel

    out.mkdir(parents=True, exist_ok=True)
    print(f"[prepare] exporting {model_dir.name} to ONNX in {out}", flush=True)
    # Eager attention for the export: the TorchScript trace of the SDPA path gave wrong outputs (max |diff|
    # ~1.6 vs torch with transformers 5.x); the eager graph matches torch to ~5e-6.
    m = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False, attn_implementation="eager").eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    ids = torch.randint(1000, 2000, (2, 16))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {k: {0: "batch", 1: "seq"} for k in (*names, "last_hidden_state")}
    stamp_file.unlink(missing_ok=True)
    torch.onnx.export(Wrap(m), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(f32), dynamo=False,
                      input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17)
    quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8)
    stamp_file.write_text(json.dumps(stamp))
    return res


def _set_engine_threads(name: str, n: int) -> dict:
    """Every library this process will use gets n threads. numba is only touched by npbert engines: with
    its default OpenMP layer, numba shares the system libgomp with torch, and a launched numba pool makes
    torch's 2-thread forward ~25x slower (measured: MiniLM b1 27 ms -> 760 ms), so engines of different
    libraries never share a process."""
    info = {"requested": n, "env": {k: os.environ.get(k) for k in
                                    ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    if name.startswith("npbert-"):
        from npbert._jit import set_num_threads

        info["numba"] = set_num_threads(n)
    if name.startswith("torch-"):
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)
        info["torch"] = torch.get_num_threads()
        quiet_transformers()
    if name.startswith("ort-"):
        info["ort_intra_op"] = n
    return info


def worker_reference(spec: dict) -> dict:
    """Torch FP32 last hidden states of the bench batches (npbert FP32's if torch is absent), saved as .npz."""
    import numpy as np

    name = "torch-fp32"
    try:
        import torch  # noqa: F401
    except ImportError:
        name = "npbert-fp32"
    n = spec["threads"]
    _set_engine_threads(name, n)
    m = spec["prepared"]["models"][spec["model"]]
    ids, mask, types = bench_ids(Path(m["dir"]), max(spec["batches"]), SEQ, Path(spec["data"]))
    eng = make_engine(name, m, [], n)
    out = {"ids": ids}
    for B in spec["batches"]:
        out[f"hidden_b{B}"] = np.asarray(eng.bind(ids[:B], mask[:B], types[:B])(), np.float32)
    np.savez(spec["ref_path"], **out)
    return {"reference": name}


def worker_throughput(spec: dict) -> dict:
    """One engine, one model, every batch size: check against the saved reference, then time."""
    import numpy as np

    from npbert.model import Pooling

    n, name, key = spec["threads"], spec["engine"], spec["model"]
    thread_info = _set_engine_threads(name, n)
    data = Path(spec["data"])
    calib = sentences(data, spec["calib_size"], seed=0)
    m = spec["prepared"]["models"][key]
    ids_all, mask_all, types_all = bench_ids(Path(m["dir"]), max(spec["batches"]), SEQ, data)
    ref = np.load(spec["ref_path"])
    if not np.array_equal(ref["ids"], ids_all):
        raise RuntimeError("the reference was computed on other token ids")
    pooling = Pooling.from_dir(Path(m["dir"]))
    rows, checks = [], []
    print(f"[t={n}] {m['name']}: {name}", flush=True)
    try:
        eng = make_engine(name, m, calib, n)
    except Exception as e:  # noqa: BLE001 - a peer that cannot load is reported, the run goes on
        print(f"   cannot build {name}: {type(e).__name__}: {e}", flush=True)
        rows = [{"model": key, "engine": name, "batch": B, "threads": n, "error": f"{type(e).__name__}: {e}"}
                for B in spec["batches"]]
        return {"rows": rows, "checks": [], "threads": thread_info}
    for B in spec["batches"]:
        ids, mask, types = ids_all[:B], mask_all[:B], types_all[:B]
        fn = eng.bind(ids, mask, types)
        t0 = time.perf_counter()
        y = np.asarray(fn(), np.float32)
        first_s = time.perf_counter() - t0
        ry = ref[f"hidden_b{B}"]
        cos = cosine_rows(pooling(y, mask), pooling(ry, mask))
        chk: dict = {"model": key, "engine": name, "batch": B, "threads": n, "reference": spec["reference"],
                     "pooled_cosine_min": float(cos.min()), "pooled_cosine_mean": float(cos.mean())}
        if name.endswith("fp32"):
            chk["max_abs_diff"] = float(np.abs(y - ry).max())
        if name == "npbert-fp32":
            chk["tolerance"] = TOL_FP32
            chk["ok"] = bool(chk["max_abs_diff"] <= TOL_FP32)
        checks.append(chk)
        desc = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in chk.items()
                         if k in ("max_abs_diff", "pooled_cosine_min", "ok"))
        print(f"   B={B}: check vs {spec['reference']}: {desc}", flush=True)
        row = {"model": key, "engine": name, "batch": B, "threads": n, "seq_len": SEQ, "first_call_s": first_s,
               **{k: v for k, v in eng.info.items() if k != "onnx"}}
        if chk.get("ok") is False:
            row["error"] = f"correctness check failed: max |diff| {chk['max_abs_diff']:.3g} > {TOL_FP32}"
            print(f"   B={B}: NOT TIMED ({row['error']})", flush=True)
            rows.append(row)
            continue
        t = _util.time_adaptive(fn, spec["min_repeats"], spec["min_time"], spec["warmup"])
        row.update(t)
        row["seq_per_s"] = B / t["median_s"]
        row["tok_per_s"] = B * SEQ / t["median_s"]
        rows.append(row)
        print(f"   B={B}: {t['median_s'] * 1e3:9.2f} ms  {row['seq_per_s']:8.2f} seq/s  "
              f"({t['repeats']} repeats, p25-p75 {t['p25_s'] * 1e3:.2f}-{t['p75_s'] * 1e3:.2f} ms, retaken "
              f"{t['retaken_samples']}, other processes {t['other_processes_cpu_per_s'] or 0:.2f} CPU)", flush=True)
    if name.startswith("npbert-"):
        import numba

        thread_info["numba_threading_layer"] = numba.threading_layer()
    return {"rows": rows, "checks": checks, "threads": thread_info}


def _unique_nbytes(arrays) -> int:
    """Bytes of distinct buffers (views of one base counted once)."""
    import numpy as np

    seen, total = set(), 0
    for a in arrays:
        if a is None:
            continue
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) not in seen:
            seen.add(id(base))
            total += base.nbytes
    return total


def worker_memory(spec: dict) -> dict:
    rss_start = _util.rss_bytes()
    import numpy as np

    from npbert.io.tokenizer import Batch
    from npbert.model import load_model

    rss_import = _util.rss_bytes()
    m = spec["prepared"]["models"][spec["model"]]
    model = load_model(Path(m["dir"]))
    rss_load = _util.rss_bytes()
    res = {"model": spec["model"], "variant": spec["variant"], "batch": spec["batch"], "threads": spec["threads"]}
    fp32_bytes = sum(a.nbytes for a in model.params.values())
    res["fp32_param_bytes"] = fp32_bytes
    if spec["variant"] != "fp32":
        from npbert.qmodel import quantize_model  # numba, llvmlite and the kernels' cached machine code

        res["rss_after_qmodel_import_bytes"] = _util.rss_bytes()
        qm = quantize_model(model, spec["variant"])
        res["rss_after_quantize_bytes"] = _util.rss_bytes()
        del model
        model = qm
        qw = qm.qweights
        # A quantized model holds: the int8 panels (with quad panels' sparse fixes, the only copy of each
        # linear weight) with their row sums and scales, the int8 word table + row scales with emb=int8,
        # and the float rest (biases, LayerNorms, position / type tables, and the word table without
        # emb=int8).
        # (the stacked query/key/value weights hold the bytes their three QWeights view: counted once,
        # through the parts; only the stacks' own panel starts are added)
        res["int8_weight_bytes"] = (sum(w.packed.panels.nbytes + sum(f.nbytes for f in w.packed.fixes)
                                        + w.packed.row_sums.nbytes + w.scale.nbytes for w in qw.values())
                                    + sum(w.packed.fixes[0].nbytes for w in qm.qkv_weights.values()))
        res["int8_embedding_bytes"] = sum(a.nbytes for a in qm.word_emb) if qm.word_emb is not None else 0
        res["float_param_bytes_rest"] = sum(a.nbytes for a in qm.params.values())
        res["int8_model_bytes"] = res["int8_weight_bytes"] + res["int8_embedding_bytes"] + res["float_param_bytes_rest"]
        res["fp32_linear_weight_bytes_kept"] = sum(a.nbytes for k, a in qm.params.items()
                                                   if k.endswith(".weight") and k[:-7] in qw)
        arrays = list(qm.params.values()) + (list(qm.word_emb) if qm.word_emb is not None else [])
        for w in [*qw.values(), *qm.qkv_weights.values()]:
            arrays += [w.scale, w.bias, w.packed.panels, w.packed.row_sums, *w.packed.fixes]
        res["npbert_resident_bytes"] = _unique_nbytes(arrays)
    else:
        res["npbert_resident_bytes"] = _unique_nbytes(model.params.values())
    ids = np.full((spec["batch"], SEQ), 1000, np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    t0 = time.perf_counter()
    model.forward(Batch(ids, np.ones_like(ids), np.zeros_like(ids), np.zeros(len(ids), bool)))
    res["forward_s"] = time.perf_counter() - t0
    res.update({"rss_start_bytes": rss_start, "rss_after_import_bytes": rss_import, "rss_after_load_bytes": rss_load,
                "rss_after_forward_bytes": _util.rss_bytes(), "peak_rss_bytes": _util.peak_rss_bytes()})
    return res


def worker_jit(spec: dict) -> dict:
    t_start = time.perf_counter()
    import numpy as np

    from npbert import _jit
    from npbert.io.tokenizer import Batch
    from npbert.model import load_model
    from npbert.qmodel import quantize_model

    t_import = time.perf_counter()
    m = spec["prepared"]["models"][spec["model"]]
    model = load_model(Path(m["dir"]))
    t_load = time.perf_counter()
    calib = sentences(Path(spec["data"]), spec["calib_size"], seed=0)
    qm = quantize_model(model, spec["recipe"], calibration=calib)
    t_quant = time.perf_counter()
    ids, mask, types = bench_ids(Path(m["dir"]), spec["batch"], SEQ, Path(spec["data"]))
    b = Batch(ids, mask, types, np.zeros(len(ids), bool))
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        qm.forward(b)
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times[1:])
    return {"model": spec["model"], "recipe": spec["recipe"], "batch": spec["batch"], "threads": spec["threads"],
            "jit_cache": _jit.CACHE, "import_s": t_import - t_start, "load_s": t_load - t_import,
            "quantize_s": t_quant - t_load, "first_forward_s": times[0], "steady_forward_s": steady,
            "first_call_overhead_s": times[0] - steady}


class PhaseTimer:
    """Wraps functions; accumulates inclusive and exclusive (minus wrapped callees) wall time per label."""

    def __init__(self):
        self.incl: dict[str, float] = {}
        self.excl: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[float] = []

    def wrap(self, label: str, fn):
        def timed(*a, **k):
            self.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                child = self.stack.pop()
                self.incl[label] = self.incl.get(label, 0.0) + dt
                self.excl[label] = self.excl.get(label, 0.0) + dt - child
                self.calls[label] = self.calls.get(label, 0) + 1
                if self.stack:
                    self.stack[-1] += dt

        timed.__wrapped__ = fn
        return timed


# What the profile times: (module[:class], attribute, phase group). Each attribute is wrapped under the
# label "module[:class].attribute"; phases sum their labels' exclusive times.
_INT8_GEMM, _QUANT, _EPI = "GEMM: linear layers (int8 kernels)", "quantize activations", "dequantize epilogue (int -> float, scales, bias, GELU)"
_ATT_GLUE, _GLUE = "attention glue (head split/merge copies, score scaling)", "Python / glue"
PROBES = (
    *(("npbert.kernels.gemm", f, _INT8_GEMM) for f in ("gemm_s8s8", "gemm_s16s8", "gemm_u8s8", "gemm_grouped",
                                                        "gemm_dequant")),  # (dequant: epilogue in its registers)
    ("npbert.kernels.gemm", "dequant_into", _INT8_GEMM),  # (the executor's unchecked entries, and the checked calls' cores)
    *(("npbert.kernels.gemm", f, "GEMM: attention QK^T / PV (int8 kernels)") for f in ("bgemm_s8s8", "bgemm_u8s8",
                                                                                       "bgemm_into")),
    *(("npbert.kernels.quantize", f, _QUANT) for f in ("dynamic_rows_into", "heads_into")),
    ("npbert.kernels.gemm", "activation_into", "GELU"),  # (gemm's own reference: dequant_into's activation)
    ("npbert.kernels.fused", "activation_into", "GELU"),
    ("npbert.kernels.fused", "softmax_quantize_into", "softmax"),
    ("npbert.kernels.fused", "merge_heads_into", _ATT_GLUE),
    ("npbert.kernels.fused", "add_layer_norm_into", "residual add + LayerNorm"),
    *(("npbert.kernels.quantize", f, _QUANT) for f in ("quantize_dynamic", "quantize_dynamic_rows", "quantize_static",
                                                         "quantize_static_grouped")),
    *(("npbert.kernels.quantize", f, "residual add") for f in ("add_requant", "add_requant_grouped")),
    ("npbert.kernels.fused", "epilogue", _EPI),
    *(("npbert.kernels.fused", f, "epilogue + output quantizer (fused)") for f in ("epilogue_quantize", "activation_quantize")),
    ("npbert.kernels.fused", "residual_layer_norm_quantize", "residual add + LayerNorm"),
    ("npbert.kernels.fused", "merge_heads_scaled", _ATT_GLUE),
    ("npbert.kernels.fused", "activation", "GELU"),
    ("npbert.kernels.fused", "softmax_quantize", "softmax"),
    ("npbert.kernels.fused", "softmax_rows", "softmax"),
    ("npbert.kernels.fused", "layer_norm", "LayerNorm"),
    ("npbert.kernels.fused", "add_layer_norm", "residual add + LayerNorm"),
    ("npbert.ops", "linear", "GEMM: linear layers (float BLAS)"),
    ("npbert.model", "embed_tokens", "embeddings"),
    ("npbert.model:Executor", "attention", "attention (float BLAS + glue)"),
    ("npbert.model:Executor", "add", "residual add"),
    *(("npbert.model:Executor", f, _GLUE) for f in ("layer_norm", "add_layer_norm")),
    ("npbert.qmodel:QuantExecutor", "_dynamic", _QUANT),
    ("npbert.qmodel:QuantExecutor", "_matmul", _EPI),
    ("npbert.qmodel:QuantExecutor", "add", "residual add"),
    *(("npbert.qmodel:QuantExecutor", f, _ATT_GLUE) for f in ("attention", "_heads_codes")),
    *(("npbert.qmodel:QuantExecutor", f, _GLUE) for f in ("linear", "linear_site", "site", "layer", "_linear_rows",
                                                          "_add_ln_into", "_one_head_block")),
    *(("npbert.qmodel:QuantExecutor", f, _QUANT) for f in ("_rows_codes", "_head_codes")),
    ("npbert.kernels.layer", "dynamic_layer_into", "encoder layer as one compiled call (not split)"),
    *(("npbert.qmodel:QuantExecutor", f, _ATT_GLUE) for f in ("_attention_int", "_context_int")),
)
PHASES = {f"{owner}.{attr}": phase for owner, attr, phase in PROBES}  # label -> phase group


def _instrument(timer: PhaseTimer):
    """Wrap every PROBES attribute where the forward looks it up at call time (nothing in npbert/ is edited)."""
    import importlib

    for owner, attr, _ in PROBES:
        mod, _, cls = owner.partition(":")
        obj = importlib.import_module(mod)
        obj = getattr(obj, cls) if cls else obj
        setattr(obj, attr, timer.wrap(f"{owner}.{attr}", getattr(obj, attr)))


def worker_profile(spec: dict) -> dict:
    import cProfile
    import io
    import pstats

    import numpy as np

    from npbert._jit import set_num_threads
    from npbert.io.tokenizer import Batch
    from npbert.model import load_model
    from npbert.qmodel import quantize_model

    set_num_threads(spec["threads"])
    m = spec["prepared"]["models"][spec["model"]]
    calib = sentences(Path(spec["data"]), spec["calib_size"], seed=0)
    ids, mask, types = bench_ids(Path(m["dir"]), spec["batch"], SEQ, Path(spec["data"]))
    b = Batch(ids, mask, types, np.zeros(len(ids), bool))
    out: dict = {"model": spec["model"], "batch": spec["batch"], "threads": spec["threads"], "seq_len": SEQ, "runs": {}}
    timer = PhaseTimer()
    _instrument(timer)
    # A plain dynamic layer runs as one compiled call (kernels.layer.dynamic_layer_into), whose kernels no
    # wrapper can see: the profile runs the same kernels called one by one from Python (LAYER_CORE off), so
    # its phases are the kernels' and its Python share is that path's, larger than the compiled layer's.
    from npbert.qmodel import QuantExecutor

    QuantExecutor.LAYER_CORE = False
    out["layer_core"] = False
    for variant in spec["variants"]:
        base = load_model(Path(m["dir"]))
        model = base if variant == "fp32" else quantize_model(base, variant, calibration=calib)
        for _ in range(2):
            model.forward(b)  # warm: JIT cache load, page faults
        timer.incl.clear(), timer.excl.clear(), timer.calls.clear()
        reps, totals = spec["profile_repeats"], []
        for _ in range(reps):
            t0 = time.perf_counter()
            model.forward(b)
            totals.append(time.perf_counter() - t0)
        total = sum(totals)
        labels = {k: {"excl_s_per_forward": v / reps, "incl_s_per_forward": timer.incl[k] / reps,
                      "calls_per_forward": timer.calls[k] // reps, "share": v / total} for k, v in timer.excl.items()}
        groups: dict[str, float] = {}
        for k, v in timer.excl.items():
            g = PHASES.get(k, k)
            groups[g] = groups.get(g, 0.0) + v / reps
        groups["Python / glue"] = groups.get("Python / glue", 0.0) + (total - sum(timer.excl.values())) / reps
        prof = cProfile.Profile()
        prof.enable()
        model.forward(b)
        prof.disable()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime")
        top = []
        for (file, line, fn), (cc, nc, tt, ct, _callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:15]:
            top.append({"function": f"{Path(file).name}:{line}({fn})" if file != "~" else fn, "ncalls": nc,
                        "tottime_s": tt, "cumtime_s": ct})
        out["runs"][variant] = {
            "forward_s": total / reps,
            "forward_s_each": totals,
            "phases": dict(sorted(((g, {"s": v, "share": v / (total / reps)}) for g, v in groups.items()),
                                  key=lambda kv: -kv[1]["s"])),
            "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1]["excl_s_per_forward"])),
            "cprofile_top_tottime": top,
        }
        del model, base
    return out


WORKERS = {"prepare": worker_prepare, "reference": worker_reference, "throughput": worker_throughput, "memory": worker_memory, "jit": worker_jit,
           "profile": worker_profile}


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=list(WORKERS), required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result", required=True)
    a = ap.parse_args(argv)
    spec = json.loads(Path(a.spec).read_text())
    res = WORKERS[a.worker](spec)
    Path(a.result).write_text(json.dumps(res, default=_util._json_default))
    return 0


# =============================================================================== parent


def run_worker(kind: str, threads: int, spec: dict, env_extra: dict | None = None, timeout: float | None = None):
    """Fresh interpreter with every thread variable set to `threads`; returns (result dict | None, wall s, rc)."""
    with tempfile.TemporaryDirectory(prefix="npbert-e2e-") as tmp:
        sp, rp = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        sp.write_text(json.dumps(spec))
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
        env.update(env_extra or {})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--threads", str(threads),
               "--spec", str(sp), "--result", str(rp)]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env, timeout=timeout).returncode
        wall = time.perf_counter() - t0
        res = json.loads(rp.read_text()) if rc == 0 and rp.is_file() else None
        return res, wall, rc


def csv_list(text: str, valid, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise SystemExit(f"--{what}: {bad or 'empty'} not in {', '.join(valid)}")
    return items


def time_cli(cmd: list[str], env: dict, runs: int) -> dict:
    subprocess.run(cmd, env=env, capture_output=True, check=False)  # warm: JIT cache, OS file cache
    walls, rc = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - t0)
        rc = rc or p.returncode
    return {"command": " ".join(cmd), "median_s": statistics.median(walls), "min_s": min(walls), "runs": runs,
            "returncode": rc, "stderr_tail": p.stderr[-300:] if rc else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {', '.join(ENGINES)}")
    ap.add_argument("--batches", default="1,8", help="batch sizes (sequences of 128 tokens), default 1,8")
    ap.add_argument("--threads", default="1,2", help="thread counts, each in a fresh process, default 1,2")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {', '.join(SECTIONS)}")
    ap.add_argument("--min-repeats", type=int, default=5, help="timed calls at least (default 5)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls at least (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the checked one (default 1)")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of idle between engine processes")
    ap.add_argument("--calib-size", type=int, default=32, help="STS-B sentences that calibrate static recipes")
    ap.add_argument("--data", default=str(STSB), help="TSV with sentence1/sentence2 columns (STS-B train)")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="random BERT-base + ONNX exports (outside git)")
    ap.add_argument("--cli-runs", type=int, default=3, help="timed runs of `npbert embed hello`")
    ap.add_argument("--profile-repeats", type=int, default=3, help="forwards averaged in the phase profile")
    ap.add_argument("--out", default=None, help="JSON path (a .md is written next to it); default by selection")
    args = ap.parse_args()

    models = csv_list(args.models, MODELS, "models")
    engines = csv_list(args.engines, ENGINES, "engines")
    engines = [e for e in ENGINES if e in engines]
    sections = csv_list(args.sections, SECTIONS, "sections")
    batches = sorted({int(b) for b in args.batches.split(",")})
    threads = sorted({int(t) for t in args.threads.split(",")})
    full = (models == list(MODELS) and engines == list(ENGINES) and batches == [1, 8] and threads == [1, 2]
            and sections == list(SECTIONS))
    if args.out:
        out = Path(args.out)
    elif set(engines) == FP32_PAIR:
        out = _util.RESULTS / "fp32.json"
    else:
        out = _util.RESULTS / ("e2e.json" if full else "e2e-subset.json")

    locked = heavy_lock_held()
    if not locked:
        print(f"WARNING: {HEAVY_LOCK} is not held: run as `flock {HEAVY_LOCK} python bench/bench_e2e.py ...`, or the "
              "timings may overlap other engineers' heavy jobs", file=sys.stderr)
    machine = _util.machine_info()
    spec = {"models": models, "engines": engines, "batches": batches, "cache_dir": args.cache_dir, "data": args.data,
            "calib_size": args.calib_size, "min_repeats": args.min_repeats, "min_time": args.min_time,
            "warmup": args.warmup, "pause": args.pause, "profile_repeats": args.profile_repeats,
            "need_onnx": any(e.startswith("ort-") for e in engines) and "throughput" in sections}
    git_start = _util.git_state()
    t_run = time.perf_counter()
    prepared, _, rc = run_worker("prepare", max(threads), spec)
    if prepared is None:
        print("prepare failed", file=sys.stderr)
        return 1
    spec["prepared"] = prepared
    payload: dict = {"machine": machine, "heavy_lock_held": locked,
                     "settings": {k: spec[k] for k in ("models", "engines", "batches", "calib_size", "min_repeats",
                                                       "min_time", "warmup", "pause", "data")}
                     | {"threads": threads, "seq_len": SEQ, "sections": sections, "tol_fp32": TOL_FP32},
                     "models": {k: prepared["models"][k] for k in models}}
    failed = False

    if "throughput" in sections:
        rows, checks, tinfo = [], [], {}
        with tempfile.TemporaryDirectory(prefix="npbert-e2e-ref-") as refdir:
            refs = {}
            for key in models:  # one reference per model, shared by every thread count
                rp = str(Path(refdir) / f"{key}.npz")
                res, _, rc = run_worker("reference", max(threads), {**spec, "model": key, "threads": max(threads),
                                                                    "ref_path": rp})
                if res is None:
                    print(f"reference for {key} failed with rc={rc}", file=sys.stderr)
                    return 1
                refs[key] = (rp, res["reference"])
            for t in threads:
                for key in models:
                    for e in engines:  # a fresh process per engine: no thread pools shared between libraries
                        time.sleep(args.pause)
                        res, wall, rc = run_worker("throughput", t, {**spec, "threads": t, "model": key, "engine": e,
                                                                     "ref_path": refs[key][0], "reference": refs[key][1]})
                        if res is None:
                            print(f"{e} on {key} (threads={t}) failed with rc={rc}", file=sys.stderr)
                            rows += [{"model": key, "engine": e, "batch": B, "threads": t, "error": f"worker rc {rc}"}
                                     for B in batches]
                            failed = True
                            continue
                        rows += res["rows"]
                        checks += res["checks"]
                        tinfo[f"{key}/{e}/t{t}"] = {**res["threads"], "process_wall_s": wall}
        add_ratios(rows)
        payload.update({"throughput": rows, "checks": checks, "thread_info": tinfo})
        failed |= any(c.get("ok") is False for c in checks)

    mem_variants = [v for v in ("fp32", "dynamic", "dynamic:emb=int8") if f"npbert-{v.split(':')[0]}" in engines]
    if "memory" in sections and mem_variants:
        mem = []
        for key in models:
            for v in mem_variants:
                res, wall, rc = run_worker("memory", max(threads), {**spec, "model": key, "variant": v,
                                                                    "batch": max(batches), "threads": max(threads)})
                if res is None:
                    failed = True
                    continue
                mem.append({**res, "process_wall_s": wall})
                print(f"[memory] {key} {v}: peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        payload["memory"] = mem

    jit_recipes = [r for r in ("dynamic", "w8a8") if f"npbert-{r}" in engines]
    if "jit" in sections and jit_recipes:
        jit = []
        key = models[0]
        for r in jit_recipes:
            js = {**spec, "model": key, "recipe": r, "batch": 1, "threads": max(threads)}
            cold, wall_c, _ = run_worker("jit", max(threads), js, {"NPBERT_JIT_CACHE": "0"})
            run_worker("jit", max(threads), js, {"NPBERT_JIT_CACHE": "1"})  # make sure the cache is populated
            warm, wall_w, _ = run_worker("jit", max(threads), js, {"NPBERT_JIT_CACHE": "1"})
            for res, wall, mode in ((cold, wall_c, "uncached"), (warm, wall_w, "cached")):
                if res is None:
                    failed = True
                    continue
                jit.append({**res, "mode": mode, "process_wall_s": wall})
                print(f"[jit] {key} {r} {mode}: first forward {res['first_forward_s']:.2f} s, steady "
                      f"{res['steady_forward_s'] * 1e3:.1f} ms, quantize {res['quantize_s']:.2f} s, process {wall:.1f} s",
                      flush=True)
        payload["jit"] = jit

    if "cli" in sections:
        exe = shutil.which("npbert") or str(Path(sys.executable).with_name("npbert"))
        env = dict(os.environ)
        cli = [time_cli([sys.executable, "-c", "pass"], env, args.cli_runs) | {"what": "python -c pass (baseline)"},
               time_cli([exe, "embed", "hello"], env, args.cli_runs) | {"what": "npbert embed hello (fp32)"}]
        if "npbert-dynamic" in engines:
            cli.append(time_cli([exe, "embed", "--recipe", "dynamic", "hello"], env, args.cli_runs)
                       | {"what": "npbert embed --recipe dynamic hello"})
        for c in cli:
            print(f"[cli] {c['what']}: {c['median_s']:.2f} s (rc {c['returncode']})", flush=True)
        payload["cli"] = cli

    npbert_variants = [e[len("npbert-"):] for e in engines if e.startswith("npbert-")]
    if "profile" in sections and npbert_variants:
        key = "bert-base" if "bert-base" in models else models[0]
        # the full run profiles dynamic and fp32; a subset run profiles the npbert engines it names
        variants = ["dynamic", "fp32"] if full else npbert_variants
        res, _, rc = run_worker("profile", max(threads), {**spec, "model": key, "batch": max(batches),
                                                          "threads": max(threads), "variants": variants})
        if res is None:
            failed = True
        payload["profile"] = res

    payload["git"] = _util.git_state()
    payload["git"]["npbert_sources_changed_during_run"] = git_start["npbert_sources_sha256"] != payload["git"]["npbert_sources_sha256"]
    if payload["git"]["npbert_sources_changed_during_run"]:
        print("WARNING: npbert/ sources changed while the benchmark ran; the numbers mix two versions", file=sys.stderr)
    payload["versions"] = _util.versions("torch", "onnxruntime", "onnx", "transformers", "tokenizers", "safetensors")
    payload["run_wall_s"] = time.perf_counter() - t_run
    try:
        payload["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    payload["notes"] = NOTES
    lines = render(payload)
    print("\n".join(lines))
    payload["table"] = lines
    path = _util.write_json(out, payload)
    md = _util.write_text(out.with_suffix(".md"), render_md(payload, json.loads(path.read_text())))
    print(f"wrote {path} and {md}")
    return 1 if failed else 0


NOTES = [
    "Timed: forward only, input ids -> last hidden state, pre-tokenized, B x 128 real tokens (no padding).",
    "torch runs transformers' BertModel (default attention implementation, SDPA) under inference_mode.",
    "ONNX: TorchScript exporter (dynamo=False), eager attention, opset 17; int8 = onnxruntime.quantization."
    "quantize_dynamic(weight_type=QInt8), no pre-processing; ORT_ENABLE_ALL, sequential, inter_op 1.",
    "torch-int8 = torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8), quantized engine as recorded.",
    "Each (threads, model, engine) runs in its own process; the check reference (torch FP32) is computed once per "
    "model in another process, so torch-fp32's own 'max abs diff' shows its run-to-run / thread-count differences.",
    "Ratios are throughput ratios (higher = faster than the reference) at the same model/batch/threads.",
    "bert-base has random (transformers-init, seed 0) weights: its int8 cosines say little about real accuracy.",
]


def add_ratios(rows: list[dict]) -> None:
    idx = {(r["model"], r["batch"], r["threads"], r["engine"]): r for r in rows if "seq_per_s" in r}
    for r in idx.values():
        for ref, key in (("torch-fp32", "x_torch_fp32"), ("ort-int8", "x_ort_int8")):
            o = idx.get((r["model"], r["batch"], r["threads"], ref))
            if o:
                r[key] = r["seq_per_s"] / o["seq_per_s"]


def _fmt(v, spec=".1f", missing="-"):
    return missing if v is None else format(v, spec)


def _pivot(payload: dict):
    """-> per model: (column keys [(batch, threads)], {engine: {col: row}})."""
    rows = payload.get("throughput", [])
    out = {}
    for key in payload["settings"]["models"]:
        mr = [r for r in rows if r["model"] == key]
        cols = sorted({(r["batch"], r["threads"]) for r in mr})
        table: dict = {}
        for r in mr:
            table.setdefault(r["engine"], {})[(r["batch"], r["threads"])] = r
        out[key] = (cols, table)
    return out


def _check_text(payload: dict, key: str, engine: str) -> str:
    cs = [c for c in payload.get("checks", []) if c["model"] == key and c["engine"] == engine]
    if not cs:
        return ""
    c = max(cs, key=lambda c: c["batch"])
    if engine == c["reference"]:
        return "reference"
    if "max_abs_diff" in c:
        s = f"max abs diff {max(x['max_abs_diff'] for x in cs):.1e}"
        return s + (" FAIL" if any(x.get("ok") is False for x in cs) else "")
    cos = [x["pooled_cosine_min"] for x in cs if "pooled_cosine_min" in x]
    return f"cos {min(cos):.5f}" if cos else "no reference"


def render(payload: dict) -> list[str]:
    L: list[str] = []
    m = payload["machine"]
    L.append(f"{m['cpu_model']}, {m['cpus']} CPUs, flags {', '.join(k for k, v in m['flags'].items() if v)}")
    for key, (cols, table) in _pivot(payload).items():
        name = payload["models"][key]["name"]
        for title, field, spec in (("seq/s", "seq_per_s", ".2f"), ("x torch-fp32", "x_torch_fp32", ".2f"),
                                   ("x ort-int8", "x_ort_int8", ".2f")):
            if not any(field in r for t in table.values() for r in t.values()):
                continue
            L.append("")
            L.append(f"{name}, seq {SEQ}: {title}" + (" (higher = faster)" if title.startswith("x") else ""))
            ew = max(16, *(len(e) + 1 for e in table))
            head = f"{'engine':<{ew}}" + "".join(f"{f'b{b} t{t}':>11}" for b, t in cols)
            if field == "seq_per_s":
                head += f"{'tok/s@max':>11}  check"
            L.append(head)
            L.append("-" * len(head))
            for e in ENGINES:
                if e not in table:
                    continue
                cells = "".join(f"{_fmt(table[e].get(c, {}).get(field), spec, 'err' if 'error' in table[e].get(c, {}) else '-'):>11}"
                                for c in cols)
                line = f"{e:<{ew}}{cells}"
                if field == "seq_per_s":
                    line += f"{_fmt(table[e].get(cols[-1], {}).get('tok_per_s'), '.0f'):>11}  {_check_text(payload, key, e)}"
                L.append(line)
    for i, mrow in enumerate(payload.get("memory", [])):
        if i == 0:
            L.append("")
            L.append(f"memory (fresh process: load + one forward of batch {mrow['batch']} x {SEQ})")
        s = (f"  {mrow['model']:<10} {mrow['variant']:<8} params fp32 {mrow['fp32_param_bytes'] / 2**20:7.1f} MiB")
        if "int8_model_bytes" in mrow:
            s += (f" | int8 model {mrow['int8_model_bytes'] / 2**20:6.1f} MiB | npbert resident as built "
                  f"{mrow['npbert_resident_bytes'] / 2**20:6.1f} MiB")
        s += f" | peak RSS {mrow['peak_rss_bytes'] / 2**20:6.0f} MiB (RSS after imports {mrow['rss_after_import_bytes'] / 2**20:.0f}"
        if "rss_after_quantize_bytes" in mrow:
            s += (f", + numba/kernels {mrow['rss_after_qmodel_import_bytes'] / 2**20:.0f}"
                  f", after quantize {mrow['rss_after_quantize_bytes'] / 2**20:.0f}")
        s += f", after forward {mrow['rss_after_forward_bytes'] / 2**20:.0f})"
        L.append(s)
    if payload.get("jit"):
        L.append("")
        L.append("first quantized forward (batch 1): numba cache off vs on")
        for j in payload["jit"]:
            L.append(f"  {j['model']:<10} {j['recipe']:<8} {j['mode']:<9} quantize {j['quantize_s']:6.2f} s  first forward "
                     f"{j['first_forward_s']:6.2f} s  steady {j['steady_forward_s'] * 1e3:7.1f} ms  process {j['process_wall_s']:6.1f} s")
    if payload.get("cli"):
        L.append("")
        L.append("process start to exit (JIT cache warm)")
        for c in payload["cli"]:
            L.append(f"  {c['what']:<38} {c['median_s']:6.2f} s")
    prof = payload.get("profile")
    if prof:
        for variant, r in prof["runs"].items():
            L.append("")
            L.append(f"profile: npbert {variant}, {payload['models'][prof['model']]['name']}, batch {prof['batch']}, "
                     f"threads {prof['threads']}: {r['forward_s'] * 1e3:.0f} ms per forward")
            for g, v in r["phases"].items():
                L.append(f"  {g:<58} {v['s'] * 1e3:8.1f} ms  {v['share'] * 100:5.1f}%")
    return L


def render_md(payload: dict, doc: dict) -> str:
    m, v = payload["machine"], payload["versions"]
    L = ["# npbert end-to-end throughput", "",
         f"`{doc['command']}`" + ("" if payload.get("heavy_lock_held") else " (heavy lock NOT held)"), "",
         f"{doc['date']} | {m['cpu_model']}, {m['cpus']} CPUs ({m.get('hypervisor') or 'bare metal'}), "
         f"AVX2 {m['flags']['avx2']}, AVX-512 {m['flags']['avx512f']}, VNNI {m['flags']['avx512_vnni'] or m['flags']['avx_vnni']} | "
         + ", ".join(f"{k} {val}" for k, val in v.items() if val), "",
         f"git {payload['git']['head'][:10]}" + (f", uncommitted changes in {', '.join(payload['git']['npbert_uncommitted'])}"
                                                  if payload["git"]["npbert_uncommitted"] else ", npbert/ clean")
         + (" (npbert/ CHANGED during the run)" if payload["git"].get("npbert_sources_changed_during_run") else ""), ""]
    L += [f"- {n}" for n in payload["notes"]]
    for key, (cols, table) in _pivot(payload).items():
        name = payload["models"][key]["name"]
        L += ["", f"## {name}, seq {SEQ}", "",
              "| engine | " + " | ".join(f"b{b} t{t} seq/s" for b, t in cols) + " | "
              + " | ".join(f"b{b} t{t} x torch-fp32 / x ort-int8" for b, t in cols) + " | check |",
              "|---|" + "---:|" * (2 * len(cols)) + "---|"]
        for e in ENGINES:
            if e not in table:
                continue
            a = [_fmt(table[e].get(c, {}).get("seq_per_s"), ".2f", "err" if "error" in table[e].get(c, {}) else "-") for c in cols]
            r = [f"{_fmt(table[e].get(c, {}).get('x_torch_fp32'), '.2f')} / {_fmt(table[e].get(c, {}).get('x_ort_int8'), '.2f')}"
                 for c in cols]
            L.append(f"| {e} | " + " | ".join(a) + " | " + " | ".join(r) + f" | {_check_text(payload, key, e)} |")
        L += ["", "| engine | batch | threads | ms / batch (median) | p25-p75 ms | repeats (retaken) | seq/s | tok/s | "
              "other processes' CPU while timing |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in ENGINES:
            for c in cols:
                r = table.get(e, {}).get(c)
                if not r or "median_s" not in r:
                    continue
                L.append(f"| {e} | {c[0]} | {c[1]} | {r['median_s'] * 1e3:.2f} | {r['p25_s'] * 1e3:.2f}-{r['p75_s'] * 1e3:.2f} | "
                         f"{r['repeats']} ({r.get('retaken_samples', 0)}) | {r['seq_per_s']:.2f} | {r['tok_per_s']:.0f} | "
                         f"{_fmt(r.get('other_processes_cpu_per_s'), '.2f')} |")
    if payload.get("memory"):
        L += ["", "## Memory", "", "Model bytes are sums of array nbytes; peak RSS is ru_maxrss of a fresh process that "
              "imports npbert, loads (and quantizes) the model and runs one batch.", "",
              "| model | variant | FP32 params MiB | int8 model MiB (int8 W + scales + float rest) | npbert resident as built MiB | "
              "RSS after imports MiB | RSS after numba/kernels import MiB | RSS after quantize MiB | RSS after forward MiB | "
              "peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in payload["memory"]:
            L.append(f"| {r['model']} | {r['variant']} | {r['fp32_param_bytes'] / 2**20:.1f} | "
                     f"{_fmt(r.get('int8_model_bytes') and r['int8_model_bytes'] / 2**20)} | {r['npbert_resident_bytes'] / 2**20:.1f} | "
                     f"{r['rss_after_import_bytes'] / 2**20:.0f} | "
                     f"{_fmt(r.get('rss_after_qmodel_import_bytes') and r['rss_after_qmodel_import_bytes'] / 2**20, '.0f')} | "
                     f"{_fmt(r.get('rss_after_quantize_bytes') and r['rss_after_quantize_bytes'] / 2**20, '.0f')} | "
                     f"{r['rss_after_forward_bytes'] / 2**20:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    if payload.get("jit"):
        L += ["", "## First call (numba JIT)", "", "Fresh process each; uncached = NPBERT_JIT_CACHE=0 (everything compiles), "
              "cached = machine code loaded from numba's cache.", "",
              "| model | recipe | mode | import s | load s | quantize s | first forward s | steady forward ms | process wall s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for j in payload["jit"]:
            L.append(f"| {j['model']} | {j['recipe']} | {j['mode']} | {j['import_s']:.2f} | {j['load_s']:.2f} | {j['quantize_s']:.2f} | "
                     f"{j['first_forward_s']:.2f} | {j['steady_forward_s'] * 1e3:.1f} | {j['process_wall_s']:.1f} |")
    if payload.get("cli"):
        L += ["", "## Process start (JIT cache warm)", "", "| command | median s | min s |", "|---|---:|---:|"]
        for c in payload["cli"]:
            L.append(f"| `{c['what']}` | {c['median_s']:.2f} | {c['min_s']:.2f} |")
    prof = payload.get("profile")
    if prof:
        for variant, r in prof["runs"].items():
            L += ["", f"## Profile: npbert {variant}, {payload['models'][prof['model']]['name']}, batch {prof['batch']}, "
                  f"threads {prof['threads']} ({r['forward_s'] * 1e3:.0f} ms per forward)", "",
                  *(["The layers' kernels called one by one from Python (LAYER_CORE off), so that each is seen.", ""]
                    if prof.get("layer_core") is False else []),
                  "| phase | ms per forward | share |", "|---|---:|---:|"]
            for g, ph in r["phases"].items():
                L.append(f"| {g} | {ph['s'] * 1e3:.1f} | {ph['share'] * 100:.1f}% |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(sys.argv[1:]))
    sys.exit(main())
