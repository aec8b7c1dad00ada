"""Run configuration: one validated, plain-data description of a training run.

The defaults are the tutorial's settings (snnTorch tutorial 5). Every problem with a config is a
`ConfigError` whose message names the key and what is allowed, so the CLI can print one line.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.data.datasets import DATASETS, DEFAULT_DATASET
from harness.errors import ConfigError
from harness.network import neurons
from harness.network.architectures import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    FUSED_ONLY,
    USER_MODEL_PATTERN,
    USER_MODEL_SETTINGS,
)
from harness.network.backends import BACKENDS, DEFAULT_BACKEND
from harness.network.decodings import DECODINGS, DEFAULT_DECODING
from harness.network.encodings import DEFAULT_ENCODING, ENCODINGS
from harness.network.neurons import DEFAULT_NEURON, EXCLUSIVE_PARAMS, NEURONS
from harness.network.surrogates import DEFAULT_SURROGATE, SURROGATES
from harness.study.samplers import PRUNERS, SAMPLERS
from harness.training.energy import DEFAULT_ENERGY_MODEL, ENERGY_MODELS
from harness.training.metrics import OBJECTIVE_METRICS

MAX_SEED = 2**32 - 1  # the range every seeded generator here (torch, NumPy) accepts
MAX_HIDDEN = 100_000  # 1e5 hidden neurons are already ~300 MiB of weights and gradients
# The names of data sets, neuron models, surrogates, encodings, decodings and backends (and
# their parameters) come from their tables (harness/data/datasets.py, harness/network/), all
# without torch: config.py must not import torch, so bad input is refused in a fraction of a
# second.


def _in_table(value: str, table: dict[str, Any], what: str) -> str:
    """`value` if it names an entry of `table`; else the error that lists the table's names."""
    if value not in table:
        raise ValueError(f"unknown {what} (allowed: {', '.join(table)})")
    return value


