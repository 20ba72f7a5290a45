"""hallnll.tools.reproduce: the table registry, papermill batches of 06_training.ipynb, results files,
and run_seeds (``hallnll train --seeds/--parallel``). Digits only, tiny schedules."""
from __future__ import annotations

import csv
import json
import time
from argparse import Namespace
from pathlib import Path

import pytest

from hallnll.tools import cli, jobs, reproduce
from hallnll.tools.tables import Cell, Table

from conftest import TABLE5_TINY

ROOT = Path(__file__).resolve().parents[1]

# a few seconds per run on a loaded 2-core CPU
TINY = TABLE5_TINY  # ["epochs=3", "warmup_epochs=2", "cbased_epochs=2", "lr_decay_epoch=0", "train_subset=512"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Kernels inherit this: one torch thread per process, no oversubscription of 2 cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _args(table, tmp_path, **kw):
    d = dict(table=table, scale="quick", seeds=None, parallel=1, list=False, results=str(tmp_path / "results"),
             runs=str(tmp_path / "runs"), set=list(TINY))
    d.update(kw)
    return Namespace(**d)


# ---------------------------------------------------------------- registry
def test_registry_matches_the_paper():
    assert {"table1", "table2", "table3", "table5", "table7", "table8"} <= set(reproduce.TABLES)
    paper = {(t, c.key): c.paper_mean for t, tab in reproduce.TABLES.items() for c in tab.cells}
    assert paper[("table1", "ptd-20")] == 94.26 and paper[("table1", "ptd-40")] == 95.28
    assert [paper[("table2", k)] for k in ("cbased-10", "cbased-20", "cbased-40")] == [93.68, 92.98, 92.47]
    assert paper[("table3", "c10n-worst")] == 93.52 and paper[("table3", "c100n-noisy")] == 70.79
    assert [paper[("table5", k)] for k in ("gmm", "easy", "hallnll")] == [86.24, 89.77, 92.47]
    assert [paper[("table7", k)] for k in ("p-0.3", "p-0.4", "p-0.5")] == [90.38, 92.47, 92.38]
    assert [paper[("table8", k)] for k in ("lc-0.7", "lc-0.8", "lc-0.9")] == [91.12, 92.47, 91.53]
    for name in reproduce.TABLES:  # every cell's params file and overrides make a valid config at both scales
        for scale in ("paper", "quick"):
            for p in reproduce.plan_table(name, scale, "/nonexistent-runs"):
                assert not p.error, (name, p.cell.key, scale, p.error)


def test_quick_scale_keeps_the_method_settings_and_says_what_it_replaces():
    plans = {p.cell.key: p for p in reproduce.plan_table("table8", "quick", "runs")}
    assert plans["lc-0.7"].config["lambda_conf"] == 0.7 and plans["lc-0.9"].config["lambda_conf"] == 0.9
    assert all(p.config["dataset"] == "digits" and p.config["p"] == 0.4 for p in plans.values())
    assert all("classification-based" in p.note for p in plans.values())  # C-based CSV -> digits fallback
    ptd = reproduce.plan_table("table1", "quick", "runs")[1]
    assert ptd.config["noise"] == "ptd" and ptd.config["noise_rate"] == 0.4
    t3 = {p.cell.key: p for p in reproduce.plan_table("table3", "quick", "runs")}
    assert t3["c10n-worst"].config["noise_rate"] == pytest.approx(0.4021)
    assert t3["c100n-noisy"].config["lambda_mse"] == 150.0
    # the same settings share a run folder across tables; other settings do not
    same = {reproduce.plan_table("table5", "quick", "runs")[2].run_root,
            reproduce.plan_table("table7", "quick", "runs")[1].run_root,
            reproduce.plan_table("table8", "quick", "runs")[1].run_root}
    assert len(same) == 1
    assert plans["lc-0.7"].run_root != plans["lc-0.9"].run_root


def test_list_prints_every_table_and_needs(capsys):
    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in reproduce.TABLES:
        assert name in out
    assert "needs:" in out and "dependent0.4.csv" in out and "CIFAR-10_human" in out
    assert "quick scale:" in out and "200 epochs" in out


