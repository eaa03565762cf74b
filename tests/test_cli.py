"""The command line's habits: typed options that MLproject's text parameters convert to, environment
defaults, help lines, one exit-code table (docs/cli.md), and the read-only ``rank`` and ``bank`` commands."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlflow_ccfv import errors
from mlflow_ccfv.cli import main
from mlflow_ccfv.cli.base import exit_code_of

REPO = Path(__file__).resolve().parents[1]
NETWORK_COMMANDS = ("score", "pretrain", "finetune", "select", "study", "demo")
DATA_COMMANDS = ("score", "pretrain", "finetune", "select", "verify", "study", "demo")
#: The first word of every command's help: what it does.
VERBS = {
    "Generate",
    "Check",
    "Register",
    "List",
    "Score",
    "Print",
    "Pre-train",
    "Fine-tune",
    "Compare",
    "Run",
    "Upload",
    "Export",
    "Select",
    "Measure",
}


@functools.cache
def _mlproject() -> dict:
    """The MLproject, parsed once (pure-Python YAML: ~0.1 s a parse, and many tests read it)."""
    return yaml.safe_load((REPO / "MLproject").read_text())


def _entry_points() -> dict:
    return copy.deepcopy(_mlproject()["entry_points"])


@functools.cache
def _mlflow_project():
    """The project as MLflow's own parser reads it, once."""
    from mlflow.projects import _project_spec

    return _project_spec.load_project(str(REPO))


