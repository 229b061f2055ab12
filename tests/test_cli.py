"""The `ecos` command: help for every subcommand, privacy figures, clear errors."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ecos_cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args", [[], ["run"], ["index"], ["client"], ["client", "respond"], ["privacy"], ["privacy", "epsilon"], ["data"],
             ["pool"], ["pool", "ingest"], ["pool", "show"]]
)
def test_every_command_has_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_privacy_commands():
    assert runner.invoke(app, ["privacy", "epsilon", "--sigma", "6.1"]).output.strip() == "0.5839"
    assert float(runner.invoke(app, ["privacy", "sigma", "--epsilon", "0.58"]).output) == pytest.approx(6.14, abs=0.01)


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"data": {"client_domain": "klingon"}}')
    out = subprocess.run([sys.executable, "-m", "ecos_cli", "run", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "klingon" in out.stderr and "Traceback" not in out.stderr


def test_data_check_names_a_missing_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ecos_cli", "data", "check", str(tmp_path / "nope")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "nope" in out.stderr


@pytest.mark.parametrize("args, named", [
    (["pool", "show", "{tmp}/no-pool"], "no-pool: no ingested pool there"),
    (["pool", "ingest", "{tmp}/m.csv", "--to", "{tmp}/p", "--on-error", "ignore"], "--on-error must be fail or skip"),
    (["pool", "ingest", "{tmp}/missing.csv", "--to", "{tmp}/p"], "missing.csv: manifest not found"),
    (["pool", "ingest", "augment:ten", "--to", "{tmp}/p"], "expected augment:<count>"),
])  # fmt: skip
def test_pool_errors_are_one_line_naming_what_was_given(tmp_path, args, named):
    out = subprocess.run([sys.executable, "-m", "ecos_cli", *(a.format(tmp=tmp_path) for a in args)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p" / "pool.json").exists()
