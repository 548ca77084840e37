"""``lakefill evaluate``: benchmark protocol A (accuracy against scikit-learn's imputers)."""

from __future__ import annotations

import json
from pathlib import Path

from lakefill.pipelines.commands._common import add_parser


def register(sub) -> None:
    p = add_parser(sub, "evaluate", help="benchmark protocol A: accuracy against scikit-learn baselines")
    p.add_argument("--data", required=True, help="a complete CSV table; cells are hidden by the protocol")
    p.add_argument("--schema", help="schema.yaml (inferred when absent); it says which columns are categorical")
    p.add_argument("--missing-rate", type=float, default=0.2, help="share of cells hidden (default 0.2)")
    p.add_argument("--mechanism", choices=["mcar", "mar", "mnar"], default="mcar", help="how cells are hidden (docs: protocol A)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the masks and models")
    p.add_argument("--methods", default="lakefill,lakefill-reverse,mean,knn,mice,missforest", help="comma-separated methods to compare")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--ae-config", help="JSON overrides of the autoencoder settings (for experiments)")
    p.add_argument("--train-rows", type=int, default=None, metavar="N",
                   help="lakefill fits on the training sample of N rows (seeded, as `lakefill train` draws it) and "
                        "fills the whole table")
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16",
                   help="lakefill's fill in fp32 or under bfloat16 autocast, as a job's precision (default fp32); "
                        "fp32,bf16 fills from the same fit both ways (the second as <method>@bf16)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lakefill.pipelines.evaluate import evaluate, format_table, write_json

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ae = json.loads(args.ae_config) if args.ae_config else None
    out = evaluate(data=Path(args.data), schema=Path(args.schema) if args.schema else None,
                   missing_rate=args.missing_rate, mechanism=args.mechanism, seeds=seeds, methods=methods,
                   ae_config=ae, train_rows=args.train_rows, precision=[p.strip() for p in args.precision.split(",")])
    print(format_table(out))
    if args.json:
        write_json(out, Path(args.json))
        print(f"wrote {args.json}")
    return 0
