"""The benchmark grid (`ecos bench quality`): every cell, resume, validation, Table 4, plots.

A tiny grid on the real data and backbone: two small client domains plus a distractor,
K=4, budget 30, five training steps."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from ecos_cli.main import app
from ecos_core.benchmark import run as bench
from ecos_core.benchmark.run import GridSpec, cell_key, grid_cells, grid_key
from ecos_core.sampling.hierarchy import ESTIMATOR
from ecos_core.privacy.accounting import gaussian_epsilon
from ecos_core.benchmark.report import all_plots, table4_frame, table4_markdown

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
ARGS = ["bench", "quality", "--client-domains", "mnistm,mnist", "--domain-sizes", "mnistm=150,mnist=150,animal=150",
        "--n-client-train", "40", "--n-client-test", "40", "--k", "4", "--budgets", "30",
        "--samplers", "ecos,oracle,random,local", "--applications", "labeling,labeling_fixmatch,compression,client_labeling",
        "--seeds", "0", "--sigmas", "6.1", "--max-epochs", "1", "--max-steps", "5", "--batch-size", "32",
        "--teacher-size", "100", "--no-progress"]  # fmt: skip
SPEC = GridSpec(client_domains=("mnistm", "mnist"), domain_sizes={"mnistm": 150, "mnist": 150, "animal": 150},
                n_client_train=40, n_client_test=40, k=4, budgets=(30,), samplers=("ecos", "oracle", "random", "local"),
                applications=("labeling", "labeling_fixmatch", "compression", "client_labeling"), seeds=(0,), sigmas=(6.1,),
                train={"max_epochs": 1, "max_steps": 5, "batch_size": 32}, teacher_size=100)  # fmt: skip


def _invoke(store, out, extra=()):
    return runner.invoke(app, [*ARGS, *extra, "--store", str(store), "--out", str(out)])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    result = _invoke(root / "store", root / "out")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root, result


def test_cli_spec_matches_the_grid(first_run):
    root, _ = first_run
    assert (root / "store" / "bench" / grid_key(SPEC) / "spec.json").is_file()


def test_a_row_for_every_cell(first_run):
    root, result = first_run
    frame = pd.read_csv(root / "out" / "results.csv")
    cells = grid_cells(SPEC)
    # 2 domains × (labeling 4 + labeling_fixmatch 3 + compression 3 + client_labeling 3): Local only for labeling
    assert len(cells) == 26 and len(frame) == 26
    fields = list(bench.ROW_FIELDS)
    got = set(frame[fields].fillna({"sigma": -1.0}).itertuples(index=False, name=None))
    want = {tuple(-1.0 if v is None else v for v in (c.model_dump()[f] for f in fields)) for c in cells}
    assert got == want
    for col in ("accuracy", "epsilon", "proxy_size", "unspent", "distractor_share", "client_domain_share",
                "bytes_down", "bytes_up", "client_macs", "client_s", "train_s"):  # fmt: skip
        assert col in frame, col
    assert frame["accuracy"].between(0, 1).all()
    lab = frame[(frame["sampler"] == "ecos") & (frame["application"] == "labeling")]
    assert (lab["epsilon"] - 0.5839).abs().max() < 1e-3
    assert (lab["bytes_down"] > 4 * 4 * 1280).all() and (lab["bytes_up"] > 4 * 4).all()
    assert (frame.loc[frame["sampler"] == "oracle", "epsilon"] == float("inf")).all()
    kl = frame[(frame["sampler"] == "ecos") & (frame["application"] == "client_labeling")]
    assert (kl["epsilon"] > lab["epsilon"].max()).all()  # coverage + kNN labels compose
    assert (frame.loc[frame["sampler"] != "local", "proxy_size"] == 30).all()
    fix = frame[frame["application"] == "labeling_fixmatch"]
    assert fix["mask_rate"].between(0, 1).all() and (fix["unlabelled_size"] > 0).all()
    assert "26 computed, 0 reused" in result.output


def test_resume_computes_nothing_twice(first_run, monkeypatch):
    root, _ = first_run
    calls = []
    real = bench.run_cell

    def counting(cell, ctx):
        calls.append(cell)
        return real(cell, ctx)

    monkeypatch.setattr(bench, "run_cell", counting)
    result = _invoke(root / "store", root / "out2")
    assert result.exit_code == 0, result.output
    assert calls == [] and "0 computed, 26 reused" in result.output
    # a lost cell (interrupted run) is the only one recomputed
    cells_dir = root / "store" / "bench" / grid_key(SPEC) / "cells"
    victim = cells_dir / f"{cell_key(grid_cells(SPEC)[0], SPEC)}.json"
    victim.unlink()
    result = _invoke(root / "store", root / "out2")
    assert result.exit_code == 0 and len(calls) == 1 and calls[0] == grid_cells(SPEC)[0]
    assert victim.is_file()
    assert pd.read_csv(root / "out2" / "results.csv").shape[0] == 26


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [("--client-domains", "mnistm,klingon", "klingon"), ("--samplers", "ecos,psychic", "psychic"),
     ("--applications", "labeling,telepathy", "telepathy"), ("--regimes", "sideways", "sideways")],
)  # fmt: skip
def test_unknown_axis_values_are_rejected_before_running(tmp_path, monkeypatch, flag, value, words):
    def boom(*_a, **_k):
        raise AssertionError("nothing may run for an invalid grid")

    monkeypatch.setattr(bench, "run_cell", boom)
    monkeypatch.setattr(bench, "BenchContext", boom)
    args = [*ARGS, "--regimes", "id+ood"]
    args[args.index(flag) + 1] = value
    result = runner.invoke(app, [*args, "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert words in result.output and "invalid benchmark grid" in result.output
    assert not (tmp_path / "s").exists()


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="unknown sampler"):
        GridSpec(samplers="ecos,nope")
    with pytest.raises(ValueError, match="unknown application"):
        GridSpec(applications=["labeling", "nope"])
    with pytest.raises(ValueError, match="klingon"):
        GridSpec(client_domains="klingon")
    with pytest.raises(ValueError, match="fewer than the client"):
        GridSpec(client_domains="mnist", domain_sizes={"mnist": 50, "animal": 50})


def test_cell_keys_are_stable_and_distinct():
    keys = [cell_key(c, SPEC) for c in grid_cells(SPEC)]
    assert keys == [cell_key(c, GridSpec.model_validate(SPEC.model_dump())) for c in grid_cells(SPEC)]
    assert len(set(keys)) == len(keys)
    # growing an axis keeps the grid key (finished cells are reused), changing the setting does not
    assert grid_key(SPEC.model_copy(update={"seeds": (0, 1)})) == grid_key(SPEC)
    assert grid_key(GridSpec.model_validate({**SPEC.model_dump(), "k": 5})) != grid_key(SPEC)
    two_sigmas = grid_cells(SPEC.model_copy(update={"sigmas": (3.0, 6.1)}))
    assert sum(c.sampler == "ecos" for c in two_sigmas) == 2 * sum(c.sampler == "ecos" for c in grid_cells(SPEC))


def test_the_cluster_hierarchy_enters_the_grid_key_only_when_on():
    """Cells stored before the hierarchy existed were computed without it: a grid that turns it
    off keeps their key; a grid that turns it on gets its own."""
    off = GridSpec.model_validate({**SPEC.model_dump(), "group_sizes": [], "group_sigmas": 3.0})
    assert not {"group_sizes", "group_sigmas"} & set(off.setting())
    assert grid_key(off) == grid_key(GridSpec.model_validate({**SPEC.model_dump(), "group_sizes": []}))
    on = GridSpec.model_validate({**SPEC.model_dump(), "group_sizes": [10, 20]})
    assert on.setting()["group_sizes"] == [10.0, 20.0] and grid_key(on) != grid_key(off)
    assert on.setting()["group_estimator"] == ESTIMATOR  # a changed estimator gets new cells
    assert grid_key(on) != grid_key(GridSpec.model_validate({**on.model_dump(), "group_sigmas": 3.0}))


def test_two_stage_probing_is_keyed_only_when_set_and_keeps_the_one_stage_epsilon():
    """Grids without two-stage probing keep their cells; with it, ECOS spends the same ε in two releases."""
    assert not {"two_stage_share", "two_stage_group_size"} & set(SPEC.setting())
    two = GridSpec.model_validate({**SPEC.model_dump(), "two_stage_share": 0.5, "samplers": ["ecos"],
                                   "applications": ["labeling"], "client_domains": ["mnist"]})  # fmt: skip
    assert two.setting()["two_stage_share"] == 0.5 and grid_key(two) != grid_key(SPEC)
    with pytest.raises(ValueError, match="annotator_feedback"):
        GridSpec.model_validate({**two.model_dump(), "annotator_feedback": True})
    row = bench.run_cell(grid_cells(two)[0], bench.BenchContext(two))
    assert row["epsilon"] == pytest.approx(gaussian_epsilon(6.1), rel=1e-4)
    assert 0 < row["proxy_size"] <= 30


def test_table4_layout(first_run):
    root, result = first_run
    md = (root / "out" / "table4.md").read_text()
    assert md in result.output
    for app_name in ("labeling", "labeling_fixmatch", "compression", "client_labeling"):
        assert f"### {app_name} · budget 30 · id+ood" in md
    frame = pd.read_csv(root / "out" / "results.csv")
    mix = (root / "out" / "proxy_mix.md").read_text()
    assert "| method " in mix and "mnistm: distractor" in mix and "mnist: unspent" in mix
    costs = (root / "out" / "costs.md").read_text()
    assert "download pool (KB)" in costs and costs.count("| id+ood") == 2  # one row per client domain
    lab = table4_frame(frame, "labeling", 30, "id+ood")
    assert list(lab.columns) == ["sampler", "mnistm", "mnist", "ε", "Average"]
    assert list(lab["sampler"]) == ["ecos", "oracle", "random", "local"]
    assert lab["mnistm"].str.fullmatch(r"\d+\.\d ± \d+\.\d").all()
    assert list(lab["ε"]) == ["0.58", "∞", "0", "0"]
    comp = table4_frame(frame, "compression", 30, "id+ood")
    assert list(comp["sampler"]) == ["ecos", "oracle", "random"]
    # several σ: one ECOS row per σ
    two = pd.concat([frame, frame[frame["sampler"] == "ecos"].assign(sigma=3.0, epsilon=1.4)])
    assert "ecos (σ=3)" in table4_markdown(two) and "ecos (σ=6.1)" in table4_markdown(two)


def test_plots_are_png(first_run):
    root, _ = first_run
    for name in ("accuracy_vs_budget.png", "accuracy_vs_epsilon.png", "domain_mix.png"):
        assert (root / "out" / name).read_bytes().startswith(PNG)
        assert (root / "store" / "bench" / grid_key(SPEC) / name).read_bytes().startswith(PNG)
    frame = pd.read_csv(root / "out" / "results.csv")
    sweep = pd.concat([frame, frame[frame["sampler"] == "ecos"].assign(sigma=3.0, epsilon=1.4),
                       frame.assign(budget=60)])  # fmt: skip
    assert all(png.startswith(PNG) for png in all_plots(sweep).values())


@pytest.fixture(scope="module")
def user_pool(tmp_path_factory):
    """A user's pool as a manifest: 120 optdigits images ("digits") and 120 animals ("shapes")."""
    from PIL import Image

    from ecos_core.data.builtin import load_domain

    root = tmp_path_factory.mktemp("userpool")
    rows = []
    for domain, builtin in (("digits", "optdigits"), ("shapes", "animal")):
        part = load_domain(builtin, max_samples=120, seed=0)
        for i, (image, label) in enumerate(zip(part.images, part.labels)):
            Image.fromarray(image).save(root / f"{domain}-{i}.png")
            rows.append({"uri": f"{domain}-{i}.png", "label": int(label), "domain": domain})
    pd.DataFrame(rows).to_csv(root / "pool.csv", index=False)
    return root


