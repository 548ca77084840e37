"""The model artifact: ``weights.safetensors`` + ``manifest.json``. Never pickle.

The weights file also holds the donor rows when the model keeps them (``lakefill.models.donors``) and the
boosted trees' node arrays when it has trees (``lakefill.models.trees``).
The manifest carries the schema the model was trained on, the codec state, the fitted null
policy, the hyperparameters, training metrics, library versions and the sha256 of the weights.
Loading verifies the hashes: ``weights_sha256`` (the weights file) and ``artifact_sha256`` (the
whole artifact: the manifest's every other field, codec, schema, policy and architecture
included, with the weights' hash), so an edited manifest is refused like an edited weights file;
it refuses non-finite weights, a weights file named outside the model folder and, when the
caller names its schema, a model whose columns and types differ (the error names them).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lakefill.models import members as registry
from lakefill.models.autoencoder import AEConfig, Ensemble, GaussianMember, MaskedAutoencoder
from lakefill.models.codec import TableCodec
from lakefill.errors import ModelError
from lakefill.schema import TableSchema

__all__ = ["ModelArtifact", "save_artifact", "load_artifact", "artifact_format", "FORMAT"]

FORMAT = "lakefill-model/8"  # /2: an ensemble's weights (members.N.*); /3: a Gaussian member; /4: donor rows
# (donors.*); /5: the networks' input squash (architecture "squash"; an older version would ignore it);
# /6: boosted trees (trees.*, architecture "trees"); /7: the whole artifact under one hash ("artifact_sha256");
# /8: optionally the networks adapted to a run's rows ("adapted": their own weights file, lakefill.models.adapt)
READABLE = ("lakefill-model/2", "lakefill-model/3", "lakefill-model/4", "lakefill-model/5", "lakefill-model/6",
            "lakefill-model/7", FORMAT)  # an older model is a /8 one without what came later; before /7 only the
# weights were hashed
ADAPTED_WEIGHTS = "adapted.safetensors"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


@dataclass
class ModelArtifact:
    model: Ensemble
    codec: TableCodec
    schema: TableSchema
    policy: dict | None
    config: AEConfig
    metrics: dict
    sha256: str
    error_reference: float
    # the networks adapted to a run's rows (the Gaussian member and the blends are ``model``'s),
    # with the adaptation's report; refine uses them, impute never does
    adapted: Ensemble | None = None
    adaptation: dict | None = None
    profile: dict | None = None  # the training rows' statistics per column (lakefill._drift); None: older model
    training_confidence: dict | None = None  # the training rows' confidence: mean and histogram (lakefill._drift)

    def check_schema(self, schema: TableSchema, *, source: str = "the job's schema") -> None:
        """Refuse a schema whose imputed columns differ from the model's (names and types)."""
        problems = []
        theirs = {c.name: c for c in schema.columns}
        for name in self.codec.columns:
            if name not in theirs:
                problems.append(f"{name!r} (in the model, not in {source})")
            elif theirs[name].type != self.codec.types_[name]:
                problems.append(f"{name!r} (model: {self.codec.types_[name]}, {source}: {theirs[name].type})")
        extra = [c.name for c in schema.columns if c.impute and c.name not in self.codec.types_]
        problems += [f"{n!r} (imputed by {source}, unknown to the model)" for n in extra]
        if problems:
            raise ModelError(f"the model was trained on another schema; mismatching columns: {', '.join(problems)}. "
                             "Retrain with `lakefill train` on this schema or use the matching model.")


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "pyarrow", "safetensors", "scikit-learn", "lakefill"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(out_dir: str | Path, *, model: Ensemble | MaskedAutoencoder, codec: TableCodec, schema: TableSchema,
                  policy: dict | None, config: AEConfig, metrics: dict, error_reference: float,
                  adapted: Ensemble | None = None, adaptation: dict | None = None, profile: dict | None = None,
                  training_confidence: dict | None = None) -> Path:
    """Write the model (a single network is saved as an ensemble of one) with the config it was
    trained with; ``adapted``: the same model with its networks adapted to a run's rows (saved
    as their own weights file, ``adaptation`` its report)."""
    model = model if isinstance(model, Ensemble) else Ensemble([model])
    if any(size not in config.sizes for size in model.sizes):
        raise ModelError(f"the model's network sizes {model.sizes} (hidden, depth, code) are not among the config's "
                         f"{config.sizes}: save the config the model was trained with")
    squash = _squash(model)
    if squash != config.squash:
        raise ModelError(f"the model's networks squash their inputs at {squash}, the config says "
                         f"{config.squash}: save the config the model was trained with")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest = {
        "format": FORMAT,
        "weights": WEIGHTS,
        "weights_sha256": _sha256(weights),
        "schema": schema.model_dump(mode="json"),
        "codec": codec.state(),
        "null_policy": policy,
        "architecture": {"n_inputs": model.n_inputs, "col_slices": [list(s) for s in model.col_slices],
                         "n_num": model.n_num, "cat_sizes": model.cat_sizes, "sizes": [list(z) for z in model.sizes],
                         "gaussian": model.has_gaussian, "squash": squash,
                         **{b.name: b.architecture(getattr(model, b.name)) for b in registry.BLENDS}},
        "config": config.__dict__,
        "error_reference": error_reference,
        "metrics": metrics,
        "versions": _versions(),
    }
    if profile is not None:
        manifest["training_profile"] = profile
    if training_confidence is not None:
        manifest["training_confidence"] = training_confidence
    if adapted is not None:
        adapted = adapted if isinstance(adapted, Ensemble) else Ensemble([adapted])
        nets = _network_state(model)
        state = {k: v for k, v in adapted.state_dict().items() if k in nets}
        if adapted.sizes != model.sizes or set(state) != set(nets):
            raise ModelError("the adapted model's networks must be the model's (same sizes, same members)")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out_dir / ADAPTED_WEIGHTS))
        manifest["adapted"] = {"weights": ADAPTED_WEIGHTS, "weights_sha256": _sha256(out_dir / ADAPTED_WEIGHTS),
                               "report": adaptation or {}}
    else:
        (out_dir / ADAPTED_WEIGHTS).unlink(missing_ok=True)
    manifest["artifact_sha256"] = _manifest_digest(manifest)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return out_dir