@pytest.mark.parametrize("entry", sorted(_entry_points()))
def test_mlproject_entry_point_parses_with_its_defaults(entry):
    """What ``mlflow run . -e <entry> -P ...`` runs: every parameter is an option of the command, and
    the defaults (``""`` for an unset optional value) parse into typed values."""
    spec = _entry_points()[entry]
    values = {
        name: (p["default"] if isinstance(p, dict) and "default" in p else "Task09")
        for name, p in spec["parameters"].items()
    }
    if entry == "finetune":
        values["model"] = "models:/m/1"
    argv = shlex.split(spec["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    assert argv[:3] == ["python", "-m", "mlflow_ccfv"]
    command = main.commands[argv[3]]
    options = {o for p in command.params for o in p.opts}
    for name in spec["parameters"]:
        assert f"--{name.replace('_', '-')}" in options, f"{entry}: -P {name} is not an option of {argv[3]}"
    ctx = command.make_context(argv[3], argv[4:])
    for name, value in ctx.params.items():
        assert not (isinstance(value, str) and value == "" and name in ("overlap", "global_samples", "device"))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["-P", "overlap=0.5"], {"overlap": 0.5}),
        (["-P", "roi_size=16x16x16"], {"roi_size": (16, 16, 16)}),
        (["-P", "global_samples=64", "-P", "sampler_seed=3"], {"global_samples": 64, "sampler_seed": 3}),
        (["-P", "force=true", "-P", "device=cpu"], {"force": True, "device": "cpu"}),
    ],
)
def test_score_dash_p_values_become_typed_options(params, expected):
    spec = _entry_points()["score"]
    values = {n: (p["default"] if isinstance(p, dict) else "Task09") for n, p in spec["parameters"].items()}
    values.update(dict(p.split("=", 1) for p in params[1::2]))
    argv = shlex.split(spec["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    params_ = main.commands["score"].make_context("score", argv[4:]).params
    assert {k: params_[k] for k in expected} == expected


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_shows_its_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_every_help_line_says_what_the_command_does_first():
    for name, command in main.commands.items():
        first = (command.help or "").split()[0]
        assert first in VERBS, f"{name}: help starts with {first!r}"


def test_methods_help_lists_every_method():
    from mlflow_ccfv.estimators import METHODS

    text = CliRunner().invoke(main, ["score", "--help"], terminal_width=400).output
    assert all(re.search(rf"\b{m}\b", text) for m in METHODS)


def test_the_bounds_options_show_are_those_the_layers_enforce():
    """The ranges the command line declares (and its help shows) are those of the classes and checks that
    own them: the training budget (``TrainConfig``), the sampler's overlap (``SamplerConfig``), the
    synthetic generator's settings."""
    from mlflow_ccfv.cli import shared_options as shared
    from mlflow_ccfv.data import phantom, synthetic
    from mlflow_ccfv.features import SamplerConfig
    from mlflow_ccfv.options import SYNTHETIC_SHAPE_RANGE
    from mlflow_ccfv.training import TrainConfig

    side, batch = shared.PATCH_SIDE_RANGE[0], shared.BATCH_SIZE_RANGE[0]
    TrainConfig(patch_size=(side,) * 3, batch_size=batch)
    with pytest.raises(ValueError, match="patch_size"):
        TrainConfig(patch_size=(side - 1,) * 3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=batch - 1)
    SamplerConfig(overlap=0.0)
    with pytest.raises(ValueError, match="overlap"):
        SamplerConfig(overlap=1.0)
    lo, hi = SYNTHETIC_SHAPE_RANGE
    synthetic.check_synthetic_settings(2, (lo, lo, hi), (5.0, 5.0, 5.0))
    with pytest.raises(errors.OptionError, match="shape"):
        synthetic.check_synthetic_settings(2, (lo - 1, lo, lo), (5.0, 5.0, 5.0))
    with pytest.raises(ValueError, match=f"at least {lo}"):  # the phantom itself needs that side
        phantom.synthesize_case("Task03", np.random.default_rng(0), shape=(lo - 1, lo, lo))
    shown = CliRunner().invoke(main, ["pretrain", "--help"], terminal_width=400).output
    assert f"three sides of {side}-{shared.PATCH_SIDE_RANGE[1]}" in shown
    assert f"Patches per step ({batch}-{shared.BATCH_SIZE_RANGE[1]})" in shown
    refused = CliRunner().invoke(main, ["pretrain", "--dataset", "D", "--patch-size", f"{side - 1},32,32"])
    assert refused.exit_code == 2 and f">= {side}" in refused.output
    synth_help = CliRunner().invoke(main, ["synth", "--help"], terminal_width=400).output
    assert "(16-1024 a side)" in synth_help and "(0.01-100)" in synth_help


def test_the_defaults_options_show_are_those_of_the_config_classes():
    """``score``'s help states the sampler's defaults (an empty option means the default) and the
    training options default to :class:`~mlflow_ccfv.training.TrainConfig`'s recipe."""
    from mlflow_ccfv.cli.shared_options import train_config_from_options
    from mlflow_ccfv.features import SamplerConfig
    from mlflow_ccfv.options import format_ints
    from mlflow_ccfv.training import TrainConfig

    sampler = SamplerConfig()
    shown = " ".join(CliRunner().invoke(main, ["score", "--help"], terminal_width=1000).output.split())
    assert f"overlap in [0, 1) (default {sampler.overlap})" in shown
    assert f"feature variety, >= 1 (default {sampler.global_samples})" in shown
    assert f"bottleneck -> output (default {format_ints(sampler.layer_budgets)})" in shown
    assert f"an integer >= 0 (default {sampler.seed})" in shown
    params = main.commands["finetune"].make_context("finetune", ["--dataset", "D", "--model", "m"]).params
    recipe, given = TrainConfig(), train_config_from_options(params)
    assert (given.batch_size, given.patch_size, given.learning_rate) == (
        recipe.batch_size,
        recipe.patch_size,
        recipe.learning_rate,
    )
    assert (given.optimizer, given.foreground_fraction) == (recipe.optimizer, recipe.foreground_fraction)


@pytest.mark.parametrize("name", NETWORK_COMMANDS)
def test_network_commands_take_a_device(name):
    command = main.commands[name]
    assert any("--device" in p.opts for p in command.params)
    bad = CliRunner().invoke(main, [name, "--device", "tpu"])
    assert bad.exit_code == 2 and "cpu, cuda or cuda:N" in bad.output


@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_data_root_follows_mlflow_ccfv_data(name, monkeypatch, tmp_path):
    command = main.commands[name]
    required = {
        "score": ["--dataset", "D"],
        "pretrain": ["--dataset", "D"],
        "select": ["--dataset", "D"],
        "verify": ["D"],
    }
    required["finetune"] = ["--dataset", "D", "--model", "models:/m/1"]
    monkeypatch.setenv("MLFLOW_CCFV_DATA", str(tmp_path))
    for given in ([], ["--data-root", ""]):  # unset, and blank as MLproject passes it
        ctx = command.make_context(name, required.get(name, []) + given)
        assert ctx.params["data_root"] == str(tmp_path)
    ctx = command.make_context(name, required.get(name, []) + ["--data-root", "elsewhere"])
    assert ctx.params["data_root"] == "elsewhere"
    monkeypatch.delenv("MLFLOW_CCFV_DATA")
    assert command.make_context(name, required.get(name, []) + ["--data-root", ""]).params["data_root"]


def test_cache_dir_follows_mlflow_ccfv_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(tmp_path))
    ctx = main.commands["score"].make_context("score", ["--dataset", "D", "--cache-dir", ""])
    assert ctx.params["cache_dir"] == str(tmp_path)


def test_one_exit_code_table_for_every_command():
    """errors.EXIT_CODES, the error classes and docs/cli.md say the same."""
    doc = (REPO / "docs" / "cli.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", doc, re.M)}
    assert documented == set(errors.EXIT_CODES.values())
    classes = [errors.OptionError, errors.DatasetError, errors.RegistryError, errors.EstimatorError]
    classes.append(errors.TrackingError)
    assert {c.exit_code for c in classes} <= set(errors.EXIT_CODES.values())
    for cls in classes:
        exc = cls("m", "x") if cls is errors.EstimatorError else cls("x")
        assert exit_code_of(exc) == cls.exit_code and f"`{cls.__name__}`" in doc
    assert exit_code_of(ValueError("x")) == 2 and exit_code_of(LookupError("x")) == 4


