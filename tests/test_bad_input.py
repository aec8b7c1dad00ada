"""Property-based: every malformed run config, study file or command line is one line on
stderr, exit code 2, no traceback, and nothing written anywhere."""

import json
import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import RunConfig, StudyConfig, load_run_config, load_study
from harness.data.datasets import DATASETS
from harness.errors import ConfigError
from harness.network.encodings import ENCODINGS
from harness.network.neurons import NEURONS
from harness.network.surrogates import SURROGATES
from tests.helpers import assert_refused

FIELDS = [name for name in RunConfig.model_fields if name != "save_model"]
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

junk_text = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12)
not_a_number = junk_text.filter(lambda s: not _is_number(s))


def _is_number(text: str) -> bool:
    try:
        float(yaml.safe_load(text))
    except (TypeError, ValueError, yaml.YAMLError):
        return False
    return True


# For each setting, values it must refuse.
INVALID = {
    "beta": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0001), not_a_number),
    "num_steps": st.one_of(st.integers(max_value=0), not_a_number),
    "hidden": st.one_of(st.integers(max_value=0), not_a_number),
    "threshold": st.one_of(st.floats(max_value=0.0), not_a_number),
    "neuron": junk_text.filter(lambda s: s not in NEURONS),
    # any alpha: the default neuron (leaky) has none
    "alpha": st.one_of(st.floats(max_value=0.0), st.floats(min_value=0.01, max_value=2.0)),
    "surrogate": junk_text.filter(lambda s: s not in SURROGATES),
    "encoding": junk_text.filter(lambda s: s not in ENCODINGS),
    "slope": st.one_of(st.floats(max_value=0.0), not_a_number),
    "decoding": junk_text.filter(lambda s: s not in ("rate", "latency")),
    "lr": st.one_of(st.floats(max_value=0.0), not_a_number),
    "batch_size": st.one_of(st.integers(max_value=0), not_a_number),
    "epochs": st.one_of(st.integers(max_value=0), not_a_number),
    "seed": st.one_of(st.integers(max_value=-1), not_a_number),
    "device": junk_text.filter(lambda s: s.split(":")[0] not in ("auto", "cpu", "cuda", "mps")),
    "backend": junk_text.filter(lambda s: s not in ("fused", "reference")),
    "eval_every": st.one_of(st.integers(max_value=0), not_a_number),
    "train_subset": st.one_of(st.integers(max_value=0), not_a_number),
    "test_subset": st.one_of(st.integers(max_value=0), not_a_number),
    "subset_sampling": junk_text.filter(lambda s: s not in ("first", "stratified")),
    "dataset": junk_text.filter(lambda s: s not in DATASETS),
}
bad_setting = st.one_of(
    st.sampled_from(sorted(INVALID)).flatmap(lambda k: INVALID[k].map(lambda v: (k, v))),
    st.tuples(junk_text.filter(lambda k: k not in RunConfig.model_fields), junk_text),
)


def _yaml_scalar(value) -> str:
    return json.dumps(value) if isinstance(value, float) else str(value)


@SETTINGS
@given(setting=bad_setting)
def test_any_bad_set_is_refused(setting, tmp_path, capsys):
    key, value = setting
    data = tmp_path / "data"
    code = main(["train", f"--set={key}={_yaml_scalar(value)}", "--data-dir", str(data)])
    err = assert_refused(code, capsys, data)
    assert repr(key)[1:-1] in err


@SETTINGS
@given(setting=bad_setting)
def test_any_bad_run_config_file_is_refused(setting, tmp_path, capsys):
    key, value = setting
    path = tmp_path / "run.yaml"
    path.write_text(f"{key}: {_yaml_scalar(value)}\n")
    data = tmp_path / "data"
    assert_refused(main(["train", "--config", str(path), "--data-dir", str(data)]), capsys, data)