def _is_numeric(annotation: Any) -> bool:
    """int, float, an optional one (`int | None`) or a list of them, as the schema declares
    the field (constraints aside)."""
    if get_origin(annotation) in (Annotated, list):
        return _is_numeric(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return bool(members) and all(_is_numeric(a) for a in members)
    return annotation in (int, float)


class RunConfig(BaseModel):
    """Everything that decides what one training run computes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    beta: float = Field(0.95, gt=0.0, le=1.0, description="membrane decay per step, in (0, 1]")
    num_steps: int = Field(25, ge=1, le=10_000, description="time steps per sample")
    architecture: str = Field(
        DEFAULT_ARCHITECTURE, description="the network (harness/network/architectures.py)"
    )
    hidden: int | list[int] = Field(
        1000,
        description="mlp's hidden widths: 1000 (or [1000]) is tutorial 5, [500, 250] two layers",
    )
    model: str | None = Field(
        None,
        description='your own network, "module:function" (importable from the study file\'s '
        "folder or PYTHONPATH), in place of architecture and hidden",
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict,
        description="keywords for your model's factory; a study varies one as model_args.NAME",
    )
    threshold: float = Field(1.0, gt=0.0, description="firing threshold")
    neuron: str = Field(
        DEFAULT_NEURON, description="neuron model of both layers (harness/network/neurons.py)"
    )
    alpha: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="synaptic current decay per step, in (0, 1]; synaptic neurons only "
        "(unset: their default, 0.9)",
    )
    surrogate: str = Field(
        DEFAULT_SURROGATE, description="surrogate gradient (harness/network/surrogates.py)"
    )
    slope: float | None = Field(
        None, gt=0.0, description="surrogate sharpness: atan's alpha or fast_sigmoid's slope"
    )
    encoding: str = Field(
        DEFAULT_ENCODING, description="how images become input (harness/network/encodings.py)"
    )
    decoding: str = Field(
        DEFAULT_DECODING, description="how output spikes become a loss and a class"
    )
    lr: float = Field(5e-4, gt=0.0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "auto"
    backend: str = Field(DEFAULT_BACKEND, description="how the network is computed")
    eval_every: int = Field(25, ge=1, description="iterations between test-batch losses")
    dataset: str = Field(DEFAULT_DATASET, description="the data set (harness/data/datasets.py)")
    train_subset: int | None = Field(None, ge=1, description="train on this many images")
    test_subset: int | None = Field(None, ge=1, description="test on this many images")
    subset_sampling: Literal["first", "stratified"] = "first"
    energy_model: str = Field(
        DEFAULT_ENERGY_MODEL,
        description="energy per operation behind energy_estimate_pj (harness/training/energy.py)",
    )
    save_model: bool = Field(
        False,
        description="keep the trained weights: a study's runs log model.pt to MLflow; "
        "`harness train` writes them to outputs/models/ (or --save-model PATH)",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1: `hidden: [true]` would train 1 neuron.
        flags = value if isinstance(value, list) else [value]
        numeric = _is_numeric(cls.model_fields[info.field_name].annotation)
        if numeric and any(isinstance(flag, bool) for flag in flags):
            raise ValueError("must be a number, not true/false")
        return value

    @model_validator(mode="after")
    def _batch_fits_the_train_images(self) -> RunConfig:
        spec = DATASETS[self.dataset]
        images = min(self.train_subset or spec.train_size, spec.train_size)
        if self.batch_size > images:
            what = (
                f"train_subset {self.train_subset}"
                if images == self.train_subset
                else f"{spec.title}'s {spec.train_size} training images"
            )
            raise ValueError(
                f"batch_size {self.batch_size} is larger than {what} (allowed: 1..{images})"
            )
        return self

    @field_validator("hidden")
    @classmethod
    def _one_width_is_an_int(cls, value: int | list[int]) -> int | list[int]:
        # [1000] is 1000: one hidden layer is logged and compared as tutorial 5's setting
        widths = value if isinstance(value, list) else [value]
        if not widths or not all(1 <= width <= MAX_HIDDEN for width in widths):
            raise ValueError(
                f"hidden widths are 1..{MAX_HIDDEN}, one (1000) or a list ([500, 250])"
            )
        return widths[0] if len(widths) == 1 else widths

    @field_validator("model")
    @classmethod
    def _module_and_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(USER_MODEL_PATTERN, value):
            raise ValueError('must be "module:function", as my_model:build')
        return value

    @field_validator("model_args")
    @classmethod
    def _plain_keywords(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, arg in value.items():
            if not (isinstance(key, str) and key.isidentifier()):
                raise ValueError(f"{key!r} is not a keyword name")
            if key in USER_MODEL_SETTINGS:
                raise ValueError(
                    f"'{key}' is a setting the harness passes itself "
                    f"({', '.join(USER_MODEL_SETTINGS)}); set it as a run setting"
                )
            if not (arg is None or isinstance(arg, str | int | float | bool)):
                raise ValueError(f"'{key}' must be a number, text, true/false or null")
        return value

    @model_validator(mode="before")
    @classmethod
    def _own_model_trains_on_reference(cls, values: Any) -> Any:
        # a user model has no fused kernel: left unset, its backend is reference
        if isinstance(values, dict) and values.get("model") and "backend" not in values:
            return {**values, "backend": "reference"}
        return values

    @model_validator(mode="after")
    def _own_model_or_built_in(self) -> RunConfig:
        if self.model is None:
            if self.model_args:
                raise ValueError("model_args are the keywords of a model's factory: set model")
            return self
        built_in = ("architecture", "hidden")
        given = [k for k in built_in if getattr(self, k) != type(self).model_fields[k].default]
        if given:
            raise ValueError(
                f"{' and '.join(given)} {'describe' if len(given) > 1 else 'describes'} the "
                f"built-in networks; with model "
                f"'{self.model}', give your network's settings in model_args"
            )
        if self.backend == "fused":
            raise ValueError(
                f"backend fused does not run model '{self.model}': it runs {FUSED_ONLY}"
            )
        return self

    @model_validator(mode="after")
    def _fused_runs_tutorial_5s_shape(self) -> RunConfig:
        one_hidden = self.architecture == "mlp" and len(self.hidden_layers) == 1
        if self.model is None and self.backend == "fused" and not one_hidden:
            shape = (
                f"architecture {self.architecture}"
                if self.architecture != "mlp"
                else f"hidden {list(self.hidden_layers)}"
            )
            raise ValueError(f"backend fused does not run {shape}: it runs {FUSED_ONLY}")
        return self

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The hidden widths of an mlp, a tuple however `hidden` was written."""
        return tuple(self.hidden) if isinstance(self.hidden, list) else (self.hidden,)

    @model_validator(mode="before")
    @classmethod
    def _neuron_defaults(cls, values: Any) -> Any:
        # A parameter of the run's neuron model left unset takes the model's default here, so
        # the config (and the params MLflow logs) says what the run computes.
        neuron = values.get("neuron", DEFAULT_NEURON) if isinstance(values, dict) else None
        if not isinstance(neuron, str) or neuron not in NEURONS:
            return values
        unset = {k: v for k, v in NEURONS[neuron].defaults.items() if values.get(k) is None}
        return {**values, **unset}

    @model_validator(mode="after")
    def _parameters_of_the_neuron(self) -> RunConfig:
        values = {name: getattr(self, name) for name in EXCLUSIVE_PARAMS}
        complaint = neurons.misplaced_param(self.neuron, values)
        if complaint:
            raise ValueError(complaint)
        return self

    @field_validator(
        "dataset", "neuron", "surrogate", "encoding", "decoding", "backend", "energy_model",
        "architecture",
    )  # fmt: skip
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        return _in_table(value, *_NAMED[info.field_name])

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
        if self.slope is not None:
            return self.slope
        return SURROGATES[self.surrogate].default_slope

    @property
    def neuron_parameters(self) -> dict[str, float]:
        """The neuron model's parameters, by snnTorch's names: the keywords of its
        constructor and of its scan."""
        return {name: getattr(self, name) for name in NEURONS[self.neuron].params}


# Settings whose value is a name in a table: the table and what its entries are called.
_NAMED: dict[str, tuple[dict[str, Any], str]] = {
    "dataset": (DATASETS, "data set"),
    "neuron": (NEURONS, "neuron"),
    "surrogate": (SURROGATES, "surrogate"),
    "encoding": (ENCODINGS, "encoding"),
    "decoding": (DECODINGS, "decoding"),
    "energy_model": (ENERGY_MODELS, "energy model"),
    "architecture": (ARCHITECTURES, "architecture"),
    "backend": (BACKENDS, "backend"),
}


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(RunConfig.model_fields)
        return f"{source}: unknown key '{key}' (allowed: {allowed})"
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across keys (model_validator): its message names them
        return f"{source}: {message}"
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
            values[key.strip()] = yaml.load(raw, _UniqueKeyLoader) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                f"--set: cannot parse the value of '{key.strip()}': {raw!r}"
            ) from None
    return values


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"duplicate key {key!r} (line {line})")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the
    plain loader keeps the last one silently)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the safe loader refuses it itself
                    continue
                if duplicate:
                    raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors."""
    try:
        data = yaml.load(path.read_text(), _UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except _DuplicateKeyError as err:
        raise ConfigError(
            f"{path}: key {str(err.key)!r} appears twice in one mapping (again on line "
            f"{err.line}); give each key once"
        ) from None
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
    A model of your own (`model`) is imported from the file's folder, else the current one;
    `--set model_args.NAME=VALUE` sets one of its keywords.
    """
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = read_yaml(path)
        values = dict(data.get("base") or {}) if "base" in data else data
        source = str(path)
    set_values = parse_overrides(overrides or [])
    values = with_params(values, set_values)
    if values.get("model"):
        importable_from(path.parent if path is not None else Path.cwd())
    return make_run_config(values, source if not set_values else f"{source} with --set")