def test_error_messages_are_capped():
    text = "case 'c0' is broken. " * 100_000
    capped = errors.cap_message(text)
    assert len(capped) < errors.MESSAGE_LIMIT + 100 and "characters left out" in capped
    assert errors.cap_message("short") == "short"


def test_a_bug_still_shows_its_traceback():
    """Only input errors become one line; anything else is a bug and propagates (exit 1, traceback)."""
    from mlflow_ccfv.cli.base import exit_on_input_error

    @click.command()
    def broken():
        with exit_on_input_error("broken"):
            raise ZeroDivisionError("a bug")

    result = CliRunner().invoke(broken, [])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)

    @click.command()
    def missing_key():
        with exit_on_input_error("missing_key"):
            raise KeyError("steps")  # e.g. options["steps"] in a command: a bug, not bad input

    result = CliRunner().invoke(missing_key, [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


@pytest.mark.slow
def test_rank_prints_the_stored_ranking(tracking_uri, tmp_path):
    """Score two versions for real, then ``rank`` prints the ranking ``score`` stored (same order,
    same values), as Markdown and as JSON; ``bank`` lists both versions."""
    runner = CliRunner()
    out = runner.invoke(main, ["synth", "--out", "data", "--task", "spleen", "--n-cases", "3", "--shape", "24,24,16"])
    assert out.exit_code == 0, out.output
    for seed in (0, 1):
        reg = runner.invoke(
            main,
            ["register", "--name", f"m{seed}", "--source-dataset", "none", "--small-spec", "UNet:1:2"]
            + ["--random-init", "true", "--seed", str(seed), "--bank", "r"],
        )
        assert reg.exit_code == 0, reg.output
    scored = runner.invoke(
        main,
        ["score", "--dataset", "Task09", "--data-root", "data", "--bank", "r", "--methods", "ccfv,logme"]
        + ["--rank-by", "ccfv_twin"],
    )
    assert scored.exit_code == 0, scored.output
    score_rows = [line.split("|")[1:6] for line in scored.output.splitlines() if re.match(r"^\| \d+ \|", line)]

    shown = runner.invoke(main, ["rank", "--dataset", "Task09"])
    assert shown.exit_code == 0, shown.output
    rank_rows = [line.split("|")[1:7] for line in shown.output.splitlines() if re.match(r"^\| \d+ \|", line)]
    # the twin `score` registered is scored but, a random-init control, not ranked: two rows, as printed
    assert [r[:2] for r in rank_rows] == [r[:2] for r in score_rows] and len(rank_rows) == 2
    header = next(line for line in shown.output.splitlines() if line.startswith("| rank"))
    assert [c.strip() for c in header.split("|")[1:8]] == [
        "rank",
        "model",
        "bank",
        "architecture",
        "source_dataset",
        "ccfv_twin",
        "ccfv",
    ]  # the column ranked by first
    records = json.loads(runner.invoke(main, ["rank", "--dataset", "Task09", "--bank", "r", "--json"]).output)
    assert [r["rank"] for r in records] == [1, 2]
    assert records[0]["ccfv_twin"] >= records[1]["ccfv_twin"] and {"logme", "model", "ccfv"} <= set(records[0])
    stored = {r["model"]: r["ccfv_twin"] for r in records}
    printed = {r[1].strip(): float(r[4]) for r in score_rows}  # score printed the same ranking column
    assert printed == pytest.approx(stored, abs=1e-4)

    # score --json prints the table it ranked: the same models and ranks as the stored ranking
    rescored = runner.invoke(
        main,
        ["score", "--dataset", "Task09", "--data-root", "data", "--bank", "r", "--methods", "ccfv,logme", "--json"]
        + ["--rank-by", "ccfv_twin"],
    )
    assert rescored.exit_code == 0, rescored.output
    table = json.loads(rescored.output)
    ranked = {(r["model"], r["rank"]) for r in table if r["rank"] is not None}  # the twin: scored, not ranked
    assert ranked == {(r["model"], r["rank"]) for r in records}
    assert [r["source_dataset"] for r in table if r["rank"] is None] == ["random-init"]
    assert all({"ccfv", "logme", "architecture", "error"} <= set(r) for r in table)

    listed = runner.invoke(main, ["bank", "--bank", "r"])
    assert listed.exit_code == 0 and "models:/m0/1" in listed.output and "models:/m1/1" in listed.output


def _mlflow_command(entry: str, **given: str) -> list[str]:
    """The command line ``mlflow run . -e <entry> -P name=value ...`` executes, built by MLflow itself."""
    spec = _entry_points()[entry]
    required = {n: "Task09" for n, p in spec["parameters"].items() if not (isinstance(p, dict) and "default" in p)}
    if entry == "finetune":
        required["model"] = "models:/m/1"
    point = _mlflow_project().get_entry_point(entry)
    return shlex.split(point.compute_command({**required, **given}, None))


def _boolean_parameters() -> list[tuple[str, str]]:
    return [
        (entry, name)
        for entry, spec in sorted(_entry_points().items())
        for name, p in spec["parameters"].items()
        if isinstance(p, dict) and str(p.get("default")).lower() in ("true", "false")
    ]


def test_the_mlproject_offers_json_where_a_command_prints_a_table():
    for entry in ("rank", "bank", "score", "report"):
        assert ("json" in _entry_points()[entry]["parameters"]) and (entry, "json") in _boolean_parameters()


@pytest.mark.parametrize(("entry", "name"), _boolean_parameters())
def test_every_mlproject_boolean_takes_true_and_false_through_mlflow_run(entry, name):
    """``mlflow run . -e <entry> -P <name>=true`` (as MLflow builds the command) parses to ``True``, and
    ``false`` to ``False``: booleans are value options (``--json true``), not bare flags."""
    for text, expected in (("true", True), ("false", False), ("1", True), ("no", False)):
        argv = _mlflow_command(entry, **{name: text})
        assert argv[:3] == ["python", "-m", "mlflow_ccfv"]
        ctx = main.commands[argv[3]].make_context(argv[3], argv[4:])
        assert ctx.params[name] is expected, (entry, name, text)


@pytest.mark.parametrize(
    ("command", "args", "name"),
    [
        ("rank", ["--dataset", "D", "--json"], "json"),
        ("bank", ["--json", "--bank", "b"], "json"),
        ("score", ["--dataset", "D", "--force", "--json"], "force"),
        ("finetune", ["--model", "models:/m/1", "--dataset", "D", "--force"], "force"),
        ("synth", ["--out", "x", "--overwrite"], "overwrite"),
    ],
)
def test_a_boolean_option_alone_means_true(command, args, name):
    params = main.commands[command].make_context(command, args).params
    assert params[name] is True
    if command == "bank":
        assert params["bank"] == "b"  # the next option is not taken as the value


def _required_args(name: str) -> list[str]:
    return {
        "score": ["--dataset", "D"],
        "pretrain": ["--dataset", "D"],
        "finetune": ["--dataset", "D", "--model", "models:/m/1"],
        "register": ["--name", "n", "--source-dataset", "none"],
        "rank": ["--dataset", "D"],
        "log-dataset": ["--dataset", "D"],
        "select": ["--dataset", "D"],
        "select-study": ["--dataset", "D"],
        "export-bank": ["--bank", "b", "--out", "o"],
        "synth": ["--out", "o"],
        "verify": ["D"],
        "compare-studies": ["--development", "a", "--confirmation", "b"],
    }.get(name, [])


def _boolean_options() -> list[tuple[str, str]]:
    from mlflow_ccfv.cli.types import BoolText

    return [
        (name, opt)
        for name, command in sorted(main.commands.items())
        for p in command.params
        if isinstance(p.type, BoolText)
        for opt in p.opts
    ]


@pytest.mark.parametrize(("command", "option"), _boolean_options())
def test_a_bad_boolean_fails_at_once_naming_its_option(command, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    result = CliRunner().invoke(main, [command, *_required_args(command), option, "maybe"])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output and "true or false" in result.output
    assert not (tmp_path / "never.db").exists()  # refused while parsing: no store was opened


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["score", "--dataset", "D", "--log-dataset", "maybe"], "--log-dataset"),
        (["score", "--dataset", "D", "--num-cpus", "abc"], "--num-cpus"),
        (["score", "--dataset", "D", "--num-gpus", "-1"], "--num-gpus"),
        (["score", "--dataset", "D", "--executor", "dask"], "--executor"),
        (["score", "--dataset", "D", "--rank-by", "ccfv_twn"], "--rank-by"),
        (["score", "--dataset", "D", "--methods", "ccfv,lgme"], "--methods"),
        (["score", "--dataset", "D", "--split", "val"], "--split"),
        (["study", "--num-cpus", "two"], "--num-cpus"),
        (["report", "--rank-by", "best"], "--rank-by"),
        (["pretrain", "--dataset", "D", "--architecture", "ResNet"], "--architecture"),
        (["pretrain", "--dataset", "D", "--optimizer", "adam"], "--optimizer"),
        (["register", "--name", "n", "--source-dataset", "none", "--patch-size", "32,32"], "--patch-size"),
        (["synth", "--out", "o", "--orientation", "XYZ"], "--orientation"),
    ],
)
def test_a_bad_value_fails_before_any_work_naming_its_option(args, option, tmp_path, monkeypatch):
    """What issue 21 found: ``score --log-dataset maybe`` and ``--num-cpus abc`` failed only after
    "scoring 3 version(s)". Every such value is refused while the command line is parsed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "scoring" not in result.output and not (tmp_path / "never.db").exists()


def test_string_choices_are_str_enums():
    """Choices parse to their :class:`~mlflow_ccfv.options.StrEnum` member, which is also its text."""
    from mlflow_ccfv.options import ExecutorKind, Optimizer, Orientation, TargetSplit

    score = main.commands["score"].make_context("score", ["--dataset", "D", "--executor", "ray", "--split", "all"])
    assert score.params["executor"] is ExecutorKind.RAY and score.params["executor"] == "ray"
    assert score.params["split"] is TargetSplit.ALL and f"{score.params['split']}" == "all"
    pre = main.commands["pretrain"].make_context("pretrain", ["--dataset", "D", "--optimizer", "SGD"])
    assert pre.params["optimizer"] is Optimizer.SGD
    synth = main.commands["synth"].make_context("synth", ["--out", "o", "--orientation", "RAS"])
    assert synth.params["orientation"] is Orientation.RAS


def test_the_data_root_default_is_defined_once_and_documented_so():
    from mlflow_ccfv.cli.base import DEFAULT_DATA_ROOT

    defaults = {name: main.commands[name].make_context(name, _required_args(name)).params for name in DATA_COMMANDS}
    for name in ("score", "pretrain", "finetune", "demo"):
        assert defaults[name]["data_root"] == DEFAULT_DATA_ROOT, name
    assert main.commands["log-dataset"].make_context("log-dataset", ["--dataset", "D"]).params["data_root"] == (
        DEFAULT_DATA_ROOT
    )
    row = next(line for line in (REPO / "docs" / "cli.md").read_text().splitlines() if "`MLFLOW_CCFV_DATA`" in line)
    assert f"default `{DEFAULT_DATA_ROOT}`" in row
    assert f"`{defaults['verify']['data_root']}` for verify" in row
    assert f"`{defaults['study']['data_root']}` for study" in row
    assert "for study and demo" not in row
    help_text = CliRunner().invoke(main, ["demo", "--help"], terminal_width=200).output
    assert f"default: {DEFAULT_DATA_ROOT}]" in help_text


def test_every_progress_bar_is_silent_off_a_terminal():
    """tqdm's ``disable=None``: no bar when stderr is not a terminal (logs of CI, Ray, mlflow run)."""
    sources = [*(REPO / "mlflow_ccfv").rglob("*.py"), *(REPO / "bench").glob("*.py")]
    calls = [
        (path, m) for path in sources for m in re.finditer(r"\btqdm\((.*?)\n\s*\)|\btqdm\((.*)\)", path.read_text())
    ]
    assert calls
    for path, match in calls:
        assert "disable=None" in match.group(0), f"{path.name}: {match.group(0)[:80]}"