VALID_STUDY = {"name": "prop", "space": {"beta": [0.5, 0.9]}, "seeds": 1}
study_mutation = st.one_of(
    bad_setting.map(lambda kv: ("base", {kv[0]: kv[1]})),
    bad_setting.map(lambda kv: ("space", {kv[0]: [kv[1]]})),
    st.sampled_from(sorted(INVALID)).map(lambda k: ("space", {k: []})),
    junk_text.filter(lambda s: s not in StudyConfig.model_fields).map(lambda k: (k, 1)),
    junk_text.filter(lambda s: s not in ("grid", "tpe", "random", "qmc")).map(
        lambda s: ("sampler", s)
    ),
    st.integers(max_value=0).map(lambda n: ("seeds", n)),
    st.integers(max_value=0).map(lambda n: ("n_trials", n)),
    junk_text.filter(lambda s: s not in ("none", "median", "hyperband")).map(
        lambda s: ("pruner", {"type": s})
    ),
    junk_text.map(lambda s: ("objective", {"metric": s + "_x"})),
    st.floats(min_value=0.51, max_value=1.0).map(
        lambda low: ("space", {"beta": {"low": low, "high": 0.5}})
    ),
)


@SETTINGS
@given(mutation=study_mutation)
def test_any_bad_study_file_is_refused_before_the_stores(mutation, tmp_path, capsys):
    key, value = mutation
    body = {**VALID_STUDY, key: value}
    if key == "space" and isinstance(value.get("beta"), dict):
        body["sampler"], body["n_trials"] = "tpe", 2
    path = tmp_path / "prop.yaml"
    path.write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    assert_refused(main(["study", str(path), "--output-dir", str(out)]), capsys, out)
    assert_refused(main(["report", str(path), "--output-dir", str(out)]), capsys, out)


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_as_a_study_file_is_a_study_or_a_one_line_error(text, tmp_path):
    path = tmp_path / "any.yaml"
    path.write_text(text)
    try:
        study = load_study(str(path))
    except ConfigError as err:
        assert "\n" not in str(err) and str(path) in str(err)
    else:
        assert study.space


@SETTINGS
@given(
    flag=junk_text.map(lambda s: "--" + s), command=st.sampled_from(["train", "study x", "bench"])
)
def test_unknown_flags_are_refused(flag, command, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [*command.split(), flag, "1", "--output-dir" if "study" in command else "-x", str(out)]
    )
    assert_refused(code, capsys, out)


# Refused at load time, each with the one line that names what is wrong and what is allowed.