def importable_from(folder: Path) -> None:
    """Let a model of your own be imported from `folder` (a study file's). It goes last on
    sys.path: a file there never shadows a module the harness imports."""
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.append(entry)


# ---------------------------------------------------------------------------------------------
# Study files: what varies, how Optuna searches it, how many seeds, what to optimise.

# Seeds are the study's `seeds`; its data sets are loaded once onto one device for all runs.
FIXED_KEYS = ("seed", "device")
MUTABLE_STUDY_KEYS = ("description", "n_trials")  # may change in a study file between runs
MAX_SEEDS = 1000  # seeds per configuration
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"  # a plain folder name: never "." or ".."
INT_KEYS = {name for name, f in RunConfig.model_fields.items() if f.annotation in (int, "int")}
FLOAT_KEYS = {
    name for name, f in RunConfig.model_fields.items() if f.annotation in (float, float | None)
}


class Range(BaseModel):
    """A numeric range for searches: low/high, optionally log-scaled or stepped."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value


class Choices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Any] = Field(min_length=1)


class Objective(BaseModel):
    """A metric to optimise (a name of harness.training.metrics' table that may be an
    objective) and which way."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = "test_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {value!r} (allowed: {', '.join(OBJECTIVE_METRICS)})")
        return value


class Pruner(BaseModel):
    """`interval`: report the objective every this many iterations (a multiple of eval_every)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = "none"
    interval: int = Field(50, ge=1)
    warmup_steps: int = Field(100, ge=0)
    startup_trials: int = Field(3, ge=0)

    @field_validator("type")
    @classmethod
    def _known_pruner(cls, value: str) -> str:
        return _in_table(value, PRUNERS, "pruner")


class AdaptiveSeeds(BaseModel):
    """Seeds spent where the answer is still open: every configuration first runs seeds
    0..min-1; then, round by round, each configuration whose paired CI against the current
    best still contains 0 and is wider than ±`resolution` (objective units) gets the next
    seed, as does the best, until it is decided or has `max` seeds (harness.study.seed_rounds)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    min: StrictInt = Field(ge=2, le=MAX_SEEDS, description="seeds every configuration runs")
    max: StrictInt = Field(ge=2, le=MAX_SEEDS, description="seeds a configuration may reach")
    resolution: float = Field(gt=0, description="a CI half-width that settles a comparison")

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveSeeds:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        return self


