"""Run configuration: one validated, plain-data description of a training run.

The defaults are the seed's settings (snnTorch tutorial 5). Every problem with a config is a
`ConfigError` whose message names the key and what is allowed, so the CLI can print one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SURROGATE_DEFAULT_SLOPE = {"atan": 2.0, "fast_sigmoid": 25.0}


class ConfigError(ValueError):
    """An invalid config, study file or command-line setting (one line, names the key)."""


class RunConfig(BaseModel):
    """Everything that decides what one training run computes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.95, gt=0.0, le=1.0, description="membrane decay per step, in (0, 1]")
    num_steps: int = Field(25, ge=1, le=10_000, description="time steps per sample")
    hidden: int = Field(1000, ge=1, description="hidden LIF neurons")
    threshold: float = Field(1.0, gt=0.0, description="firing threshold")
    surrogate: Literal["atan", "fast_sigmoid"] = "atan"
    slope: float | None = Field(
        None, gt=0.0, description="surrogate sharpness: atan's alpha or fast_sigmoid's slope"
    )
    decoding: Literal["rate", "latency"] = "rate"
    lr: float = Field(5e-4, gt=0.0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    backend: Literal["fused", "reference"] = "fused"
    eval_every: int = Field(25, ge=1, description="iterations between test-batch losses")
    train_subset: int | None = Field(None, ge=1, description="train on this many images")
    test_subset: int | None = Field(None, ge=1, description="test on this many images")
    subset_sampling: Literal["first", "stratified"] = "first"
    save_model: bool = Field(False, description="keep the trained weights (MLflow artifact)")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in {"auto", "cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @property
    def surrogate_slope(self) -> float:
        """The slope in force: the configured one, else the surrogate's own default."""
        return self.slope if self.slope is not None else SURROGATE_DEFAULT_SLOPE[self.surrogate]


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(RunConfig.model_fields)
        return f"{source}: unknown key '{key}' (allowed: {allowed})"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: invalid value for '{key}': {message} (got {first.get('input')!r})"


def make_run_config(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a mapping of run settings; raise ConfigError naming the offending key."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn `key=value` strings into a mapping; values are parsed as YAML scalars."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                f"--set: cannot parse the value of '{key.strip()}': {raw!r}"
            ) from None
    return values


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def load_run_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a run config from a YAML file's run settings plus `key=value` overrides.

    A study file keeps its run settings under `base`; a plain run file holds them at the top.
    """
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = read_yaml(path)
        values = dict(data.get("base") or {}) if "base" in data else data
        source = str(path)
    set_values = parse_overrides(overrides or [])
    values.update(set_values)
    return make_run_config(values, source if not set_values else f"{source} with --set")


# ---------------------------------------------------------------------------------------------
# Study files: what varies, how Optuna searches it, how many seeds, what to optimise.

SAMPLERS = ("grid", "tpe", "random", "qmc")
PRUNERS = ("none", "median", "hyperband")
OBJECTIVE_METRICS = ("test_accuracy", "rate_accuracy", "latency_accuracy", "test_loss")
INT_KEYS = {name for name, f in RunConfig.model_fields.items() if f.annotation in (int, "int")}
FLOAT_KEYS = {
    name for name, f in RunConfig.model_fields.items() if f.annotation in (float, float | None)
}


class Range(BaseModel):
    """A numeric range for searches: low/high, optionally log-scaled or stepped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class Choices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Any] = Field(min_length=1)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Literal["test_accuracy", "rate_accuracy", "latency_accuracy", "test_loss"] = (
        "test_accuracy"
    )
    direction: Literal["maximize", "minimize"] = "maximize"


class Pruner(BaseModel):
    """`interval`: report the objective every this many iterations (a multiple of eval_every)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["none", "median", "hyperband"] = "none"
    interval: int = Field(50, ge=1)
    warmup_steps: int = Field(100, ge=0)
    startup_trials: int = Field(3, ge=0)


class StudyConfig(BaseModel):
    """A study file, validated: base run settings, the space, the sampler and the seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, list[Any] | Range | Choices] = Field(min_length=1)
    sampler: Literal["grid", "tpe", "random", "qmc"] = "grid"
    sampler_seed: int | None = Field(None, ge=0, description="seed of a search's sampler")
    n_trials: int | None = Field(None, ge=1)
    seeds: int | list[int] = 1
    objective: Objective = Objective()
    pruner: Pruner = Pruner()

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def base_config(self) -> RunConfig:
        return make_run_config(self.base)

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a grid study, in file order (the last key varies fastest)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.space.items():
            options = values.choices if isinstance(values, Choices) else values
            points = [{**point, key: value} for point in points for value in options]
        return points

    def run_config(self, params: dict[str, Any], seed: int) -> RunConfig:
        """The run config of one configuration and seed: base, then params, then the seed."""
        return make_run_config({**self.base, **params, "seed": seed})


