"""Tests of the benchmark scripts: statistics, and each script end to end.

The end-to-end tests run every script at tiny sizes (the 'tiny' set-up, a
handful of rounds, 10-class logits), so they check that the scripts run and
that their records are consistent, not what they measure. They compile the
steps with XLA's backend optimisation turned off, which compiles the tiny
step about 2.5 times faster, and share the compiled steps within a process.
"""

import json
import statistics

import jax.numpy as jnp
import pytest

from benchmarks import _measure
from benchmarks import _training_step
from benchmarks import accelerator
from benchmarks import loss_speed
from benchmarks import pipeline_speed
from benchmarks import run_all
from benchmarks import step_memory
from benchmarks import step_speed

_SCRIPTS = (step_speed, step_memory, pipeline_speed, run_all, accelerator)


@pytest.fixture(scope="module", autouse=True)
def fast_compilation():
  """Compiles this module's steps without backend optimisation."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(_training_step, "COMPILER_OPTIONS",
                  {"xla_backend_optimization_level": 0})
    yield
  # Later tests in this process must not reuse steps compiled this way.
  _training_step._cached_step.cache_clear()


def _read_json(path):
  with open(path, encoding="utf-8") as file:
    return json.load(file)


# Statistics.


def test_median_interval_twenty_values():
  values = [float(v) for v in range(20, 0, -1)]
  assert _measure.median_confidence_interval(values) == (6.0, 15.0)


def test_median_interval_too_few_values():
  assert _measure.median_confidence_interval([1.0] * 5) is None
  assert _measure.median_confidence_interval([3.0, 1, 2, 6, 5, 4]) == (1, 6)


def test_median_interval_invalid_confidence():
  with pytest.raises(ValueError, match="confidence must lie in"):
    _measure.median_confidence_interval([1.0] * 10, confidence=1.0)


def test_ratio_statistics_constant_ratio():
  baseline = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  result = _measure.ratio_statistics([2 * t for t in baseline], baseline)
  assert result["ratio"] == pytest.approx(2.0, rel=1e-12)
  assert result["round_ratio"] == pytest.approx(2.0, rel=1e-12)
  assert result["round_ratio_low"] == pytest.approx(2.0, rel=1e-12)
  assert result["round_ratio_high"] == pytest.approx(2.0, rel=1e-12)


def test_ratio_statistics_length_mismatch():
  with pytest.raises(ValueError, match="same rounds"):
    _measure.ratio_statistics([1.0, 2.0], [1.0])


def test_interleaved_times_rotates_order():
  calls = []

  def recorder(name):
    def call():
      calls.append(name)
      return jnp.zeros(())
    return call

  times = _measure.interleaved_times(
      {name: recorder(name) for name in "abc"}, repeats=3, warmup=1)
  assert calls[:3] == ["a", "b", "c"]  # Warm-up.
  assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
  assert {name: len(seconds) for name, seconds in times.items()} == {
      "a": 3, "b": 3, "c": 3}
  assert all(t >= 0 for seconds in times.values() for t in seconds)


def test_interleaved_times_rejects_zero_repeats():
  with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
    _measure.interleaved_times({"a": lambda: jnp.zeros(())}, repeats=0)


@pytest.mark.parametrize("low, high, verdict", [
    (0.99, 1.01, "met"),
    (1.03, 1.05, "missed"),
    (1.00, 1.04, "not resolved"),
    (None, None, "not resolved (too few rounds)"),
])
def test_step_time_verdict(low, high, verdict):
  record = {"round_ratio_low": low, "round_ratio_high": high}
  assert run_all.step_time_verdict(record) == verdict


# Set-ups and configurations.


@pytest.mark.parametrize("setup_name, alpha", [
    ("resnet20", 0.25), ("resnet50_224", 0.05), ("tiny", 0.25)])
def test_make_config_variants(setup_name, alpha):
  setup = _training_step.get_setup(setup_name)
  configs = {
      variant: _training_step.make_config(
          setup, variant, dtype="float32", batch_size=8)
      for variant in _training_step.VARIANTS
  }
  assert configs["baseline"].alpha is None
  assert configs["pgt_loss"].alpha == alpha
  assert configs["pgt_loss"].pgt_door == "loss"
  assert configs["pgt_transform"].alpha == alpha
  assert configs["pgt_transform"].pgt_door == "transform"
  for config in configs.values():
    assert config.batch_size == 8
    assert config.num_devices == 1
    assert config.half_precision is False
    assert config.image_size == setup.image_shape[0]


def test_make_config_bfloat16():
  config = _training_step.make_config(
      _training_step.get_setup("tiny"), "baseline", dtype="bfloat16",
      batch_size=8)
  assert config.half_precision is True


@pytest.mark.parametrize("kwargs, message", [
    (dict(variant="pgt"), "Unknown variant 'pgt'"),
    (dict(dtype="float16"), "Unknown dtype 'float16'"),
])
def test_make_config_invalid(kwargs, message):
  arguments = dict(variant="baseline", dtype="float32")
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    _training_step.make_config(
        _training_step.get_setup("tiny"), batch_size=8, **arguments)


def test_get_setup_unknown():
  with pytest.raises(ValueError, match="Unknown set-up 'resnet19'"):
    _training_step.get_setup("resnet19")


# Command lines.


@pytest.mark.parametrize("script", _SCRIPTS, ids=lambda s: s.__name__)
def test_help_exits_cleanly(script, capsys):
  with pytest.raises(SystemExit) as exit_info:
    script.parse_args(["--help"])
  assert exit_info.value.code == 0
  assert f"python -m {script.__name__}" in capsys.readouterr().out


@pytest.mark.parametrize("script, arguments, message", [
    (step_speed, ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (step_memory, ["--batch-size", "0"],
     "--batch-size must be at least 1, got 0"),
    (pipeline_speed, ["--step-repeats", "0"],
     "--step-repeats must be at least 1, got 0"),
    (run_all, ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (accelerator, ["--warmup", "-1"],
     "--warmup must be non-negative, got -1"),
], ids=lambda value: getattr(value, "__name__", None))
def test_invalid_argument_rejected(script, arguments, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    script.parse_args(arguments)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


# Each script end to end.


def test_step_memory_script(tmp_path):
  path = tmp_path / "memory.json"
  step_memory.main(["--setups", "tiny", "--json", str(path)])
  records = _read_json(path)["records"]
  assert [r["variant"] for r in records] == list(_training_step.VARIANTS)
  for record in records:
    assert record["kind"] == "full"
    assert record["total"] == (record["argument"] + record["output"]
                               - record["alias"] + record["temp"])
    assert record["flops"] > 0
    # Donation lets the new state reuse the old state's buffers.
    assert record["alias"] > 0
    assert record["total_ratio"] == pytest.approx(
        record["total"] / records[0]["total"], rel=1e-12)
    assert record["total_difference"] == record["total"] - records[0]["total"]
  assert records[0]["total_ratio"] == 1.0


def test_core_step_drops_metrics():
  steps = {
      kind: _training_step.get_step("tiny", "baseline", kind, "float32")
      for kind in _training_step.STEP_KINDS
  }
  full_memory = steps["full"].memory_analysis()
  core_memory = steps["core"].memory_analysis()
  assert core_memory["output"] < full_memory["output"]
  assert core_memory["argument"] == full_memory["argument"]
  assert (steps["core"].cost_analysis()["flops"]
          < steps["full"].cost_analysis()["flops"])
  # The core step returns only the new state.
  state = steps["core"]()
  assert int(state.step[0]) == 1


def test_step_speed_script(tmp_path):
  path = tmp_path / "speed.json"
  step_speed.main(["--setups", "tiny", "--repeats", "6", "--json",
                   str(path)])
  output = _read_json(path)
  assert output["environment"]["backend"] == "cpu"
  records = output["records"]
  assert [r["variant"] for r in records] == list(_training_step.VARIANTS)
  for record in records:
    assert len(record["times_s"]) == 6
    assert record["median_s"] == pytest.approx(
        statistics.median(record["times_s"]), rel=1e-12)
    assert record["images_per_s"] == pytest.approx(
        8 / record["median_s"], rel=1e-12)
  baseline = records[0]
  assert baseline["ratio"] == 1.0
  for record in records[1:]:
    assert record["ratio"] == pytest.approx(
        record["median_s"] / baseline["median_s"], rel=1e-12)
    assert record["round_ratio_low"] <= record["round_ratio"]
    assert record["round_ratio"] <= record["round_ratio_high"]


def test_pipeline_speed_script(tmp_path):
  path = tmp_path / "pipelines.json"
  pipeline_speed.main([
      "--repeats", "3", "--batch-size", "8", "--consumer", "tiny",
      "--step-repeats", "2", "--json", str(path)])
  records = _read_json(path)["records"]
  assert {r["pipeline"]: r["image_shape"] for r in records} == {
      "digits": [32, 32, 1],
      "cifar10": [32, 32, 3],
      "imagenet2012_64": [64, 64, 3],
  }
  for record in records:
    assert record["consumer"] == "tiny"
    assert record["examples_per_s"] == pytest.approx(
        8 / record["median_batch_s"], rel=1e-12)
    assert record["ratio_to_consumer"] == pytest.approx(
        record["examples_per_s"] / record["consumer_images_per_s"],
        rel=1e-12)


def test_accelerator_script(tmp_path, capsys):
  path = tmp_path / "accelerator.json"
  accelerator.main(["--setup", "tiny", "--repeats", "2", "--warmup", "0",
                    "--dtype", "float32", "--json", str(path)])
  output = capsys.readouterr().out
  assert "### Accelerator: tiny ResNet, 32x32x1, 10 classes, float32" in output
  for variant in _training_step.VARIANTS:
    assert f"| {variant} |" in output
  results = _read_json(path)
  assert len(results["step_speed"]) == 3
  assert len(results["step_memory"]) == 3


def test_run_all_script(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(loss_speed, "SHAPES", ((8, 10),))
  path = tmp_path / "all.json"
  run_all.main(["--repeats", "2", "--setups", "tiny", "--consumer", "tiny",
                "--json", str(path)])
  results = _read_json(path)
  assert {r["shape"][0] for r in results["loss_speed"]} == {8}
  assert len(results["step_speed"]) == 3
  assert len(results["step_memory"]) == 3
  assert len(results["pipeline_speed"]) == len(pipeline_speed.PIPELINES)
  assert results["environment"]["wall_s"] > 0
  summary = capsys.readouterr().out.split("== Summary ==", 1)[1]
  assert "step tiny b8 full pgt_loss / baseline time" in summary
  assert "step tiny b8 full pgt_transform / baseline memory" in summary
  assert "step tiny b8 full pgt_loss / baseline flops" in summary
  assert "pipeline imagenet2012_64 / tiny step" in summary