def test_unknown_table_errors_clearly(capsys, tmp_path):
    assert cli.main(["reproduce", "table99", "--runs", str(tmp_path / "r"), "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'table99'" in err and "table1" in err and "table5" in err
    assert not (tmp_path / "o").exists()
    assert cli.main(["reproduce"]) == 2
    assert "give a table" in capsys.readouterr().err
    with pytest.raises(reproduce.ReproduceError, match="known tables"):
        reproduce.get_table("nope")
    assert cli.main(["reproduce", "table5", "--cells", "gmm,nope", "--runs", str(tmp_path / "r"),
                     "--results", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "table5 has no cell nope; its cells: easy, gmm, hallnll" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- runs
def test_table5_quick_writes_results_and_does_not_redo_finished_runs(table5_quick, capsys):
    # reproduce table5 --scale quick --parallel 2, TINY (conftest.table5_quick: run once, shared with test_cluster)
    tmp_path, out = table5_quick
    md = (tmp_path / "results" / "table5.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| ") and "paper" not in l and "---" not in l]
    assert len(rows) == 3, md
    for paper in ("86.24 ± 0.90", "89.77 ± 1.45", "92.47 ± 0.41"):
        assert paper in md
    assert "quick" in md and "classification-based" in md
    with open(tmp_path / "results" / "table5.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["cell"] for r in table] == ["gmm", "easy", "hallnll"]
    for r in table:
        assert r["n_seeds"] == "1" and 0.0 < float(r["ours_mean"]) <= 100.0
        assert r["ours_std"] == ""  # one seed: no spread
        assert r["diff"] == ""  # digits numbers are not compared with the paper's CIFAR numbers
        assert Path(r["runs"], "seed0", "summary.json").is_file()
    assert md.startswith("## Table 5 at quick scale, on digits")
    assert "ours − paper" not in md and "± 0.00" not in md
    summaries = sorted((tmp_path / "runs").rglob("summary.json"))
    assert len(summaries) == 3
    assert all((s.parent / "06_training.ipynb").is_file() for s in summaries)  # the executed notebooks
    cfgs = [json.loads(s.read_text()) for s in summaries]
    assert sorted(c["variant"] for c in cfgs) == ["easy", "gmm", "hallnll"]
    assert all(c["dataset"] == "digits" and c["epochs"] == 3 for c in cfgs)
    stamps = [s.stat().st_mtime_ns for s in summaries]
    # second call: nothing is run again, the table is written again
    t0 = time.perf_counter()
    assert reproduce.main(_args("table5", tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("skip") == 3 and "FAILED" not in out
    assert time.perf_counter() - t0 < 20
    assert [s.stat().st_mtime_ns for s in summaries] == stamps
    assert "92.47 ± 0.41" in out  # the markdown table is printed
    # --cells: only that cell's run is planned (here finished: skipped); the table is still whole
    assert reproduce.main(_args("table5", tmp_path, cells="hallnll")) == 0
    out = capsys.readouterr().out
    assert "table5 cells hallnll at scale quick: 1 runs" in out and out.count("skip") == 1
    with open(tmp_path / "results" / "table5.csv") as f:
        assert list(csv.DictReader(f)) == table


def test_a_failing_cell_is_reported_while_the_others_complete(tmp_path, monkeypatch, capsys):
    q = "params/digits-quick.yaml"
    table = Table("tablex", "a test table", (
        Cell("good", "good", q, ("variant=ce",), 50.0, 1.0),
        Cell("missing-file", "missing file", q, ("noise=file", "noise_file=/nonexistent/labels.csv"), 60.0, 1.0),
    ))
    monkeypatch.setitem(reproduce.TABLES, "tablex", table)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tablex.md").write_text("the previous table\n")  # kept: runs failed
    rc = reproduce.main(_args("tablex", tmp_path, scale="paper", seeds=1))
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED" in out and "labels.csv" in out and "not found" in out  # the run's error
    nb = next((tmp_path / "runs").rglob("06_training.ipynb"), None)
    failed_nb = [p for p in (tmp_path / "runs").rglob("06_training.ipynb") if not (p.parent / "summary.json").exists()]
    assert nb is not None and len(failed_nb) == 1 and str(failed_nb[0]) in out  # reported with its notebook
    assert (tmp_path / "results" / "tablex.md").read_text() == "the previous table\n"
    assert "tablex.partial.md" in out and "the previous tablex.md is kept" in out
    rows = {r["cell"]: r for r in csv.DictReader(open(tmp_path / "results" / "tablex.partial.csv"))}
    assert rows["good"]["n_seeds"] == "1" and float(rows["good"]["ours_mean"]) > 0
    assert rows["missing-file"]["n_seeds"] == "0" and "not found" in rows["missing-file"]["error"]
    md = (tmp_path / "results" / "tablex.partial.md").read_text()
    assert "failed" in md and "| missing file | - | 0 |" in md


def test_run_seeds_in_parallel_then_resumes(tmp_path, capsys):
    out = tmp_path / "seeds"
    params = str(ROOT / "params" / "digits-quick.yaml")
    ov = TINY + ["variant=ce", "progress=false"]
    s = jobs.run_seeds(params, ov, out, seeds=2, parallel=2)
    assert [x.get("error") for x in s] == [None, None], s
    assert [x["seed"] for x in s] == [0, 1]
    assert (out / "seed0" / "summary.json").is_file() and (out / "seed1" / "summary.json").is_file()
    assert (out / "noise_report.txt").is_file()
    again = jobs.run_seeds(params, ov, out, seeds=2, parallel=1)
    assert all(x.get("skipped") for x in again)
    assert [x["best_acc"] for x in again] == [x["best_acc"] for x in s]
    # the CLI path: hallnll train --seeds N --parallel N prints one row per seed
    assert cli.main(["train", params, *sum((["--set", o] for o in ov), []), "--out", str(out), "--seeds", "2"]) == 0
    assert "seed" in capsys.readouterr().out
