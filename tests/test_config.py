import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import RunConfig, load_run_config, load_study, make_run_config
from harness.errors import ConfigError
from harness.network.surrogates import SURROGATES

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def test_defaults_are_the_seeds_settings():
    config = RunConfig()
    assert (config.beta, config.num_steps, config.hidden, config.threshold) == (0.95, 25, 1000, 1.0)
    assert (config.surrogate, config.surrogate_slope, config.decoding) == ("atan", 2.0, "rate")
    assert (config.lr, config.batch_size, config.epochs, config.backend) == (5e-4, 128, 1, "fused")


def test_unset_slope_means_the_surrogates_own_default():
    assert make_run_config({"surrogate": "fast_sigmoid"}).surrogate_slope == 25.0
    assert make_run_config({"surrogate": "fast_sigmoid", "slope": 5}).surrogate_slope == 5.0


def test_tutorial5_study_file_holds_the_seed_settings():
    loaded = load_run_config(STUDIES / "tutorial5.yaml")
    assert loaded.slope == 2.0
    assert loaded.model_copy(update={"slope": None}) == RunConfig()


def test_overrides_are_parsed_as_yaml_scalars():
    config = load_run_config(None, ["beta=0.5", "decoding=latency", "train_subset=1000"])
    assert (config.beta, config.decoding, config.train_subset) == (0.5, "latency", 1000)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("betta=0.5", "unknown key 'betta'"),
        ("beta=1.5", "'beta'"),
        ("beta=0", "'beta'"),
        ("num_steps=0", "'num_steps'"),
        ("num_steps=abc", "'num_steps'"),
        ("surrogate=sigmoid", "'surrogate'"),
        ("decoding=phase", "'decoding'"),
        ("device=tpu", "'device'"),
        ("slope=-1", "'slope'"),
        ("noequals", "expected key=value"),
    ],
)
def test_invalid_settings_raise_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override", ["beta=2", "num_steps=0", "surrogate=sigmoid", "bogus=1", "device=cuda:99"]
)
def test_cli_rejects_bad_settings_with_exit_2_and_trains_nothing(override, capsys, tmp_path):
    code = main(["train", "--set", override, "--data-dir", str(tmp_path / "none"), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert not (tmp_path / "none").exists()  # no data fetched: nothing started


def test_cli_rejects_a_missing_or_malformed_config_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("beta: [0.5\n")
    assert main(["train", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_neuron_encoding_and_their_parameters_come_from_the_tables():
    config = RunConfig()
    assert (config.neuron, config.alpha, config.encoding) == ("leaky", None, "direct")
    assert config.neuron_parameters == {"beta": 0.95, "threshold": 1.0}
    synaptic = make_run_config({"neuron": "synaptic", "beta": 0.8})
    assert synaptic.alpha == 0.9  # unset: the model's default, in the config as logged
    assert synaptic.neuron_parameters == {"alpha": 0.9, "beta": 0.8, "threshold": 1.0}
    assert make_run_config({"neuron": "synaptic", "alpha": 1}).neuron_parameters["alpha"] == 1.0
    assert make_run_config({"encoding": "latency"}).encoding == "latency"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"neuron": "izhikevich"}, "invalid value for 'neuron': unknown neuron (allowed: leaky, "
         "synaptic) (got 'izhikevich')"),
        ({"encoding": "phase"}, "unknown encoding (allowed: direct, rate, latency)"),
        ({"surrogate": "sigmoid"}, "unknown surrogate (allowed: atan, fast_sigmoid)"),
        ({"alpha": 0.5}, "config: 'alpha' is a parameter of neuron synaptic, not of neuron leaky "
         "(its parameters: beta, threshold)"),
        ({"neuron": "synaptic", "alpha": 0}, "'alpha': Input should be greater than 0"),
        ({"neuron": "synaptic", "alpha": 1.01}, "'alpha': Input should be less than or equal to 1"),
        ({"neuron": "synaptic", "alpha": True}, "'alpha': must be a number, not true/false"),
    ],
)  # fmt: skip
def test_bad_neurons_encodings_and_alphas_are_one_line_naming_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as err:
        make_run_config(values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_tables_are_the_only_lists_of_names(tmp_path):
    from harness.network import backends, decodings, neurons, surrogates
    from harness.study import samplers

    assert {n: s.default_slope for n, s in surrogates.SURROGATES.items()} == {
        "atan": 2.0,
        "fast_sigmoid": 25.0,
    }
    assert neurons.EXCLUSIVE_PARAMS == ("alpha",)
    assert [n for n, s in neurons.NEURONS.items() if "numba" in s.kernels] == [
        "leaky",
        "synaptic",
    ]
    # every setting that names a table entry refuses another name, listing the table's
    for key, table in (
        ("decoding", decodings.DECODINGS),
        ("backend", backends.BACKENDS),
        ("surrogate", surrogates.SURROGATES),
        ("neuron", neurons.NEURONS),
    ):
        with pytest.raises(ConfigError) as err:
            make_run_config({key: "nonesuch"})
        assert f"(allowed: {', '.join(table)})" in str(err.value), key
    for key, table in (("sampler", samplers.SAMPLERS), ("pruner", samplers.PRUNERS)):
        value = "{type: nonesuch}" if key == "pruner" else "nonesuch"
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"name: {key}\nspace: {{beta: [0.9]}}\n{key}: {value}\n")
        with pytest.raises(ConfigError) as err:
            load_study(str(path))
        assert f"(allowed: {', '.join(table)})" in str(err.value), key


@pytest.mark.parametrize("name", list(SURROGATES))
def test_the_kernel_computes_each_surrogates_derivative(name):
    """The CPU kernel's branch for every entry of the surrogate table gives the entry's own
    derivative (float32), over both signs, near and far from the threshold."""
    from harness.network.kernels.lif_scan import _surrogate

    spec = SURROGATES[name]
    xs = np.array([-3.0, -0.5, -0.01, 0.0, 0.01, 0.2, 1.0, 4.0], dtype=np.float32)
    for slope in (0.5, spec.default_slope, 100.0):
        kernel = [_surrogate(x, spec.kernel_code, np.float32(slope)) for x in xs]
        expected = spec.derivative(torch.from_numpy(xs), slope).numpy()
        np.testing.assert_allclose(
            kernel, expected, rtol=1e-5, atol=1e-7, err_msg=f"{name} {slope}"
        )


def test_the_kernel_refuses_a_surrogate_code_it_does_not_know(monkeypatch):
    from harness.network.kernels import lif_scan

    assert {spec.kernel_code for spec in SURROGATES.values()} <= set(lif_scan.KERNEL_CODES)
    unknown = max(lif_scan.KERNEL_CODES) + 1
    monkeypatch.setitem(lif_scan.SURROGATE_CODE, "atan", unknown)
    cur1, w2, b2 = torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=f"kernel code {unknown}, for which the CPU kernel's"):
        lif_scan.fused_lif_net(cur1, w2, b2, 5, 0.9, 1.0, "atan", 2.0)


@pytest.mark.processes
def test_config_reads_its_tables_without_torch():
    code = "import sys, harness.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
