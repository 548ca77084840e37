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
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lakefill.models import members as registry
from lakefill.models.config import AEConfig
from lakefill.models.mixture import Ensemble
from lakefill.models.network import MaskedAutoencoder
from lakefill.models.codec import TableCodec
from lakefill.errors import ModelError
from lakefill.schema import TableSchema

__all__ = ["ModelArtifact", "unsaved_artifact", "save_artifact", "load_artifact", "artifact_format", "artifact_digest", "model_folder",
           "FORMAT", "MANIFEST", "WEIGHTS"]

# the whole artifact under one hash ("artifact_sha256"), the members by the registry's names in
# "architecture", optionally the networks adapted to a run's rows ("adapted": their own weights file).
# Formats before /8 were written by development builds before 0.1.0 and are refused with a
# message to retrain; a member added to the registry needs no new format (a manifest that lacks
# its entry has no such member).
FORMAT = "lakefill-model/8"
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
    digest: str = ""  # sha256 of the manifest (``artifact_digest``): the artifact's identity

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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Blob:
    def __init__(self, folder: "_Files", name: str):
        self.folder, self.name = folder, name

    def exists(self) -> bool:
        return self.name in self.folder.files

    def read_bytes(self) -> bytes:
        return self.folder.files[self.name]

    def __str__(self) -> str:
        return f"{self.folder.label}/{self.name}"


class _Files:
    """A model folder's files held as bytes (a Spark broadcast's), read like a folder."""

    def __init__(self, files: Mapping[str, bytes], label: str = "the model's files"):
        self.files, self.label = dict(files), label

    def __truediv__(self, name: str) -> _Blob:
        return _Blob(self, name)

    def __str__(self) -> str:
        return self.label


def model_folder(where):
    """What the artifact reads and writes: a local folder (``str``, ``Path``, ``file://``), a
    ``lakefill.transforms.storage.Location`` (any object with ``/``, ``read_bytes``,
    ``write_bytes`` and ``exists``: the files are read and written on its store directly), or a
    mapping of file names to bytes (read only)."""
    if isinstance(where, Mapping):
        return _Files(where)
    if isinstance(where, (str, os.PathLike)):
        text = os.fspath(where)
        if "://" in text and not text.startswith("file://"):
            raise ModelError(f"{text}: a model on an object store is read through its Location "
                             "(lakefill.transforms.storage.Location, with its storage options)")
        return Path(text.removeprefix("file://"))
    return where


def unsaved_artifact(fitted, schema: TableSchema, config: AEConfig) -> ModelArtifact:
    """A just-fitted model (``lakefill.models.training.FittedModel``) as an artifact, before it is
    saved: what ``Imputer`` takes."""
    return ModelArtifact(fitted.model, fitted.codec, schema, None, config, {}, "", float(fitted.result.error_reference))


