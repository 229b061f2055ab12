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


FIRST_HOUR = [  # (args, what the one line must say): each fails in under a second, before any heavy import
    (["run", "--clients", "0"], "--clients: "),
    (["run", "--budget", "0"], "--budget: Input should be greater than or equal to 1 (got 0)"),
    (["run", "--store", "/proc/ecos-nope"], "store /proc/ecos-nope is not reachable/writable"),
    (["index", "--store", "/proc/ecos-nope"], "store /proc/ecos-nope is not reachable/writable"),
    (["privacy", "sigma", "--epsilon", "0"], "--epsilon must be > 0"),
    (["run", "--backbone", "resnet50"], "--backbone: unknown backbone 'resnet50'; known: mobilenet_v2, efficientnet_lite0, onnx"),
    (["index", "--backbone", "resnet50"], "--backbone: unknown backbone 'resnet50'; known: mobilenet_v2, efficientnet_lite0, onnx"),
    (["run", "--backbone", "onnx", "--model-sha256", "a" * 64], "--model-url: backbone 'onnx' needs model_url"),
    (["index", "--model-url", "m.onnx"], "--model-url: model_url is only for backbone 'onnx'"),
    (["run", "--backbone", "onnx", "--model-url", "m.onnx", "--model-sha256", "abc"], "--model-sha256: String should match"),
    (["index", "--feature-space", "adapted"], "--feature-space: Input should be 'backbone' or 'combined' (got 'adapted')"),
]


@pytest.mark.parametrize("args,says", FIRST_HOUR)
def test_first_hour_mistakes_fail_at_once_in_one_line(args, says):
    import time

    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ecos_cli", *args], capture_output=True, text=True)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "torch" not in out.stderr  # no heavy import was needed to say it (timing is left to benchmarks)
    assert time.monotonic() - start < 30  # a loose bound: the point is no 25 s of retries


def test_config_errors_name_the_file_and_key_and_suggest_the_closest(tmp_path):
    cases = {'{"budget": 5}': "--config {p}: budget: unknown key; did you mean 'sampling.budget'?",
             '{"sampling": {"budjet": 5}}': "--config {p}: sampling.budjet: unknown key; did you mean 'sampling.budget'?",
             '{"budget": 5,': "--config {p}: not valid JSON (line 1, column 14",
             '{"sigma": -1}': "--config {p}: sigma: Input should be greater than 0 (got -1)"}  # fmt: skip
    for i, (text, says) in enumerate(cases.items()):
        path = tmp_path / f"cfg{i}.json"
        path.write_text(text)
        out = subprocess.run([sys.executable, "-m", "ecos_cli", "run", "--config", str(path)], capture_output=True, text=True)
        assert out.returncode == 2 and says.format(p=path) in out.stderr, out.stderr
        assert "pydantic" not in out.stderr and "errors.pydantic.dev" not in out.stderr


def test_the_example_config_is_valid():
    from pathlib import Path

    from ecos_cli.config_errors import read_config_file, validate
    from ecos_core.config import RoundConfig

    path = Path(__file__).resolve().parent.parent / "examples" / "round.json"
    assert validate(RoundConfig, read_config_file(path), {}, str(path)).sampling.budget == 1000


def test_enrolling_an_enrolled_client_says_rotate(tmp_path):
    args = [sys.executable, "-m", "ecos_cli", "clients", "enroll", "dev-1", "--store", str(tmp_path / "s")]
    assert subprocess.run([*args, "--out", str(tmp_path / "a.json")], capture_output=True).returncode == 0
    out = subprocess.run([*args, "--out", str(tmp_path / "b.json")], capture_output=True, text=True)
    assert out.returncode == 2 and "--rotate" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_an_invitation_is_written_for_its_owner_only(tmp_path):
    """Its pre-signed upload URL lets whoever holds it answer for the client."""
    from ecos_core.storage import layout
    from ecos_core.storage.store import Store

    Store(str(tmp_path / "s")).write_bytes(layout.invitation("r1", "dev-1"), b'{"round_id": "r1"}')
    result = runner.invoke(app, ["clients", "invitation", "dev-1", "--round", "r1", "--out", str(tmp_path / "i.json"),
                                 "--store", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "i.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_ctrl_c_stops_a_run_within_seconds_and_a_rerun_resumes_it(tmp_path):
    """Ctrl-C: one line, exit within 10 s, no process left, the round folder marked
    interrupted; the same command with --round-id finishes it and clears the mark."""
    import json
    import os
    import signal
    import time

    import psutil

    from tests_helpers_tiny import TINY_ROUND

    (tmp_path / "cfg.json").write_text(json.dumps(TINY_ROUND))
    store = tmp_path / "store"
    env = dict(os.environ, ECOS_DEVICE_DIR=str(tmp_path / "devices"), PREFECT_HOME=str(tmp_path / "prefect"))
    cmd = [sys.executable, "-m", "ecos_cli", "run", "--config", str(tmp_path / "cfg.json"), "--store", str(store),
           "--round-id", "r-int"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = store / "rounds" / "r-int" / "steps.json"
    deadline = time.monotonic() + 300
    while not steps.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the index is done: Prefect, its server and the data are all up
    assert proc.poll() is None, proc.communicate()
    children = psutil.Process(proc.pid).children(recursive=True)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped_s = time.monotonic() - start
    assert proc.returncode == 130 and stopped_s < 10, (proc.returncode, stopped_s, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted: round r-int stopped; its finished steps are kept. Resume it with: ecos run --config "
                     f"{tmp_path / 'cfg.json'} --store {store} --round-id r-int"], err[-800:].replace("\r", "\n")  # fmt: skip
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert (store / "rounds" / "r-int" / "INTERRUPTED.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (store / "rounds" / "r-int" / "INTERRUPTED.json").exists()
    assert (store / "rounds" / "r-int" / "report.md").exists()


def test_class_balance_is_on_by_default_and_the_flag_turns_it_off(tmp_path):
    from ecos_cli.main import _round_config

    assert _round_config(None, {"sampling.class_balance": None}).sampling.class_balance
    cfg_file = tmp_path / "round.json"
    cfg_file.write_text('{"sampling": {"class_balance": true, "budget": 500}}')
    cfg = _round_config(cfg_file, {"sampling.class_balance": False})  # the flag over the file
    assert not cfg.sampling.class_balance and cfg.sampling.budget == 500
    assert "--no-class-balance" in runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