def test_synthesising_with_progress_writes_no_bar_to_a_pipe(tmp_path):
    import subprocess
    import sys

    code = "from mlflow_ccfv.data.synthetic import generate_task; generate_task('Task09', 'out', n_cases=2, shape=(16, 16, 16))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=_child_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out").is_dir()
    assert "\r" not in done.stderr and "synthesising" not in done.stderr


def _child_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_every_writing_command_logs_to_a_named_experiment(tracking_uri, monkeypatch):
    """``ccfv`` by default; ``--experiment`` or ``$MLFLOW_EXPERIMENT_NAME`` choose (the option wins);
    under ``mlflow run`` (``MLFLOW_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID`` set) the run's experiment stays."""
    import os

    import mlflow
    from mlflow.tracking import fluent

    from mlflow_ccfv.cli.base import DEFAULT_EXPERIMENT

    client = mlflow.MlflowClient()

    def experiment_of_register(name: str, *extra: str) -> str:
        args = ["register", "--name", name, "--source-dataset", "none", "--small-spec", "UNet:1:2"]
        out = CliRunner().invoke(main, [*args, "--random-init", "true", *extra])
        assert out.exit_code == 0, out.output
        model_id = client.get_model_version(name, "1").source.removeprefix("models:/")
        return client.get_experiment(mlflow.get_logged_model(model_id).experiment_id).name

    assert experiment_of_register("a") == DEFAULT_EXPERIMENT
    assert experiment_of_register("b", "--experiment", "mine") == "mine"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert experiment_of_register("c") == "from-env"
    assert experiment_of_register("d", "--experiment", "given") == "given"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")

    chosen = client.create_experiment("chosen-by-mlflow-run")
    run = client.create_run(chosen)
    fluent._active_experiment_id = None  # a fresh process, as mlflow run starts
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", chosen)
    assert experiment_of_register("e") == "chosen-by-mlflow-run"
    assert experiment_of_register("f", "--experiment", "ignored") == "chosen-by-mlflow-run"
    assert client.get_experiment_by_name("ignored") is None