class StudyConfig(BaseModel):
    """A study file, validated: base run settings, the space, the sampler and the seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(max_length=100, description="also its reports/ folder and store name")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, list[Any] | Range | Choices] = Field(min_length=1)
    sampler: str = "grid"
    sampler_seed: int | None = Field(None, ge=0, description="seed of a search's sampler")
    n_trials: int | None = Field(None, ge=1)
    seeds: StrictInt | list[StrictInt] | AdaptiveSeeds = 1
    # A file gives `objective: {...}` (one) or `objectives: [{...}, ...]` (several, the first
    # one leading wherever one is needed); both become this list.
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    pruner: Pruner = Pruner()

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return _in_table(value, SAMPLERS, "sampler")

    @model_validator(mode="before")
    @classmethod
    def _one_objective_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "objective" in data:
            if "objectives" in data:
                raise ValueError(
                    "give either 'objective' (one metric) or 'objectives' (a list), not both"
                )
            single = data["objective"]
            data = {k: v for k, v in data.items() if k != "objective"}
            data["objectives"] = [single]
        return data

    @field_validator("objectives")
    @classmethod
    def _each_metric_once(cls, value: list[Objective]) -> list[Objective]:
        names = [objective.metric for objective in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once (each metric once)")
        return value

    @model_serializer(mode="wrap")
    def _single_objective_as_written(self, handler: Any) -> dict[str, Any]:
        """One objective dumps as `objective: {...}`, as before several were possible: the
        stored config of a single-objective study stays what older versions wrote and read."""
        data = handler(self)
        if len(self.objectives) != 1:
            return data
        return {
            ("objective" if k == "objectives" else k): (v[0] if k == "objectives" else v)
            for k, v in data.items()
        }

    @property
    def objective(self) -> Objective:
        """The first (leading) objective: the one a single value needs (p vs best, compare's
        default metric, the MLflow experiment's primary metric)."""
        return self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metric_names(self) -> list[str]:
        """The objectives' metrics in order (Optuna's metric names, the values of a trial)."""
        return [objective.metric for objective in self.objectives]

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                "must be a plain folder name: a letter, digit or '_' first, then letters, "
                f"digits, '_', '.' or '-' (pattern {NAME_PATTERN})"
            )
        return value

    @property
    def adaptive(self) -> AdaptiveSeeds | None:
        """The adaptive seed rule, if the study has one (`seeds: {min, max, resolution}`)."""
        return self.seeds if isinstance(self.seeds, AdaptiveSeeds) else None

    @property
    def seed_list(self) -> list[int]:
        """The seeds every configuration runs (with adaptive seeds, the first `min`)."""
        if isinstance(self.seeds, AdaptiveSeeds):
            return list(range(self.seeds.min))
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def all_seeds(self) -> list[int]:
        """Every seed a configuration may run (with adaptive seeds, up to `max`)."""
        if isinstance(self.seeds, AdaptiveSeeds):
            return list(range(self.seeds.max))
        return self.seed_list

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

    def run_config(self, params: dict[str, Any], seed: int, source: str = "config") -> RunConfig:
        """The run config of one configuration and seed: base, then params, then the seed."""
        return make_run_config({**with_params(self.base, params), "seed": seed}, source)


