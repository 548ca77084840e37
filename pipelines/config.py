"""The job configuration (YAML), validated on load, before any work starts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakefill.errors import ConfigError
from lakefill.models.config import TRAIN_ROWS
from lakefill.schema import read_yaml_mapping

__all__ = ["JobConfig", "CsvConfig", "TrainingConfig", "load_config", "DEFAULT_CONFIG", "config_from_flags"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


class CsvConfig(BaseModel):
    """How the input is read when it is a delimited text file (``lakefill.transforms.io.CsvOptions``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delimiter: str | None = Field(default=None, description="one character; sniffed from the file when absent")
    quotechar: str = '"'
    encoding: str = "utf-8-sig"

    @model_validator(mode="after")
    def _valid(self) -> "CsvConfig":
        self.options()  # CsvOptions checks the characters and the encoding
        return self

    def options(self):
        from lakefill.transforms.io import CsvOptions

        return CsvOptions(delimiter=self.delimiter, quotechar=self.quotechar, encoding=self.encoding)


class TrainingConfig(BaseModel):
    """How a model for this job is trained (``train_if_missing``, ``--task train``, ``lakefill
    train --job``, ``retrain``)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_rows: int = Field(default=TRAIN_ROWS, ge=1, description="the training sample: at most this many rows, drawn "
                            "uniformly from the whole input by a seeded hash of their row ids (the same rows on every "
                            "engine and split); the input is read once and never held whole")
    seed: int = Field(default=0, description="the sample's and the model's seed (same input and seed, same model)")
    time_budget: float = Field(default=0.0, ge=0.0, allow_inf_nan=False,
                               description="seconds the fit may take (0: no limit; a budget that binds makes the "
                               "model depend on the machine's speed)")
    without: list[str] = Field(default_factory=list, description="registered members left out (gaussian, trees, "
                               "donors, or a member of your own)")
    trainer: Literal["local", "torch_distributor"] = Field(
        default="local", description="local: the networks train in the training process; torch_distributor: "
        "data-parallel on Spark's executors (TorchDistributor, torch DDP with gloo), the Spark engine only")
    processes: int = Field(default=2, ge=1, description="torch_distributor: the number of training processes "
                           "(one Spark barrier task each; at most the executors' task slots)")
    epochs: int | None = Field(default=None, ge=1, description="at most this many epochs, honoured as given (no "
                               "floor of optimiser steps raises it); default: the model's own schedule")
    hidden: int | None = Field(default=None, ge=1, description="one network of this width (with depth and code) "
                               "instead of the default ensemble")
    depth: int | None = Field(default=None, ge=1, description="hidden layers on each side of that one network")
    code: int | None = Field(default=None, ge=1, description="bottleneck width of that one network")
    squash: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="opt-in for heavy-tailed numeric "
                          "columns: a robust z beyond +-C read as C + log(1 + |z| - C) (0: off)")

    def ae_config(self, time_budget: float = 0.0):
        """The model's training settings (``lakefill.models.config.AEConfig``); ``time_budget`` when
        this section gives none. A size given trains that one network; else the default ensemble."""
        from lakefill.models.config import AEConfig

        sizes = {k: v for k, v in (("hidden", self.hidden), ("depth", self.depth), ("code", self.code)) if v is not None}
        epochs = {} if self.epochs is None else {"epochs": self.epochs, "min_steps": 0}
        return AEConfig(**epochs, random_state=self.seed, time_budget=self.time_budget or time_budget,
                        without=tuple(self.without), squash=self.squash, **sizes, **({"extra_sizes": ()} if sizes else {}))

    @field_validator("without")
    @classmethod
    def _members(cls, v: list[str]) -> list[str]:
        from lakefill.models.members import member_names

        unknown = sorted(set(v) - set(member_names()))
        if unknown:
            raise ValueError(f"unknown member(s) {unknown}; the members are {member_names()}")
        return v


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    schema_path: str | None = Field(default=None, alias="schema")
    model: str
    output: str = Field(description="folder of the run: lake table, quarantine table, report")
    run_id: str | None = None
    confidence_threshold: float = Field(default=0.15, ge=0.0, le=1.0,
                                        description="rows under it are refined by reverse training")
    impute: bool = Field(default=True, description="false: detect, validate and write only; nulls stay null, no "
                         "model is read or trained (a validation run)")
    refine: bool = True
    adapt: bool = Field(default=False, description="fine-tune a copy of the model's networks on the run's first "
                        "sample_rows records before the run; if that predicts better on rows kept aside, write it as a "
                        "new model version <model>.adapted-<run_id> and refine the low-confidence rows through it")
    adapt_rows: Literal["low_confidence", "all"] = Field(
        default="low_confidence", description="the rows a model's adapted networks fill (adapt, or a model version "
        "written by it): the low-confidence rows (the side stage; every other row keeps the trained model's fill) or all")
    on_drift: Literal["adapt_all", "route", "none"] = Field(
        default="adapt_all", description="when the run's first sample_rows records drifted from the model's training "
        "rows (a column's distance over its drift_threshold): adapt the networks to the run (as adapt: true, with its "
        "held-out check) and fill every row through them (adapt_all), or only the low-confidence rows of the side stage "
        "(route), or do nothing (none); a run that did not drift is not touched")
    max_quarantine_share: float = Field(default=0.1, ge=0.0, le=1.0)
    mode: Literal["error", "append", "overwrite", "overwrite_partitions"] = "error"
    partition_by: list[str] = Field(default_factory=list)
    incremental: bool = Field(default=False, description="an input folder or glob: take only the files that no "
                              "committed run of this output took (recorded with the commit)")
    changed_files: Literal["error", "reprocess", "skip"] = Field(
        default="error", description="incremental: a file taken before whose size or modification time changed: "
        "refuse the run (error), take it again (reprocess) or leave it (skip); the report lists it either way")
    files: list[str] = Field(default_factory=list, description="the input's files this run reads (set by "
                             "incremental planning; empty: every file of input)")
    retrain: Literal["never", "on_drift", "every_n_runs"] = Field(
        default="never", description="after a committed run, train a new model version beside the old ones on the "
        "run's rows: when its drift check flagged a column (on_drift) or after retrain_every runs with the current "
        "version (every_n_runs); later runs use the newest version that passed its check")
    retrain_every: int = Field(default=0, ge=0, description="every_n_runs: runs with a version before the next")
    compact_every: int = Field(default=0, ge=0, description="after every N committed runs, compact the table and "
                               "the quarantine (deltalake's optimize; 0: never; `lakefill maintain` does it by hand)")
    schema_evolution: Literal["none", "add_columns"] = Field(
        default="none", description="a run with a column the table lacks: refused before any work (none), or the "
        "column is added to the table, nullable, earlier rows reading it as null (add_columns)")
    missing_columns: Literal["error", "null"] = Field(
        default="error", description="a table column this run's input lacks: refused before any work (error), or "
        "its cells are null in this run's rows (null; only columns that are nullable)")
    sample_rows: int = Field(default=200_000, ge=1, description="rows the null policy is fitted on")
    batch_size: int = Field(default=200_000, ge=1, description="rows per Arrow batch through the stage")
    inference_batches: int = Field(default=2, ge=1, description="batches RunInference groups into one model call (Beam)")
    share_model: bool = Field(default=False, description="Beam: one model per machine, served to every SDK process "
                              "(MultiProcessShared); each batch then crosses a process boundary. Off: one per process")
    train_if_missing: bool = False
    train_time_budget: float = Field(default=0.0, ge=0.0, allow_inf_nan=False,
                                     description="seconds a model trained for this job may take (0: no limit; "
                                     "training: {time_budget: ...} says the same)")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="how a model for this job is "
                                     "trained: train_rows, seed, time_budget, without")
    device: Literal["auto", "cpu", "gpu"] = Field(default="auto", description="where the model runs: the GPU when torch sees one (auto)")
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="the fill's forward pass in float32, or in "
                                               "bfloat16 (torch.autocast: faster, fills within ~1e-4 RMSE on letter)")
    csv: CsvConfig = Field(default_factory=CsvConfig, description="delimiter, quotechar, encoding of a CSV input")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="object-store endpoints, regions and flags in deltalake's key names "
        "(AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP, ...); credentials are best left to the environment")

    @property
    def reads(self) -> "str | list[str]":
        """What the engines read: the run's files where planning chose them, else the input."""
        return list(self.files) or self.input

    def location(self, where: str):
        """A path of the job (input, schema, model, output) as a storage ``Location``."""
        from lakefill.transforms.storage import Location

        return Location(where, self.storage_options)

    def ae_config(self):
        """The model's training config for this job (``training:``; ``train_time_budget`` as its time budget)."""
        return self.training.ae_config(self.train_time_budget)

    @property
    def out(self):
        """The run's output folder: table/, quarantine/, reports/RUN_ID/."""
        return self.location(self.output)

    @model_validator(mode="after")
    def _retrain_every(self):
        if self.retrain == "every_n_runs" and self.retrain_every < 1:
            raise ValueError("retrain: every_n_runs needs retrain_every >= 1 (the runs with a version before the next)")
        return self

    @field_validator("storage_options", mode="before")
    @classmethod
    def _storage_options(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("storage_options must be a mapping of option name to value")
        return {str(k): ("true" if x is True else "false" if x is False else str(x)) for k, x in v.items()}

    @property
    def csv_options(self):
        return self.csv.options()

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}", v):
            raise ValueError("run_id must be 1-128 characters of letters, digits and _ . : + -, starting with a letter or digit")
        return v


PATH_FIELDS = ("input", "schema", "model", "output")


def _resolved(p, base: "Path | str"):
    if not isinstance(p, str) or "://" in p or Path(p).is_absolute():
        return p
    if isinstance(base, str):
        return base.rstrip("/") + "/" + p.removeprefix("./")
    return str((base / p).resolve())


def read_job(path: str | Path) -> dict:
    """A job config file's fields, not yet validated, its relative paths made relative to it.
    The file may be local or on an object store (``gs://b/jobs/customers.yaml``, read with the
    credentials of the environment)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        from lakefill.transforms.storage import Location

        loc = Location(text)
        if not loc.is_file():
            raise ConfigError(f"job config {text} does not exist")
        raw = read_yaml_mapping(loc, error=ConfigError, what="job config")
        base: "Path | str" = text.rsplit("/", 1)[0]
    else:
        local = Path(text.removeprefix("file://"))
        raw, base = read_yaml_mapping(local, error=ConfigError, what="job config"), local.resolve().parent
    return {k: (_resolved(v, base) if k in PATH_FIELDS else v) for k, v in raw.items()}


def job_config(path: "str | Path | None" = None, *, source: str = "the job's options", **fields) -> JobConfig:
    """The one route to a ``JobConfig``: a job config file's fields (``read_job``; ``path`` may be
    None), the ``fields`` given (as flags, or by a caller; field names as in the file, None left
    out) over them, validated together. One error format: the file (or ``source``) and each bad
    field on its own line."""
    given = {k: v for k, v in fields.items() if v is not None}
    raw = {**read_job(path), **given} if path else given
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise _invalid(path or source, err) from err


def training_config(fields: dict, *, source: str = "the command's flags") -> TrainingConfig:
    """A job's ``training:`` section from its fields (a command's flags over a job's section), with
    ``job_config``'s error format."""
    try:
        return TrainingConfig.model_validate(fields)
    except ValidationError as err:
        raise _invalid(source, err, prefix=("training",)) from err