GRID = {"space": {"beta": [0.9]}}
REFUSED_STUDIES = [
    # name: a plain folder name, the file's own (reports/NAME is deleted and rewritten)
    ("..", {"name": "..", **GRID}, "plain folder name"),
    ("dot", {"name": ".", **GRID}, "plain folder name"),
    ("hidden", {"name": ".hidden", **GRID}, "plain folder name"),
    ("a", {"name": "b", **GRID}, "name 'b' differs from the file's name 'a'"),
    # seeds within 0..2**32-1, each one
    ("big", {"name": "big", **GRID, "seeds": [99999999999999999999]}, "4294967295"),
    ("neg", {"name": "neg", **GRID, "seeds": [-1]}, "'seed'"),
    ("many", {"name": "many", **GRID, "seeds": 10**12}, "'seeds'"),
    ("boolseeds", {"name": "boolseeds", **GRID, "seeds": True}, "'seeds'"),
    # sizes
    ("huge", {"name": "huge", "space": {"hidden": [1_000_000_000]}}, "100000"),
    (
        "combo",
        {
            "name": "combo", "base": {"batch_size": 32},
            "space": {"batch_size": [32, 640], "train_subset": [640, 100]},
        },
        "grid point {'batch_size': 640, 'train_subset': 100}",
    ),
    ("bigbatch", {"name": "bigbatch", "base": {"batch_size": 60_001}, **GRID}, "60000"),
    # what the runs of a study share
    ("device", {"name": "device", "space": {"device": ["cpu", "cuda"]}}, "cannot vary (allowed:"),
    # booleans are not numbers
    ("boolgrid", {"name": "boolgrid", "space": {"hidden": [True]}}, "not true/false"),
    (
        "boolrange",
        {"name": "boolrange", "space": {"beta": {"low": True, "high": 0.9}},
         "sampler": "tpe", "n_trials": 2},
        "not true/false",
    ),
    # finite numbers only
    ("infslope", {"name": "infslope", "base": {"slope": float("inf")}, **GRID}, "finite"),
    ("nanthr", {"name": "nanthr", "space": {"threshold": [float("nan")]}}, "finite"),
    (
        "infrange",
        {"name": "infrange", "space": {"beta": {"low": 0.5, "high": float("inf")}},
         "sampler": "tpe", "n_trials": 2},
        "space.beta.high': Input should be a finite number",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("stem", "body", "fragment"), REFUSED_STUDIES)
def test_study_files_are_refused_before_the_stores(stem, body, fragment, tmp_path, capsys):
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    for command in ("study", "report"):
        err = assert_refused(main([command, str(path), "--output-dir", str(out)]), capsys, out)
        assert fragment in err and str(path) in err


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("seed=18446744073709551615", "less than or equal to 4294967295"),
        ("seed=4294967296", "'seed'"),
        ("hidden=1000000000", "hidden widths are 1..100000"),
        ("hidden=true", "not true/false"),
        ("lr=false", "not true/false"),
        ("train_subset=true", "not true/false"),
        ("slope=.inf", "finite number"),
        ("threshold=.inf", "finite number"),
        ("threshold=.nan", "finite number"),
        ("batch_size=60001", "larger than MNIST's 60000 training images (allowed: 1..60000)"),
    ],
)
def test_out_of_range_settings_are_refused(setting, fragment, tmp_path, capsys):
    data = tmp_path / "data"
    err = assert_refused(main(["train", "--set", setting, "--data-dir", str(data)]), capsys, data)
    assert fragment in err


def test_an_unknown_dataset_is_one_line_listing_the_allowed_names(tmp_path, capsys):
    data = tmp_path / "data"
    path = tmp_path / "run.yaml"
    path.write_text("dataset: cifar\n")
    err = assert_refused(main(["train", "--config", str(path), "--data-dir", str(data)]),
                         capsys, data)  # fmt: skip
    assert "'dataset'" in err and "allowed: mnist, fashion_mnist" in err and "cifar" in err


def test_a_batch_larger_than_fashion_mnist_train_images_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["train", "--set", "dataset=fashion_mnist", "--set", "batch_size=60001",
                 "--data-dir", str(data)])  # fmt: skip
    err = assert_refused(code, capsys, data)
    assert "larger than Fashion-MNIST's 60000 training images (allowed: 1..60000)" in err


def test_a_batch_larger_than_the_train_subset_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["train", "--set", "train_subset=100", "--set", "batch_size=128", "--data-dir",
                 str(data)])  # fmt: skip
    err = assert_refused(code, capsys, data)
    assert "batch_size 128 is larger than train_subset 100 (allowed: 1..100)" in err


