"""Protocol B (docs/benchmarks.md): the reverse-training source experiment on MNIST.

    python -m benchmarks.mnist_lines --data ../shared/data/mnist/mnist_test10k.npz --json OUT.json

The first 8,000 test images train the masked autoencoder (784 numeric columns, pixels in
[0, 1]); the last 2,000 are scored with their bottom 10 pixel lines (280 pixels) missing.
``ae``: one pass. ``reverse``: reverse training on every scored image (the per-row stopping
rule can keep an image's direct fill). Accuracy = share of pixels with |x_hat - x| < 0.5.
The training hides random cells and, for half the rows, a contiguous block of pixels (in
row-major order, so a block of whole lines): the same code path as tables, with
``block_hide`` set, and ``recon_weight`` so that the network also reproduces the given pixels
(the source's metric scores the network's output on all 784 pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lakefill.models.autoencoder import AEConfig, predict, train_autoencoder
from lakefill.models.reverse import ReverseConfig, reverse_impute

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "mnist_test10k.npz"
HIDDEN_LINES = 10


def _scores(x_hat: np.ndarray, x: np.ndarray, hidden: np.ndarray) -> dict:
    ok = np.abs(x_hat - x) < 0.5
    return {"missing_pixel_accuracy": float(ok[:, hidden].mean()), "all_pixel_accuracy": float(ok.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mnist_lines")
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", type=int, default=2000, help="scored images (the last N of the 10,000)")
    ap.add_argument("--reverse-steps", type=int, default=60)
    ap.add_argument("--progress", action="store_true", help="show a progress bar while training")
    args = ap.parse_args(argv)
    data = np.load(args.data)
    x = data["x_test"].reshape(len(data["x_test"]), -1).astype(np.float32) / 255.0
    train, test = x[:8000], x[-args.score:]
    n_pix = x.shape[1]
    hidden = np.zeros(n_pix, dtype=bool)
    hidden[(28 - HIDDEN_LINES) * 28:] = True
    # pixels are already in [0, 1]: the "scaled" space is the pixel space itself
    slices = [(j, j + 1) for j in range(n_pix)]
    cfg = AEConfig(hidden=512, depth=2, code=128, epochs=args.epochs, batch_size=128, lr=1e-3,
                   max_hide=0.5, block_hide=0.5, recon_weight=0.5, patience=12, patience_after=0.0, min_steps=0, random_state=args.seed)
    t0 = time.perf_counter()
    res = train_autoencoder(train, np.ones_like(train, dtype=bool), train, np.zeros((len(train), 0), np.int64),
                            col_slices=slices, n_num=n_pix, cat_sizes=[], config=cfg, progress=args.progress)
    train_s = time.perf_counter() - t0
    observed = np.broadcast_to(~hidden, test.shape).copy()
    blank = np.where(observed, test, 0.0).astype(np.float32)
    t0 = time.perf_counter()
    pred = predict(res.model, blank, observed)
    ae_s = time.perf_counter() - t0
    out_ae = np.clip(pred.num, 0, 1)
    filled_ae = np.where(observed, test, out_ae)
    t0 = time.perf_counter()
    rev = reverse_impute(res.model, blank, observed, np.where(observed, test, 0.0), np.zeros((len(test), 0), np.int64),
                         filled_ae, config=ReverseConfig(steps=args.reverse_steps, random_state=args.seed))
    rev_s = time.perf_counter() - t0
    out_rev = np.where(rev.improved[:, None], np.clip(rev.num, 0, 1), out_ae)
    filled_rev = np.where(observed, test, out_rev)
    # the source's metric: all 784 pixels of the network's own output, first 20 scored images
    # (the network is trained to reproduce given pixels too: recon_weight)
    net_ae = out_ae
    recon = np.clip(predict(res.model, np.where(observed, test, out_rev).astype(np.float32), np.ones_like(observed)).num, 0, 1)
    net_rev = np.where(observed, recon, out_rev)
    result = {
        "ae": {**_scores(filled_ae, test, hidden), "first20_seed_metric": float((np.abs(net_ae[:20] - test[:20]) < 0.5).mean()),
               "seconds": round(ae_s, 3)},
        "reverse": {**_scores(filled_rev, test, hidden), "first20_seed_metric": float((np.abs(net_rev[:20] - test[:20]) < 0.5).mean()),
                    "seconds": round(rev_s, 3), "rows_improved": int(rev.improved.sum()), "rows": len(test)},
        "train_seconds": round(train_s, 1), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
    }
    print(f"{'method':<8} {'missing px acc':>15} {'all px acc':>11} {'first20 (source metric)':>24} {'seconds':>8}")
    for m in ("ae", "reverse"):
        r = result[m]
        print(f"{m:<8} {r['missing_pixel_accuracy']:>15.4f} {r['all_pixel_accuracy']:>11.4f} {r['first20_seed_metric']:>24.4f} {r['seconds']:>8.2f}")
    print(f"reverse training kept its refinement on {result['reverse']['rows_improved']} of {len(test)} images; "
          f"training {train_s:.0f}s, {res.epochs_run} epochs (best {res.best_epoch})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