def _invalid(source, err: ValidationError, prefix: tuple = ()) -> ConfigError:
    lines = [f"  - {'.'.join(str(p) for p in (*prefix, *e['loc'])) or '(the config)'}: {e['msg']}" for e in err.errors()]
    return ConfigError(f"{source}: invalid job config:\n" + "\n".join(lines))


def load_config(path: str | Path, **overrides) -> JobConfig:
    """A job config from a YAML file (``read_job``), validated; ``overrides`` (field names as in
    the file) replace its fields before the check, so a file may leave out what they give."""
    return job_config(path, **overrides)


DEFAULT_CONFIG = EXAMPLES / "demo.yaml"


def config_from_flags(argv: list[str] | None) -> tuple[JobConfig, list[str]]:
    """``--job JOB.yaml`` and/or one flag per job-config field (``--input=...``, ``--run_id=...``,
    ``--partition_by=a,b``), as a Flex Template passes its parameters; the rest are Beam options."""
    import argparse

    ap = argparse.ArgumentParser(prog="lakefill job", allow_abbrev=False)
    ap.add_argument("--job")
    fields = {(f.alias or name): f for name, f in JobConfig.model_fields.items()}
    for key in fields:
        ap.add_argument(f"--{key}")
    args, beam_args = ap.parse_known_args(argv)
    given = {k: v for k, v in vars(args).items() if k != "job" and v not in (None, "")}
    if "partition_by" in given:
        given["partition_by"] = [c for c in given["partition_by"].split(",") if c]
    for key, example in (("csv", '{"delimiter": ";"}'), ("storage_options", '{"AWS_REGION": "eu-west-1"}'),
                         ("training", '{"train_rows": 200000}')):
        if key in given:  # a JSON object
            try:
                given[key] = json.loads(given[key])
            except ValueError as err:
                raise ConfigError(f"--{key} must be a JSON object such as {example}: {err}") from err
    # the flags override the file's fields (the file may leave out what they give)
    return job_config(args.job, source="the job's flags", **given), beam_args