def save_artifact(out_dir, *, model: Ensemble | MaskedAutoencoder, codec: TableCodec, schema: TableSchema,
                  policy: dict | None, config: AEConfig, metrics: dict, error_reference: float,
                  adapted: Ensemble | None = None, adaptation: dict | None = None, profile: dict | None = None,
                  training_confidence: dict | None = None):
    """Write the model (a single network is saved as an ensemble of one) with the config it was
    trained with into ``out_dir`` (``model_folder``: local or a ``Location`` on an object store,
    written there directly; the manifest last, so a folder with a manifest is complete);
    ``adapted``: the same model with its networks adapted to a run's rows (saved as their own
    weights file, ``adaptation`` its report). Returns the folder."""
    model = model if isinstance(model, Ensemble) else Ensemble([model])
    if any(size not in config.sizes for size in model.sizes):
        raise ModelError(f"the model's network sizes {model.sizes} (hidden, depth, code) are not among the config's "
                         f"{config.sizes}: save the config the model was trained with")
    squash = _squash(model)
    if squash != config.squash:
        raise ModelError(f"the model's networks squash their inputs at {squash}, the config says "
                         f"{config.squash}: save the config the model was trained with")
    out_dir = model_folder(out_dir)
    if isinstance(out_dir, _Files):
        raise ModelError("a model is saved to a folder or a Location, not to a mapping of bytes")
    if isinstance(out_dir, Path):
        out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    (out_dir / WEIGHTS).write_bytes(weights)
    manifest = {
        "format": FORMAT,
        "weights": WEIGHTS,
        "weights_sha256": _sha256(weights),
        "schema": schema.model_dump(mode="json"),
        "codec": codec.state(),
        "null_policy": policy,
        "architecture": {"n_inputs": model.n_inputs, "col_slices": [list(s) for s in model.col_slices],
                         "n_num": model.n_num, "cat_sizes": model.cat_sizes, "sizes": [list(z) for z in model.sizes],
                         "squash": squash, **_member_entries(model)},
        "config": config.to_dict(),
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
        data = save_tensors({k: v.detach().cpu().contiguous() for k, v in state.items()})
        (out_dir / ADAPTED_WEIGHTS).write_bytes(data)
        manifest["adapted"] = {"weights": ADAPTED_WEIGHTS, "weights_sha256": _sha256(data), "report": adaptation or {}}
    elif (out_dir / ADAPTED_WEIGHTS).exists():  # a folder saved over: no stale adapted networks
        stale = out_dir / ADAPTED_WEIGHTS
        stale.unlink() if isinstance(stale, Path) else stale.remove()
    manifest["artifact_sha256"] = _manifest_digest(manifest)
    (out_dir / MANIFEST).write_bytes(json.dumps(manifest, indent=2, sort_keys=False).encode())
    return out_dir


_ARCH_KEYS = {"n_inputs", "col_slices", "n_num", "cat_sizes", "sizes", "squash"}


def _member_entries(model: Ensemble) -> dict:
    """The manifest's architecture entry of every registered member (absent ones too: None, 0, false)."""
    out = {}
    for member in registry.mixtures():
        out[member.name] = member.architecture(next((m for m in model.members if member.owns(m)), None))
    for blend in registry.blends():
        out[blend.name] = blend.architecture(getattr(model, blend.name, None))
    return out


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


def artifact_format(model_dir) -> str | None:
    """The format a model folder's manifest declares; None without a readable manifest."""
    try:
        return json.loads((model_folder(model_dir) / MANIFEST).read_bytes().decode("utf-8")).get("format")
    except (OSError, ValueError, AttributeError, ModelError):
        return None


def artifact_digest(model_dir) -> str:
    """The sha256 of a model folder's manifest (which holds its weights' hashes): the artifact's
    identity, what a worker's model cache is keyed by (``lakefill.transforms.models``)."""
    return _sha256((model_folder(model_dir) / MANIFEST).read_bytes())


def load_artifact(model_dir, *, schema: TableSchema | None = None) -> ModelArtifact:
    """The model in ``model_dir`` (``model_folder``: a local folder, a ``Location``, or the files
    as bytes), checked by its hashes; with ``schema``, refused if its columns and types differ."""
    folder = model_folder(model_dir)
    label = str(model_dir) if not isinstance(folder, _Files) else folder.label
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise ModelError(f"{label}: no {MANIFEST}; is this a lakefill model directory (made by `lakefill train`)?")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{manifest_path}: not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelError(f"{manifest_path}: format {found!r} is not one this version reads ({FORMAT}; older formats "
                         "came from development builds before lakefill 0.1.0); retrain it with this version's "
                         "`lakefill train`")
    name = manifest.get("weights", WEIGHTS)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise ModelError(f"{manifest_path}: weights {name!r} must be a file name inside the model folder; refusing "
                         "a path that leads elsewhere")
    weights = folder / name
    if not weights.exists():
        raise ModelError(f"{label}: weights file {name} is missing")
    data = weights.read_bytes()
    digest = _sha256(data)
    if digest != manifest.get("weights_sha256"):
        raise ModelError(f"{weights}: sha256 {digest} does not match the manifest's {manifest.get('weights_sha256')}; "
                         "the weights were changed after training. Refusing to load.")
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
        config = AEConfig.from_dict({"squash": squash, "schedule": "onecycle", **manifest["config"]})
        layout = dict(n_inputs=arch["n_inputs"], col_slices=[tuple(s) for s in arch["col_slices"]], n_num=arch["n_num"],
                      cat_sizes=arch["cat_sizes"])
        members = [MaskedAutoencoder(**layout, hidden=hidden, depth=depth, code=code, squash=squash)
                   for hidden, depth, code in arch["sizes"]]
        # the mixture's members after the networks, in the registry's order (a member the manifest
        # does not name is not in the model)
        members += [m for m in (member.build(arch.get(member.name), layout) for member in registry.mixtures())
                    if m is not None]
        blends = {b.name: b.build(arch.get(b.name), layout) for b in registry.blends()}
        unknown = sorted(set(arch) - _ARCH_KEYS - set(registry.member_names()))
        if unknown:
            raise ModelError(f"{label}: the model has member(s) {unknown} that no registered member builds "
                             f"(registered: {registry.member_names()}); register them before loading it")
        model = Ensemble(members, **blends)
        state = load_tensors(data)
        # the members' parameters and the mixture weights must be finite (the trees' thresholds hold
        # inf by design and are checked by TreeFill.check; donor rows hold NaN for their missing cells)
        bad = sorted(k for k, t in state.items() if k.startswith(("members.", "weights")) and t.is_floating_point()
                     and not bool(torch.isfinite(t).all()))
        if bad:
            raise ModelError(f"{weights}: non-finite values (NaN or inf) in {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                             "refusing a model that would impute garbage")
        model.load_state_dict(state)
        for b in registry.blends():
            if blends[b.name] is not None:
                b.check(blends[b.name])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelError(f"{label}: the manifest and weights do not make a valid model: {err}") from err
    model.eval()
    adapted = _load_adapted(folder, label, manifest, model) if manifest.get("adapted") else None
    artifact = ModelArtifact(model, codec, trained_schema, manifest.get("null_policy"), config,
                             manifest.get("metrics", {}), digest, float(manifest.get("error_reference", 1.0)),
                             adapted, (manifest.get("adapted") or {}).get("report"), manifest.get("training_profile"),
                             manifest.get("training_confidence"), _sha256(manifest_bytes))
    if schema is not None:
        artifact.check_schema(schema)
    return artifact


def _load_adapted(folder, label: str, manifest: dict, model: Ensemble) -> Ensemble:
    """The adapted networks (``manifest["adapted"]``), checked by their hash, on ``model``'s other members."""
    from lakefill.models.adapt import with_networks

    entry = manifest["adapted"]
    path = folder / ADAPTED_WEIGHTS
    if entry.get("weights") != ADAPTED_WEIGHTS or not path.exists():
        raise ModelError(f"{label}: the manifest names adapted weights, and {ADAPTED_WEIGHTS} is missing")
    data = path.read_bytes()
    digest = _sha256(data)
    if digest != entry.get("weights_sha256"):
        raise ModelError(f"{path}: sha256 {digest} does not match the manifest's {entry.get('weights_sha256')}; "
                         "the adapted weights were changed after they were written. Refusing to load.")
    state = load_tensors(data)
    if set(state) != _network_state(model):
        raise ModelError(f"{path}: the adapted weights do not match the model's networks")
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        raise ModelError(f"{path}: non-finite values in the adapted weights; refusing them")
    adapted = with_networks(model)
    adapted.load_state_dict({**adapted.state_dict(), **state})
    return adapted.eval()
