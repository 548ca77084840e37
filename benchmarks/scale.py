"""Protocol F: training and the first run as the input grows.

    python -m benchmarks.scale --data ../shared/data/tabular/letter.csv \
        --sizes 200000,2000000,20000000 --formats parquet,csv --paths train,local,spark,beam \
        [--train-rows N] [--json benchmarks/results/scale.json]

Each input is letter resampled to the size with 20% MCAR holes (written once under --work,
default /tmp/lakefill-scale). ``train``: ``lakefill train``; ``local``/``spark``/``beam``: a first
``lakefill run`` of a job with ``train_if_missing`` on that engine. Per run: seconds of the
sampling pass (from the log line the sampler writes), fit seconds (the manifest's
``train_seconds``), total seconds, peak resident memory of the launcher/driver process and of the
largest process below it (a Spark JVM or Python worker, a Beam SDK worker), rows in the training
sample. Every number is measured here: the JSON names the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def make_input(data: Path, rows: int, fmt: str, work: Path, seed: int = 0) -> Path:
    """``data`` resampled to ``rows`` rows with 20% of its cells blanked (MCAR), written in chunks."""
    path = work / f"{data.stem}-{rows}.{fmt}"
    if path.exists():
        return path
    source = pacsv.read_csv(data)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(path.suffix + ".part")
    writer = None
    chunk = 500_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        t = source.take(pa.array(rng.integers(0, source.num_rows, n)))
        cols = {}
        for name in t.column_names:
            col = t.column(name).combine_chunks()
            hide = rng.random(n) < 0.2
            cols[name] = pc.if_else(pa.array(hide), pa.scalar(None, col.type), col)
        t = pa.table(cols)
        if fmt == "parquet":
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t, row_group_size=100_000)
        else:
            with open(tmp, "ab") as fh:
                pacsv.write_csv(t, fh, pacsv.WriteOptions(include_header=start == 0))
    if writer is not None:
        writer.close()
    tmp.rename(path)
    return path


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall seconds, output and the peak RSS of it and of its largest descendant."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = {"launcher": 0, "worker": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak["launcher"] = max(peak["launcher"], _rss_kb(proc.pid))
            todo, seen = _children(proc.pid), set()
            while todo:
                c = todo.pop()
                if c in seen:
                    continue
                seen.add(c)
                peak["worker"] = max(peak["worker"], _rss_kb(c))
                todo += _children(c)
            done.wait(0.25)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    output = proc.communicate()[0]
    done.set()
    thread.join()
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "output": output,
            "launcher_peak_mb": round(peak["launcher"] / 1024, 1), "worker_peak_mb": round(peak["worker"] / 1024, 1)}


def _sampling_seconds(output: str) -> float | None:
    m = re.search(r"training sample: [\d,]+ of [\d,]+ rows \(seed \d+\), drawn (?:by \w+ )?in ([\d.]+) s", output)
    return float(m.group(1)) if m else None


def one(path: Path, how: str, work: Path, train_rows: int, train_args: list[str] = ()) -> dict:
    lakefill = [str(Path(sys.executable).parent / "lakefill")]
    tag = f"{path.stem}-{path.suffix[1:]}-{how}"
    model, output = work / "models" / tag, work / "out" / tag
    for folder in (model, output):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    if how == "train":
        cmd = lakefill + ["train", "--input", str(path), "--out", str(model), "--train-rows", str(train_rows),
                          *train_args]
    else:
        job = work / f"{tag}.yaml"
        job.write_text(json.dumps({"input": str(path), "model": str(model), "output": str(output),
                                   "train_if_missing": True, "training": {"train_rows": train_rows}}))
        cmd = lakefill + ["run", str(job), "--engine", how]
    r = measure(cmd, env)
    manifest = json.loads((model / "manifest.json").read_text()) if (model / "manifest.json").exists() else {}
    metrics = manifest.get("metrics", {})
    out = {"path": how, "input": path.name, "returncode": r["returncode"], "total_seconds": round(r["seconds"], 1),
           "sampling_seconds": _sampling_seconds(r["output"]), "fit_seconds": metrics.get("train_seconds"),
           "sample_rows": (metrics.get("training_sample") or {}).get("rows"),
           "input_rows": (metrics.get("training_sample") or {}).get("input_rows"),
           "launcher_peak_mb": r["launcher_peak_mb"], "worker_peak_mb": r["worker_peak_mb"]}
    if r["returncode"] != 0:
        out["error"] = r["output"][-2000:]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the table to resample (letter.csv)")
    ap.add_argument("--sizes", default="200000,2000000,20000000")
    ap.add_argument("--formats", default="parquet,csv")
    ap.add_argument("--paths", default="train,local,spark,beam", help="train and/or engines of a first run")
    ap.add_argument("--train-rows", type=int, default=None, help="the sample size (default: lakefill's)")
    ap.add_argument("--train-args", default="", help="further flags of `lakefill train` (the train path only; the "
                    "tests' small version trains a tiny network)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lakefill-scale"))
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    from lakefill.models.config import TRAIN_ROWS

    train_rows = args.train_rows or TRAIN_ROWS
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    print(f"{'input':<28} {'path':<6} {'sample':>8} {'sampling s':>10} {'fit s':>7} {'total s':>8} "
          f"{'launcher MB':>11} {'worker MB':>9}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for fmt in args.formats.split(","):
            path = make_input(args.data, size, fmt, args.work)
            for how in args.paths.split(","):
                r = one(path, how, args.work, train_rows, args.train_args.split())
                runs.append({"rows": size, "format": fmt, **r})
                def show(v):
                    return "-" if v is None else v

                print(f"{path.name:<28} {how:<6} {show(r['sample_rows']):>8} {show(r['sampling_seconds']):>10} "
                      f"{show(r['fit_seconds']):>7} {r['total_seconds']:>8} {r['launcher_peak_mb']:>11} "
                      f"{r['worker_peak_mb']:>9}" + ("  FAILED" if r["returncode"] else ""), flush=True)
    result = {"protocol": "F", "data": args.data.name, "train_rows": train_rows, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
              "date": time.strftime("%Y-%m-%d")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
