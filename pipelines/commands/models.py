"""``lakefill models list``: a job's model versions, their checks and the runs that used them."""

from __future__ import annotations

import json

from lakefill.errors import LakefillError
from lakefill.pipelines.commands._common import add_parser
from lakefill.transforms.storage import Location


def register(sub) -> None:
    p = add_parser(sub, "models", help="a job's model versions: training rows, held-out checks, the runs that used them")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = add_parser(msub, "list", help="list the versions of an output's models, or of a model folder")
    q.add_argument("path", help="a lakefill output (holding table/) or a model folder")
    q.set_defaults(func=list_versions)


def list_versions(args) -> int:
    from lakefill.pipelines.versions import CHECK, runs_by_model, versions

    where = Location(args.path)
    runs: dict[str, list[str]] = {}
    if (where / "table" / "_delta_log").is_dir():  # an output: the versions its runs used, and theirs
        runs = runs_by_model(where)
        models = list(runs)
        if not models:
            raise LakefillError(f"{where}: no committed run names its model (runs before 2026-12-07 do not); "
                                f"give the model folder instead")
        seen, rows = set(), []
        for m in models:
            rows += [v for v in versions(m) if v[1].uri not in seen]
            seen |= {v[1].uri for v in rows}
    elif (where / "manifest.json").exists():
        rows = versions(where)
    else:
        raise LakefillError(f"{where} is neither a lakefill output (table/) nor a model folder (manifest.json)")
    print(f"{'version':<8} {'trained rows':>12} {'check':<28} {'runs':<24} model")
    for n, v in rows:
        manifest = json.loads((v / "manifest.json").read_text())
        check = json.loads((v / CHECK).read_text()) if (v / CHECK).exists() else None
        verdict = ("trained first" if check is None else
                   f"{'accepted' if check['accepted'] else 'not accepted'} {check['check_score']:.4g} "
                   f"vs {check['check_score_of_current']:.4g}")
        used = runs.get(str(v), [])
        shown = ", ".join(used[:3]) + (f" +{len(used) - 3}" if len(used) > 3 else "") if runs else "-"
        print(f"v{n:<7} {manifest.get('metrics', {}).get('rows', '?'):>12} {verdict:<28} {shown or 'none':<24} {v}")
    return 0