def _check_study(study: StudyConfig, source: str) -> StudyConfig:
    """Check what the schema cannot, and give grid values their run-setting types (YAML
    reads `1e-4` as a string)."""
    base = make_run_config(study.base, f"{source}: base")
    space: dict[str, Any] = {}
    if isinstance(study.seeds, int) and study.seeds < 1:
        raise ConfigError(f"{source}: invalid value for 'seeds': must be >= 1 or a list of seeds")
    if isinstance(study.seeds, list) and (
        not study.seeds or len(set(study.seeds)) != len(study.seeds)
    ):
        raise ConfigError(
            f"{source}: invalid value for 'seeds': a non-empty list of distinct seeds"
        )
    for key, values in study.space.items():
        where = f"{source}: space.{key}"
        if key not in RunConfig.model_fields or key == "seed":
            allowed = ", ".join(k for k in RunConfig.model_fields if k != "seed")
            raise ConfigError(f"{where}: not a run setting that can vary (allowed: {allowed})")
        if isinstance(values, list):
            if not values:
                raise ConfigError(f"{where}: empty list of values")
            options = values
        elif isinstance(values, Choices):
            options = values.choices
        else:
            if study.sampler == "grid":
                raise ConfigError(f"{where}: a grid needs a list of values, not a range")
            if values.low > values.high:
                raise ConfigError(f"{where}: low {values.low} is greater than high {values.high}")
            if values.log and values.low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0")
            if key not in INT_KEYS | FLOAT_KEYS:
                raise ConfigError(f"{where}: not numeric; use a list or choices")
            options = [values.low, values.high]
            if key in INT_KEYS:
                options = [int(values.low), int(values.high)]
        typed = [getattr(make_run_config({**study.base, key: v}, where), key) for v in options]
        if isinstance(values, list):
            space[key] = typed
        elif isinstance(values, Choices):
            space[key] = Choices(choices=typed)
        else:
            space[key] = values
    if study.sampler != "grid" and study.n_trials is None:
        raise ConfigError(f"{source}: 'n_trials' is required for sampler '{study.sampler}'")
    if study.pruner.type != "none" and study.pruner.interval % base.eval_every:
        raise ConfigError(
            f"{source}: pruner.interval {study.pruner.interval} must be a multiple of "
            f"eval_every ({base.eval_every})"
        )
    return study.model_copy(update={"space": space})


def _format_study_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    # pydantic reports a union member's name in the location; drop it for the reader.
    loc = [part for part in loc if part not in {"list[any]", "Range", "Choices"}]
    key = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: invalid value for '{key}': {message}"


def load_study(name_or_path: str, studies_dir: Path = Path("studies")) -> StudyConfig:
    """Load and validate a study by name (studies/NAME.yaml) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = studies_dir / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in studies_dir.glob("*.yaml"))
        raise ConfigError(f"no study '{name_or_path}' (known: {', '.join(known) or 'none'})")
    data = read_yaml(path)
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_study_error(err, str(path))) from None
    return _check_study(study, str(path))