def _network_state(model: Ensemble) -> set[str]:
    """The state keys of the model's networks (what adaptation changes)."""
    return {k for k in model.state_dict() if k.startswith("members.")
            and isinstance(model.members[int(k.split(".")[1])], MaskedAutoencoder)}


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest without its own hash, as canonical JSON (it holds the weights' hash)."""
    body = {k: v for k, v in manifest.items() if k != "artifact_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _squash(model: Ensemble) -> float:
    """The networks' input squash (one value for the model: they are trained with one config)."""
    values = {m.squash for m in model.members if isinstance(m, MaskedAutoencoder)}
    if len(values) != 1:
        raise ModelError(f"the model's networks differ in their input squash ({sorted(values)}); a model has one")
    return values.pop()


def artifact_format(model_dir: str | Path) -> str | None:
    """The format a model folder's manifest declares; None without a readable manifest."""
    try:
        return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8")).get("format")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def load_artifact(model_dir: str | Path, *, schema: TableSchema | None = None) -> ModelArtifact:
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST
    if not manifest_path.exists():
        raise ModelError(f"{model_dir}: no {MANIFEST}; is this a lakefill model directory (made by `lakefill train`)?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelError(f"{manifest_path}: not valid JSON: {err}") from err
    if manifest.get("format") not in READABLE:
        raise ModelError(f"{manifest_path}: format {manifest.get('format')!r} is not one this version reads ({', '.join(READABLE)}); "
                         "retrain it with this version's `lakefill train`")
    name = manifest.get("weights", WEIGHTS)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise ModelError(f"{manifest_path}: weights {name!r} must be a file name inside the model folder; refusing "
                         "a path that leads elsewhere")
    weights = model_dir / name
    if not weights.exists():
        raise ModelError(f"{model_dir}: weights file {weights.name} is missing")
    digest = _sha256(weights)
    if digest != manifest.get("weights_sha256"):
        raise ModelError(f"{weights}: sha256 {digest} does not match the manifest's {manifest.get('weights_sha256')}; "
                         "the weights were changed after training. Refusing to load.")
    if manifest["format"] == FORMAT or "artifact_sha256" in manifest:
        whole = _manifest_digest(manifest)
        if whole != manifest.get("artifact_sha256"):
            raise ModelError(f"{manifest_path}: the artifact's sha256 {whole} does not match its recorded "
                             f"{manifest.get('artifact_sha256')}: the manifest (codec, schema, policy, architecture ...) "
                             "was changed after training. Refusing to load; retrain with `lakefill train`.")
    try:
        trained_schema = TableSchema.model_validate(manifest["schema"])
        codec = TableCodec.from_state(manifest["codec"], schema=trained_schema)
        arch = manifest["architecture"]
        squash = float(arch.get("squash", 0.0))  # before /5: none
        # an older config lacks the newer fields: its networks were trained on the one-cycle schedule
        config = AEConfig(**{"squash": squash, "schedule": "onecycle", **manifest["config"]})
        layout = dict(n_inputs=arch["n_inputs"], col_slices=[tuple(s) for s in arch["col_slices"]], n_num=arch["n_num"],
                      cat_sizes=arch["cat_sizes"])
        members = [MaskedAutoencoder(**layout, hidden=hidden, depth=depth, code=code, squash=squash)
                   for hidden, depth, code in arch["sizes"]]
        if arch.get("gaussian", False):
            members.append(GaussianMember(**layout))
        # an older manifest lacks a newer blend: built as None
        blends = {b.name: b.build(arch.get(b.name), layout) for b in registry.BLENDS}
        model = Ensemble(members, **blends)
        state = load_file(str(weights))
        # the members' parameters and the mixture weights must be finite (the trees' thresholds hold
        # inf by design and are checked by TreeFill.check; donor rows hold NaN for their missing cells)
        bad = sorted(k for k, t in state.items() if k.startswith(("members.", "weights")) and t.is_floating_point()
                     and not bool(torch.isfinite(t).all()))
        if bad:
            raise ModelError(f"{weights}: non-finite values (NaN or inf) in {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                             "refusing a model that would impute garbage")
        model.load_state_dict(state)
        for b in registry.BLENDS:
            if blends[b.name] is not None:
                b.check(blends[b.name])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelError(f"{model_dir}: the manifest and weights do not make a valid model: {err}") from err
    model.eval()
    adapted = _load_adapted(model_dir, manifest, model) if manifest.get("adapted") else None
    artifact = ModelArtifact(model, codec, trained_schema, manifest.get("null_policy"), config,
                             manifest.get("metrics", {}), digest, float(manifest.get("error_reference", 1.0)),
                             adapted, (manifest.get("adapted") or {}).get("report"), manifest.get("training_profile"),
                             manifest.get("training_confidence"))
    if schema is not None:
        artifact.check_schema(schema)
    return artifact


def _load_adapted(model_dir: Path, manifest: dict, model: Ensemble) -> Ensemble:
    """The adapted networks (``manifest["adapted"]``), checked by their hash, on ``model``'s other members."""
    from lakefill.models.adapt import with_networks

    entry = manifest["adapted"]
    path = model_dir / ADAPTED_WEIGHTS
    if entry.get("weights") != ADAPTED_WEIGHTS or not path.exists():
        raise ModelError(f"{model_dir}: the manifest names adapted weights, and {ADAPTED_WEIGHTS} is missing")
    digest = _sha256(path)
    if digest != entry.get("weights_sha256"):
        raise ModelError(f"{path}: sha256 {digest} does not match the manifest's {entry.get('weights_sha256')}; "
                         "the adapted weights were changed after they were written. Refusing to load.")
    state = load_file(str(path))
    if set(state) != _network_state(model):
        raise ModelError(f"{path}: the adapted weights do not match the model's networks")
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        raise ModelError(f"{path}: non-finite values in the adapted weights; refusing them")
    adapted = with_networks(model)
    adapted.load_state_dict({**adapted.state_dict(), **state})
    return adapted.eval()
