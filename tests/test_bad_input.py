"""Property-based: every malformed run config, study file or command line is one line on
stderr, exit code 2, no traceback, and nothing written anywhere."""

import json
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import ConfigError, RunConfig, StudyConfig, load_study

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
    "surrogate": junk_text.filter(lambda s: s not in ("atan", "fast_sigmoid")),
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
}
bad_setting = st.one_of(
    st.sampled_from(sorted(INVALID)).flatmap(lambda k: INVALID[k].map(lambda v: (k, v))),
    st.tuples(junk_text.filter(lambda k: k not in RunConfig.model_fields), junk_text),
)


def _yaml_scalar(value) -> str:
    return json.dumps(value) if isinstance(value, float) else str(value)


def assert_refused(code: int, capsys, *untouched: Path) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    for path in untouched:
        assert not path.exists()
    return captured.err


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