USER_ARGS = ["bench", "quality", "--client-domains", "digits", "--distractor-domains", "shapes",
             "--n-client-train", "40", "--n-client-test", "40", "--k", "4", "--budgets", "20",
             "--samplers", "ecos,random,local", "--applications", "labeling", "--seeds", "0", "--sigmas", "2",
             "--max-epochs", "1", "--max-steps", "3", "--batch-size", "16", "--no-progress"]  # fmt: skip


def test_grid_on_a_users_manifest_pool(user_pool, tmp_path):
    store, out = tmp_path / "s", tmp_path / "o"
    result = runner.invoke(app, [*USER_ARGS, "--pool-data", str(user_pool / "pool.csv"), "--store", str(store),
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    frame = pd.read_csv(out / "results.csv")
    assert sorted(frame["sampler"]) == ["ecos", "local", "random"]
    random = frame.set_index("sampler").loc["random"]
    assert random["proxy_size"] == 20 and 0.2 < random["distractor_share"] < 1  # the pool is ~3/4 shapes
    assert "### labeling · budget 20 · id+ood" in (out / "table4.md").read_text()
    # costs come from this pool: 240 images, 80 of them the client's, 28x28x3 bytes each
    costs = (out / "costs.md").read_text()
    assert re.search(r"\|\s+94\.08 \|\s+376\.3 \|", costs)  # upload 40 images (KB), download 160
    # the same path with other contents is another grid: nothing is reused
    table = pd.read_csv(user_pool / "pool.csv")
    table.loc[0, "label"] = (table.loc[0, "label"] + 1) % 10
    edited = tmp_path / "edited.csv"
    table.assign(uri=[str(user_pool / u) for u in table["uri"]]).to_csv(edited, index=False)
    again = runner.invoke(app, [*USER_ARGS, "--pool-data", str(edited), "--store", str(store), "--out", str(out)])
    assert again.exit_code == 0 and "3 computed, 0 reused" in again.output


@pytest.mark.parametrize(("change", "words"), [("client", "'nope' is not in the pool"), ("broken", "row 3 (")])
def test_users_pool_errors_stop_before_anything_is_written(user_pool, tmp_path, change, words):
    args, manifest = list(USER_ARGS), user_pool / "pool.csv"
    if change == "client":
        args[args.index("digits")] = "nope"
    else:
        table = pd.read_csv(manifest)
        table["uri"] = [str(user_pool / u) for u in table["uri"]]  # the copy lives elsewhere: only row 3 breaks
        table.loc[3, "uri"] = "gone.png"
        manifest = tmp_path / "broken.csv"
        table.to_csv(manifest, index=False)
    store = tmp_path / "s"
    result = runner.invoke(app, [*args, "--pool-data", str(manifest), "--store", str(store), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and words in result.output
    assert change == "client" or "gone.png): file not found" in result.output
    assert not store.exists()