def test_a_run_file_with_a_boolean_or_inf_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    for text, fragment in (("hidden: true\n", "not true/false"), ("slope: .inf\n", "finite")):
        path = tmp_path / "run.yaml"
        path.write_text(text)
        err = assert_refused(main(["train", "--config", str(path), "--data-dir", str(data)]),
                             capsys, data)  # fmt: skip
        assert fragment in err


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("name: dup\nspace:\n  beta: [0.5]\n  beta: [0.9]\n", "beta", 4),
        ("name: dup\nbase: {hidden: 10}\nspace: {beta: [0.5]}\nbase: {hidden: 20}\n", "base", 4),
    ],
)
def test_a_key_given_twice_is_refused_with_its_line(text, key, line, tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    err = assert_refused(main(["study", str(path), "--output-dir", str(out)]), capsys, out)
    assert f"key '{key}' appears twice" in err and f"line {line}" in err
    err = assert_refused(
        main(["train", "--config", str(path), "--data-dir", str(out)]), capsys, out
    )
    assert f"key '{key}' appears twice" in err


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("defaults: &d {beta: 0.5, hidden: 10}\nbase:\n  <<: *d\n  hidden: 20\n")
    config = load_run_config(path)  # a merged key overridden is no duplicate
    assert (config.beta, config.hidden) == (0.5, 20)


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        (["--storage", "bogus://x"], {}, "--storage: 'bogus' is not an Optuna storage"),
        (["--storage", "postgresql+nodriver://u:secret@h/db"], {}, "allowed: SQLAlchemy URLs"),
        (["--tracking-uri", "bogus://x"], {}, "--tracking-uri: 'bogus' is not an MLflow"),
        ([], {"HARNESS_STORAGE": "bogus://x"}, "$HARNESS_STORAGE: 'bogus'"),
        ([], {"MLFLOW_TRACKING_URI": "bogus://x"}, "$MLFLOW_TRACKING_URI: 'bogus'"),
    ],
)
def test_unusable_store_urls_are_refused_before_the_stores(
    flags, env, fragment, tmp_path, capsys, monkeypatch
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", **GRID}))
    out = tmp_path / "out"
    for command in ("study", "report"):
        err = assert_refused(main([command, str(path), "--output-dir", str(out), *flags]),
                             capsys, out)  # fmt: skip
        assert fragment in err and "allowed" in err and "secret" not in err
    if "MLFLOW_TRACKING_URI" in env or "--tracking-uri" in flags:
        tracking = flags if flags else []
        err = assert_refused(main(["ui", "--output-dir", str(out), *tracking]), capsys, out)
        assert "is not an MLflow tracking URI (allowed: a plain path, file:" in err


# Neuron models, their parameters and encodings: from a run file, --set and a study file.


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["neuron=izhikevich"], "unknown neuron (allowed: leaky, synaptic) (got 'izhikevich')"),
        (["encoding=phase"], "unknown encoding (allowed: direct, rate, latency) (got 'phase')"),
        (["surrogate=relu"], "unknown surrogate (allowed: atan, fast_sigmoid) (got 'relu')"),
        (["architecture=cnn"], "unknown architecture (allowed: mlp, csnn) (got 'cnn')"),
        (["architecture=csnn"], "backend fused does not run architecture csnn: it runs "
         "architecture mlp with one hidden layer (tutorial 5's shape); use backend reference"),
        (["hidden=[500, 250]"], "backend fused does not run hidden [500, 250]: it runs "
         "architecture mlp with one hidden layer"),
        (["hidden=[0]"], "hidden widths are 1..100000, one (1000) or a list ([500, 250])"),
        (["energy_model=truenorth"], "unknown energy model (allowed: horowitz45_fp32, "
         "horowitz45_fp16, horowitz45_int32, horowitz45_int8) (got 'truenorth')"),
        (["alpha=0.5"], "'alpha' is a parameter of neuron synaptic, not of neuron leaky "
         "(its parameters: beta, threshold)"),
        (["neuron=synaptic", "alpha=1.5"], "'alpha': Input should be less than or equal to 1"),
        (["neuron=synaptic", "alpha=0"], "'alpha': Input should be greater than 0"),
    ],
)  # fmt: skip
def test_bad_neurons_and_encodings_are_refused(settings, fragment, tmp_path, capsys):
    data = tmp_path / "data"
    flags = [flag for setting in settings for flag in ("--set", setting)]
    err = assert_refused(main(["train", *flags, "--data-dir", str(data)]), capsys, data)
    assert fragment in err
    path = tmp_path / "run.yaml"
    path.write_text("".join(f"{s.replace('=', ': ')}\n" for s in settings))
    err = assert_refused(main(["train", "--config", str(path), "--data-dir", str(data)]),
                         capsys, data)  # fmt: skip
    assert fragment in err