@pytest.mark.slow
def test_score_and_rank_json_equal_the_stored_tags_with_two_banks(tracking_uri, tmp_path):
    """Two banks on one target: each is ranked within itself (a bank is a candidate set); what `score
    --json` prints and what `rank --json` reads back equal the version tags, rank for rank."""
    from mlflow import MlflowClient

    pytest.register_assert_rewrite("mlflow_server")
    from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank

    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("zoo-a", seeds=(0, 1), prefix="a")
    register_tiny_bank("zoo-b", seeds=(2, 3, 4), prefix="b")
    runner = CliRunner()
    printed, printed_ccfv = {}, {}
    for bank in ("zoo-a", "zoo-b"):
        args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", bank, "--methods", "ccfv"]
        out = runner.invoke(main, [*args, "--cache-dir", str(tmp_path / "cache"), "--json"])
        assert out.exit_code == 0, out.output
        rows = json.loads(out.output[out.output.index("[") :])
        printed[bank] = {r["model"]: r["rank"] for r in rows}
        printed_ccfv.update({r["model"]: r["ccfv"] for r in rows})
    client = MlflowClient()
    stored, stored_ccfv = {}, {}
    for mv in client.search_model_versions():
        tags = client.get_model_version(mv.name, mv.version).tags
        if f"transferability.rank.{TARGET_TASK}" in tags:
            stored.setdefault(tags["ccfv.bank"], {})[f"{mv.name}/{mv.version}"] = int(
                tags[f"transferability.rank.{TARGET_TASK}"]
            )
            stored_ccfv[f"{mv.name}/{mv.version}"] = float(tags[f"transferability.ccfv.{TARGET_TASK}"])
    # the scores `score` prints are the stored digits, not the unrounded floats (`rank` prints those)
    assert {m: v for m, v in printed_ccfv.items() if m in stored_ccfv} == stored_ccfv
    for bank, ranks in printed.items():
        assert {m: r for m, r in ranks.items() if r is not None} == stored[bank]  # the twin: scored, unranked
        assert sorted(stored[bank].values()) == list(range(1, len(stored[bank]) + 1))
    records = json.loads(runner.invoke(main, ["rank", "--dataset", TARGET_TASK, "--json"]).output)
    assert {(r["bank"], r["model"], r["rank"]) for r in records} == {
        (bank, model, rank) for bank, ranks in stored.items() for model, rank in ranks.items()
    }
    from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING

    assert all(r[DEFAULT_RANKING] == r[DEFAULT_RANKING] for r in records)  # the column ranked by, shown
    header = next(
        line
        for line in runner.invoke(main, ["rank", "--dataset", TARGET_TASK]).output.splitlines()
        if line.startswith("| rank")
    )
    assert [c.strip() for c in header.split("|")[1:7]][-1] == DEFAULT_RANKING  # first after the model columns


