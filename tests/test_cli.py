"""The command line's habits: typed options that MLproject's text parameters convert to, environment
defaults, help lines, one exit-code table (docs/cli.md), and the read-only ``rank`` and ``bank`` commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
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
}


def _entry_points() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


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
        main, ["score", "--dataset", "Task09", "--data-root", "data", "--bank", "r", "--methods", "ccfv,logme"]
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

    listed = runner.invoke(main, ["bank", "--bank", "r"])
    assert listed.exit_code == 0 and "models:/m0/1" in listed.output and "models:/m1/1" in listed.output