ALPHA_MISPLACED = "'alpha' is a parameter of neuron synaptic only, but runs of this study use "
NEURON_STUDIES = [
    ("leakygrid", {"space": {"alpha": [0.5, 0.9]}},
     f"space.alpha: {ALPHA_MISPLACED}neuron leaky (its parameters: beta, threshold); set alpha "
     "only where every run's neuron takes it (neuron: synaptic in base, not varied)"),
    ("mixedgrid", {"space": {"neuron": ["leaky", "synaptic"], "alpha": [0.5, 0.9]}},
     f"space.alpha: {ALPHA_MISPLACED}neuron leaky (its parameters: beta, threshold)"),
    ("mixedbase", {"base": {"neuron": "synaptic", "alpha": 0.5},
                   "space": {"neuron": ["synaptic", "leaky"]}}, f"base.alpha: {ALPHA_MISPLACED}"),
    ("mixedsearch", {"space": {"neuron": {"choices": ["leaky", "synaptic"]},
                               "alpha": {"low": 0.5, "high": 0.9}},
                     "sampler": "tpe", "n_trials": 2}, f"space.alpha: {ALPHA_MISPLACED}"),
    ("badneuron", {"space": {"neuron": ["leaky", "hh"]}}, "unknown neuron (allowed: leaky, "
     "synaptic)"),
    ("badencoding", {"space": {"encoding": ["rate", "poisson"]}}, "unknown encoding (allowed: "
     "direct, rate, latency)"),
]  # fmt: skip


@pytest.mark.parametrize(("stem", "body", "fragment"), NEURON_STUDIES)
def test_a_study_sets_alpha_only_where_every_run_is_synaptic(stem, body, fragment, tmp_path,
                                                              capsys):  # fmt: skip
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump({"name": stem, **body}))
    out = tmp_path / "out"
    err = assert_refused(main(["study", str(path), "--output-dir", str(out)]), capsys, out)
    assert fragment in err and str(path) in err


def test_studies_may_vary_neuron_alpha_and_encoding_where_they_belong(tmp_path):
    bodies = {
        "alphas": {"base": {"neuron": "synaptic"}, "space": {"alpha": [0.5, 0.9]}},
        "onlysyn": {"space": {"neuron": ["synaptic"], "alpha": [0.5, 0.9]}},
        "neurons": {"space": {"neuron": ["leaky", "synaptic"], "encoding": ["direct", "rate"]}},
        "search": {"base": {"neuron": "synaptic"}, "sampler": "tpe", "n_trials": 2,
                   "space": {"alpha": {"low": 0.5, "high": 1.0}, "encoding": {"choices": [
                       "rate", "latency"]}}},
    }  # fmt: skip
    grids = {}
    for stem, body in bodies.items():
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump({"name": stem, **body}, sort_keys=False))
        grids[stem] = load_study(str(path))
    alphas = grids["alphas"]
    assert [alphas.run_config(point, 0).alpha for point in alphas.grid()] == [0.5, 0.9]
    configs = [grids["neurons"].run_config(p, 0) for p in grids["neurons"].grid()]
    assert [(c.neuron, c.encoding, c.alpha) for c in configs] == [
        ("leaky", "direct", None), ("leaky", "rate", None),
        ("synaptic", "direct", 0.9), ("synaptic", "rate", 0.9),
    ]  # fmt: skip


def test_a_description_longer_than_mlflow_keeps_is_refused_before_the_stores(tmp_path, capsys):
    from mlflow.utils.validation import MAX_EXPERIMENT_TAG_VAL_LENGTH as LIMIT

    path = tmp_path / "long.yaml"
    body = {"name": "long", "space": {"beta": [0.9]}, "description": "x" * (LIMIT + 1)}
    path.write_text(json.dumps(body))
    out = tmp_path / "out"
    assert main(["study", str(path), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: study 'long': 'description' is 20,001 characters, MLflow keeps at most 20,000 "
        "in an experiment's description: shorten it\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("target", ["a-file/model.pt", "/proc/model.pt", "/proc/self/x/m.pt"])
def test_save_model_where_no_file_can_be_written_is_refused_before_training(
    target, tmp_path, capsys, monkeypatch
):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "no-data"))  # training would need it
    assert main(["train", "--save-model", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.fullmatch(rf"error: --save-model: cannot write {re.escape(target)}: .+\n", err)
    assert not (tmp_path / "no-data").exists()
