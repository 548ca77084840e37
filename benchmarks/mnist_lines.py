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

``--model plain``: the source's own model instead, to reproduce its jump: a plain autoencoder
784-256-16-256-784 with tanh layers, trained to reproduce whole images (no masking, no mask
input; Adam, squared error), fed zeros for the hidden lines (``ae``); then reverse training on
it with the source's objective (``ReverseConfig(objective="reproduce")``: the hidden pixels are
the free parameters, started from the network's own output, every pixel is given and the 504
observed ones are scored, plus the spherical code regulariser and dropout after the input
layer; no held-back pixels, as in the source) and one clean pass (``reverse``). Results go to
their own JSON (``"model": "plain"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lakefill.models.config import AEConfig
from lakefill.models.mixture import predict
from lakefill.models.training import train_autoencoder
from lakefill.models.reverse import ReverseConfig, reverse_impute

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "mnist_test10k.npz"
HIDDEN_LINES = 10


def _scores(x_hat: np.ndarray, x: np.ndarray, hidden: np.ndarray) -> dict:
    ok = np.abs(x_hat - x) < 0.5
    return {"missing_pixel_accuracy": float(ok[:, hidden].mean()), "all_pixel_accuracy": float(ok.mean())}


class PlainAutoencoder(nn.Module):
    """The source's network, 784-256-16-256-784 with tanh layers, with the interface reverse
    training calls (``(values, mask) -> (mean, log-variance, logits, code)``): it has no mask
    input, so a blanked pixel is a pixel of value 0 to it (the source feeds zeros)."""

    def __init__(self, n_pix: int = 784, hidden: int = 256, code: int = 16):
        super().__init__()
        self.n_inputs = self.n_num = n_pix
        self.cat_sizes: list[int] = []
        self.col_slices = [(j, j + 1) for j in range(n_pix)]
        self.size = (hidden, 1, code)
        self.input_layer = nn.Sequential(nn.Linear(n_pix, hidden), nn.Tanh())
        self.encoder = nn.Sequential(nn.Linear(hidden, code), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.Tanh(), nn.Linear(hidden, n_pix), nn.Tanh())
        self.register_buffer("feature_col", torch.arange(n_pix), persistent=False)

    @property
    def dropout_width(self) -> int:
        return self.input_layer[0].out_features

    def forward(self, values, mask, *, input_dropout: float = 0.0, generator=None, dropout_noise=None):
        h = self.input_layer(values)
        if input_dropout > 0:
            u = dropout_noise if dropout_noise is not None else torch.rand(h.shape, generator=generator)
            h = h * (u >= input_dropout) / (1 - input_dropout)
        z = self.encoder(h)
        out = self.decoder(z)
        return out, torch.zeros_like(out), out[:, :0], z

    def blank(self, values, mask):
        return values * mask[:, self.feature_col]

    def split_logits(self, logits):
        return []


def train_plain(train: np.ndarray, *, epochs: int, seed: int) -> PlainAutoencoder:
    """Whole images in, whole images out (squared error), Adam 1e-3, batches of 128, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PlainAutoencoder(train.shape[1])
    gen = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for b in torch.randperm(len(X), generator=gen).split(128):
            out = model(X[b], None)[0]
            loss = ((out - X[b]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _plain(args, train, test, hidden) -> dict:
    t0 = time.perf_counter()
    model = train_plain(train, epochs=args.plain_epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    observed = np.broadcast_to(~hidden, test.shape).copy()
    blank = np.where(observed, test, 0.0).astype(np.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        net_ae = np.clip(model(torch.from_numpy(blank), None)[0].numpy(), 0, 1)  # hidden lines fed as zeros
    ae_s = time.perf_counter() - t0
    filled_ae = np.where(observed, test, net_ae)
    t0 = time.perf_counter()
    rev = reverse_impute(model, blank, observed, np.where(observed, test, 0.0), np.zeros((len(test), 0), np.int64),
                         filled_ae.astype(np.float32),
                         config=ReverseConfig(steps=args.reverse_steps, objective="reproduce", holdout=0.0,
                                              random_state=args.seed))
    rev_s = time.perf_counter() - t0
    out_rev = np.clip(rev.num, 0, 1)  # the clean pass: the network's output on the refined image
    filled_rev = np.where(observed, test, out_rev)
    with torch.no_grad():
        net_rev = np.clip(model(torch.from_numpy(filled_rev.astype(np.float32)), None)[0].numpy(), 0, 1)
    return {
        "model": "plain",
        "ae": {**_scores(filled_ae, test, hidden), "first20_seed_metric": float((np.abs(net_ae[:20] - test[:20]) < 0.5).mean()),
               "seconds": round(ae_s, 3)},
        "reverse": {**_scores(filled_rev, test, hidden),
                    "first20_seed_metric": float((np.abs(net_rev[:20] - test[:20]) < 0.5).mean()),
                    "seconds": round(rev_s, 3), "rows_improved": int(rev.improved.sum()), "rows": len(test)},
        "train_seconds": round(train_s, 1), "epochs_run": args.plain_epochs, "best_epoch": args.plain_epochs,
    }


def _print(result: dict) -> None:
    print(f"{'method':<8} {'missing px acc':>15} {'all px acc':>11} {'first20 (source metric)':>24} {'seconds':>8}")
    for m in ("ae", "reverse"):
        r = result[m]
        print(f"{m:<8} {r['missing_pixel_accuracy']:>15.4f} {r['all_pixel_accuracy']:>11.4f} {r['first20_seed_metric']:>24.4f} {r['seconds']:>8.2f}")
    print(f"model {result['model']}: reverse training kept its refinement on {result['reverse']['rows_improved']} of "
          f"{result['reverse']['rows']} images; training {result['train_seconds']:.0f}s, {result['epochs_run']} epochs "
          f"(best {result['best_epoch']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mnist_lines")
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", type=int, default=2000, help="scored images (the last N of the 10,000)")
    ap.add_argument("--reverse-steps", type=int, default=60)
    ap.add_argument("--progress", action="store_true", help="show a progress bar while training")
    ap.add_argument("--model", choices=["masked", "plain"], default="masked",
                    help="masked: lakefill's masked autoencoder; plain: the source's plain autoencoder")
    ap.add_argument("--plain-epochs", type=int, default=30, help="epochs of the plain autoencoder (--model plain)")
    args = ap.parse_args(argv)
    data = np.load(args.data)
    x = data["x_test"].reshape(len(data["x_test"]), -1).astype(np.float32) / 255.0
    train, test = x[:8000], x[-args.score:]
    n_pix = x.shape[1]
    hidden = np.zeros(n_pix, dtype=bool)
    hidden[(28 - HIDDEN_LINES) * 28:] = True
    # pixels are already in [0, 1]: the "scaled" space is the pixel space itself
    if args.model == "plain":
        result = _plain(args, train, test, hidden)
        _print(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    slices = [(j, j + 1) for j in range(n_pix)]
    cfg = AEConfig(hidden=512, depth=2, code=128, epochs=args.epochs, batch_size=128, lr=1e-3,
                   max_hide=0.5, block_hide=0.5, recon_weight=0.5, patience=12, patience_after=0.0, min_steps=0,
                   schedule="onecycle", random_state=args.seed)
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
        "model": "masked",
        "ae": {**_scores(filled_ae, test, hidden), "first20_seed_metric": float((np.abs(net_ae[:20] - test[:20]) < 0.5).mean()),
               "seconds": round(ae_s, 3)},
        "reverse": {**_scores(filled_rev, test, hidden), "first20_seed_metric": float((np.abs(net_rev[:20] - test[:20]) < 0.5).mean()),
                    "seconds": round(rev_s, 3), "rows_improved": int(rev.improved.sum()), "rows": len(test)},
        "train_seconds": round(train_s, 1), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