MODEL_ARG = "model_args."  # a space key that varies one keyword of the model's factory


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Run settings `base` with a configuration's `params` in place; `model_args.NAME` keys
    go into `model_args`."""
    values = {**base, **{k: v for k, v in params.items() if not k.startswith(MODEL_ARG)}}
    args = {k.removeprefix(MODEL_ARG): v for k, v in params.items() if k.startswith(MODEL_ARG)}
    if args:
        values["model_args"] = {**base.get("model_args", {}), **args}
    return values


def comparable_dump(dump: dict[str, Any]) -> dict[str, Any]:
    """A study config as dumped (`model_dump(mode="json")`, or stored by an older version) in
    one form for comparing: `objective: {...}` becomes `objectives: [{...}]`, so a stored
    single-objective config equals the same file read now, whichever form either used."""
    if not isinstance(dump, dict) or "objective" not in dump or "objectives" in dump:
        return dump
    single = dump["objective"]
    return {
        ("objectives" if k == "objective" else k): ([single] if k == "objective" else v)
        for k, v in dump.items()
    }


def _check_study(study: StudyConfig, source: str) -> StudyConfig:
    """Check what the schema cannot, and give grid values their run-setting types (YAML
    reads `1e-4` as a string)."""
    base = make_run_config(study.base, f"{source}: base")
    space: dict[str, Any] = {}
    if isinstance(study.seeds, int) and not 1 <= study.seeds <= MAX_SEEDS:
        raise ConfigError(
            f"{source}: invalid value for 'seeds': a count 1..{MAX_SEEDS} (seeds 0..count-1) "
            f"or a list of seeds (got {study.seeds})"
        )
    distinct = not isinstance(study.seeds, list) or len(set(study.seeds)) == len(study.seeds)
    if isinstance(study.seeds, list) and not (distinct and 1 <= len(study.seeds) <= MAX_SEEDS):
        raise ConfigError(
            f"{source}: invalid value for 'seeds': a non-empty list of at most {MAX_SEEDS} "
            "distinct seeds"
        )
    for seed in study.all_seeds:
        make_run_config({**study.base, "seed": seed}, f"{source}: seeds")
    if study.adaptive and study.multi_objective:
        raise ConfigError(
            f"{source}: adaptive seeds compare configurations with the best in one objective; "
            "a study with several objectives needs a fixed count or list of seeds"
        )
    if study.adaptive and study.pruner.type != "none":
        raise ConfigError(
            f"{source}: adaptive seeds decide by whole runs, so a pruner cannot stop them "
            f"(set pruner: {{type: none}}, or give a count or list of seeds)"
        )
    used_neurons = _study_neurons(study, source)
    allowed = ", ".join(k for k in RunConfig.model_fields if k not in FIXED_KEYS)
    for key, values in study.space.items():
        where = f"{source}: space.{key}"
        if key.startswith(MODEL_ARG):
            space[key] = _model_arg_values(study, base, key, values, where)
            continue
        if key in FIXED_KEYS:
            raise ConfigError(
                f"{where}: '{key}' is set once for a whole study (seeds by `seeds`; data sets "
                f"load once onto one device), so it cannot vary (allowed: {allowed})"
            )
        if key not in RunConfig.model_fields:
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
        alone = dict(study.base)
        if key in EXCLUSIVE_PARAMS and used_neurons:  # every one of them takes it (checked)
            alone["neuron"] = used_neurons[0]
        typed = [getattr(make_run_config({**alone, key: v}, where), key) for v in options]
        if isinstance(values, list):
            space[key] = typed
        elif isinstance(values, Choices):
            space[key] = Choices(choices=typed)
        else:
            space[key] = values
    if study.sampler != "grid" and study.n_trials is None:
        raise ConfigError(f"{source}: 'n_trials' is required for sampler '{study.sampler}'")
    if study.pruner.type != "none" and study.multi_objective:
        raise ConfigError(
            f"{source}: pruner '{study.pruner.type}' with several objectives: Optuna cannot prune "
            "a multi-objective study (set pruner: {type: none}, or give one objective)"
        )
    if study.pruner.type != "none" and study.pruner.interval % base.eval_every:
        raise ConfigError(
            f"{source}: pruner.interval {study.pruner.interval} must be a multiple of "
            f"eval_every ({base.eval_every})"
        )
    checked = study.model_copy(update={"space": space})
    if study.sampler == "grid":  # every run the study will train, before any store is opened
        for point in checked.grid():
            for seed in checked.all_seeds:
                checked.run_config(point, seed, f"{source}: grid point {point}, seed {seed}")
    return checked


def _model_arg_values(
    study: StudyConfig, base: RunConfig, key: str, values: Any, where: str
) -> list[Any] | Choices:
    """A space entry `model_args.NAME`: a list or choices of plain values, for a model."""
    if base.model is None:
        raise ConfigError(f"{where}: model_args vary a model of your own: set model in base")
    if not isinstance(values, list | Choices):
        raise ConfigError(f"{where}: a keyword of your model varies by a list or choices")
    options = values.choices if isinstance(values, Choices) else values
    if not options:
        raise ConfigError(f"{where}: empty list of values")
    for value in options:
        make_run_config(with_params(study.base, {key: value}), where)
    return values


def _study_neurons(study: StudyConfig, source: str) -> list[str]:
    """The neuron models a study's runs use (the known names among them). A parameter of
    some models only (alpha) may be set in a study's base or space only if every run's model
    takes it: a grid of alpha over leaky runs means nothing, so it is refused."""
    values = study.space.get("neuron", [study.base.get("neuron", DEFAULT_NEURON)])
    options = values.choices if isinstance(values, Choices) else values
    names = [n for n in options if isinstance(n, str) and n in NEURONS]
    for param in EXCLUSIVE_PARAMS:
        given = [
            where
            for where, present in (
                ("base", study.base.get(param) is not None),
                ("space", param in study.space),
            )
            if present
        ]
        lacking = [n for n in names if param not in NEURONS[n].params]
        if given and lacking:
            takers = " / ".join(neurons.owners(param))
            neuron = lacking[0]
            raise ConfigError(
                f"{source}: {given[0]}.{param}: '{param}' is a parameter of neuron {takers} "
                f"only, but runs of this study use neuron {neuron} (its parameters: "
                f"{', '.join(NEURONS[neuron].params)}); set {param} only where every run's "
                f"neuron takes it (neuron: {takers} in base, not varied)"
            )
    return names


def _format_study_error(err: ValidationError, source: str, single_objective: bool = False) -> str:
    """One line for a study file's first error; `single_objective`: the file wrote
    `objective:`, which the schema reads as a list of one (its errors name `objective`)."""
    errors = err.errors()
    first = errors[0]
    if "list[any]" in first["loc"] and isinstance(first["input"], dict):
        # A space entry written as a mapping: report what its own form (range or choices)
        # found wrong, not that it is no list.
        member = "Choices" if "choices" in first["input"] else "Range"
        first = next((e for e in errors if member in e["loc"]), first)
    if first["loc"][:1] == ("seeds",):
        if not isinstance(first["input"], dict):
            return (
                f"{source}: invalid value for 'seeds': a count, a list of seeds, or "
                f"{{min, max, resolution}} for adaptive seeds (got {first['input']!r})"
            )
        first = next((e for e in errors if "AdaptiveSeeds" in str(e["loc"])), first)
        loc = ["seeds", *(str(part) for part in first["loc"][2:])]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            return f"{source}: unknown key '{'.'.join(loc)}' (adaptive seeds: min, max, resolution)"
        if first["type"] == "missing":
            return f"{source}: missing key '{'.'.join(loc)}' (adaptive seeds: min, max, resolution)"
        return f"{source}: invalid value for '{'.'.join(loc)}': {message}"
    loc = [str(part) for part in first["loc"]]
    # pydantic reports a union member's name in the location; drop it for the reader.
    loc = [
        part for part in loc if part not in {"list[any]", "Range", "Choices", "int", "list[int]"}
    ]
    if single_objective and loc[:2] == ["objectives", "0"]:
        loc = ["objective", *loc[2:]]
    if not loc and first["type"] == "value_error":  # a check across keys: its message names them
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
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
        single = "objective" in data and "objectives" not in data
        raise ConfigError(_format_study_error(err, str(path), single)) from None
    if study.base.get("model"):
        importable_from(path.parent)
    if study.name != path.stem:  # the name keys the stores and reports/NAME: one name each
        raise ConfigError(
            f"{path}: name '{study.name}' differs from the file's name '{path.stem}' "
            f"(they must be the same: rename the file or set name: {path.stem})"
        )
    return _check_study(study, str(path))