def _init_fields(kind) -> set[str]:
    import dataclasses

    return {field.name for field in dataclasses.fields(kind) if field.init}


def _request_commands():
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest
    from mlflow_ccfv.pipelines.pretrain import PretrainRequest
    from mlflow_ccfv.pipelines.score_request import ScoreRequest
    from mlflow_ccfv.pipelines.score_task import ScoreConfig
    from mlflow_ccfv.pipelines.select import SelectRequest
    from mlflow_ccfv.pipelines.select_study import SelectStudyRequest
    from mlflow_ccfv.training import TrainConfig

    # command -> (the dataclasses its options fill, the options read elsewhere and where)
    return {
        "finetune": ((FinetuneRequest, TrainConfig), {"experiment"}),  # check_tracking_server
        "pretrain": ((PretrainRequest, TrainConfig), {"dataset", "experiment"}),  # dataset -> source
        "select": ((SelectRequest, TrainConfig), {"executor", "num_cpus", "num_gpus", "ray_address"}),  # executor
        "select-study": ((SelectStudyRequest,), set()),
        # json: the printed form; the sampler options go through sampler_overrides into ScoreConfig.sampler
        "score": (
            (ScoreRequest, ScoreConfig),
            {"experiment", "json", "roi_size", "overlap", "global_samples", "layer_budgets", "sampler_seed"},
        ),
    }


@pytest.mark.parametrize("name", ["finetune", "pretrain", "select", "select-study", "score"])
def test_every_option_reaches_its_request(name):
    """Requests are built field by field from the options of the same name
    (``shared_options.request_from_options``): an option whose name matches no field would be dropped
    without a word, so every option is a field or is listed here with where it goes."""
    kinds, elsewhere = _request_commands()[name]
    options = {param.name for param in main.commands[name].params}
    fields = set().union(*(_init_fields(kind) for kind in kinds))
    assert options - fields == elsewhere
    assert elsewhere <= options  # the list names only options the command has


def test_a_request_takes_the_parsed_options_and_keeps_its_defaults_for_empty_ones():
    from mlflow_ccfv.cli import shared_options as shared
    from mlflow_ccfv.pipelines.select_study import SelectStudyRequest

    options = {"dataset": "Task42", "data_root": "", "max_draws": 7, "bank": "b", "unrelated": 1}
    request = shared.request_from_options(SelectStudyRequest, options, seeds=(3,))
    assert (request.dataset, request.bank, request.max_draws, request.seeds) == ("Task42", "b", 7, (3,))
    assert request.data_root is None  # "" is not given: the request's default
