"""``api.bench`` end to end on a tiny grid (in-process cells): shared splits, baselines, the
statistics computed from the seeds' values, an interrupted cell resumed, a rerun that runs
nothing and changes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sctune import api, hookimpl, testing

STOP_AT = "cell_type__tiny__scgpt__lora__s1"


class _Interrupt:
    """Ctrl-C after the first epoch of one cell (its checkpoint is already written)."""

    @staticmethod
    @hookimpl
    def sctune_after_epoch(run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if run.run_dir.name.startswith(STOP_AT) and epoch == 1:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, make_grid, registry):
    """Run the grid three times: interrupted in one cell, resumed, then again (nothing to do)."""
    root = tmp_path_factory.mktemp("bench")
    grid = make_grid(root)
    out = root / "out"
    logs: list[str] = []
    stopper = testing.registry_with(("interrupt", _Interrupt))
    with pytest.raises(KeyboardInterrupt):
        api.bench(grid, out=out, registry=stopper, isolate=False, log=logs.append)
    partial = out / "runs" / f"{STOP_AT}.partial"
    info: dict[str, Any] = {
        "partial_existed": partial.is_dir(),
        "log_before": (partial / "train_log.jsonl").read_text().splitlines(),
        "finished_before": sorted(p.name for p in (out / "runs").iterdir()),
    }
    second = api.bench(grid, out=out, registry=registry, isolate=False, log=logs.append)
    snapshot = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((out / "runs").rglob("metrics.json"))
    }
    third = api.bench(grid, out=out, registry=registry, isolate=False, log=logs.append)
    return {
        "out": out,
        "second": second,
        "third": third,
        "snapshot": snapshot,
        "logs": logs,
        **info,
    }


def test_interrupted_cell_resumes_and_finished_cells_are_skipped(bench):
    second, third, out = bench["second"], bench["third"], bench["out"]
    assert bench["partial_existed"]
    assert bench["finished_before"] == [
        "cell_type__tiny__scgpt__lora__s0",
        f"{STOP_AT}.partial",
    ]
    # the rerun skipped the finished cell, resumed the interrupted one and ran the rest
    assert second.finished_earlier == ["cell_type__tiny__scgpt__lora__s0"]
    assert second.resumed == [STOP_AT]
    assert len(second.ran) == 7 and not second.failed
    log = (out / "runs" / STOP_AT / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2]
    assert log[0] == bench["log_before"][0]  # epoch 1 was not trained again
    assert not (out / "runs" / f"{STOP_AT}.partial").exists()
    # the third call runs nothing, and every run's metrics are byte-identical and untouched
    assert third.ran == [] and third.resumed == [] and len(third.finished_earlier) == 9
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in bench["snapshot"]}
    assert after == bench["snapshot"] and len(after) == 9


def test_every_cell_reads_the_shared_split(bench):
    out = bench["out"]
    for seed in range(3):
        shared = json.loads((out / "splits" / "tiny" / f"seed-{seed}.json").read_text())
        runs = sorted((out / "runs").glob(f"*__s{seed}"))
        assert len(runs) == 3  # lora, full, zero_shot
        for run in runs:
            used = json.loads((run / "split.json").read_text())
            assert {k: used[k] for k in ("train", "valid", "test")} == {
                k: shared[k] for k in ("train", "valid", "test")
            }
        base = json.loads((out / "baselines" / f"cell_type__tiny__s{seed}.json").read_text())
        assert base["test_cells"] == shared["test"]
    test0 = json.loads((out / "splits" / "tiny" / "seed-0.json").read_text())["test"]
    test1 = json.loads((out / "splits" / "tiny" / "seed-1.json").read_text())["test"]
    assert test0 != test1  # each seed draws its own split
    # the cell's recipe file reruns it: same seed and the shared split file
    recipe = api.load(out / "recipes" / f"{STOP_AT}.yaml")
    assert recipe.envelope.seed == 1
    assert Path(recipe.data.split.file) == (out / "splits" / "tiny" / "seed-1.json").resolve()
    env = json.loads((out / "env.json").read_text())
    assert env["sctune"] and env["torch"] and env["bench_libraries"]["scikit-learn"]
    assert "elsewhere" in json.loads((out / "plan.json").read_text())["absent_datasets"]
    assert any("dataset 'elsewhere' skipped" in line for line in bench["logs"])


def test_table_summary_and_intervals_come_from_the_seeds(bench):
    res = bench["out"] / "results"
    table = pd.read_csv(res / "table.csv")
    methods = table[table.backbone == "scgpt"]
    assert sorted(methods.method.unique()) == ["full", "lora", "zero_shot"]
    assert all(sorted(g.seed) == [0, 1, 2] for _, g in methods.groupby("method"))
    assert set(table[table.backbone == "-"].method) == {"logreg", "knn_pca"}
    assert (table.status == "ok").all() and len(table) == 15
    # the macro F1 of a run equals the one its own metrics.json reports
    for row in methods.itertuples():
        m = json.loads((Path(row.run_dir) / "metrics.json").read_text())
        assert row.macro_f1 == pytest.approx(m["test"]["macro_f1"])
        assert row.trainable_params == m["parameters"]["trainable"]
    summary = pd.read_csv(res / "summary.csv")
    lora = summary[(summary.backbone == "scgpt") & (summary.method == "lora")].iloc[0]
    values = methods[methods.method == "lora"].sort_values("seed").macro_f1.to_numpy()
    half = sps.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert lora.n_seeds == 3
    assert lora.macro_f1 == pytest.approx(values.mean())
    assert lora.macro_f1_ci_low == pytest.approx(max(0.0, values.mean() - half))
    assert lora.macro_f1_ci_high == pytest.approx(min(1.0, values.mean() + half))


def test_paired_comparisons_against_full_and_logreg(bench):
    comps = json.loads((bench["out"] / "results" / "comparisons.json").read_text())
    table = pd.read_csv(bench["out"] / "results" / "table.csv")
    got = {(c["backbone"], c["method"], c["reference"]): c for c in comps}
    assert ("scgpt", "lora", "full") in got and ("scgpt", "lora", "logreg") in got
    assert ("-", "knn_pca", "logreg") in got and ("scgpt", "full", "full") not in got
    c = got[("scgpt", "lora", "logreg")]
    assert c["test"].startswith("paired bootstrap") and c["seeds"] == [0, 1, 2]
    f1 = table.set_index(["backbone", "method", "seed"]).macro_f1
    per_seed = [f1[("scgpt", "lora", s)] - f1[("-", "logreg", s)] for s in range(3)]
    assert c["per_seed"] == pytest.approx(per_seed)
    assert c["delta"] == pytest.approx(np.mean(per_seed))
    assert c["ci_low"] <= c["ci_high"] and 0 < c["p"] <= 1
    assert c["seeds_better"] == sum(d > 0 for d in per_seed)


def test_per_class_f1_marks_rare_classes(bench):
    per = pd.read_csv(bench["out"] / "results" / "per_class.csv")
    lora = per[(per.backbone == "scgpt") & (per.method == "lora")]
    assert len(lora) == 10  # every training class
    assert lora.rare.any() and not lora.rare.all()
    assert (lora[lora.rare].train_share < 0.05).all()
    assert (lora[~lora.rare].train_share >= 0.05).all()
    md = (bench["out"] / "results" / "results.md").read_text()
    assert "Rare classes (< 5% of training cells)" in md
    assert "| scgpt / lora | 3 |" in md and "| logreg | 3 |" in md


def test_docs_markers_are_replaced(tmp_path: Path, bench):
    from sctune.bench.markdown import END, START, update_docs

    doc = tmp_path / "results.md"
    doc.write_text(f"# kept\n\nhand-written text\n\n{START}\nold\n{END}\n\n## kept too\n")
    update_docs(doc, (bench["out"] / "results" / "results.md").read_text())
    text = doc.read_text()
    assert text.startswith("# kept\n\nhand-written text") and text.endswith("## kept too\n")
    assert "old" not in text and "## sctune bench: tiny" in text  # headings one level down


def _chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and possible, else the test skips."""
    import os
    import shutil
    import subprocess

    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            capture_output=True,
            timeout=600,
            check=False,
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and cannot be installed here")
    return found


def test_html_report_renders_in_headless_chromium(bench, tmp_path: Path):
    """The report as a reader sees it: Chromium loads it offline, every plot decodes, the
    tables are there and the page logs nothing to the console."""
    import re
    import subprocess

    page = bench["out"] / "results" / "report.html"
    html_text = page.read_text()
    assert "http://" not in html_text and "https://" not in html_text  # nothing to fetch
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    # the three plots of the section are images that decoded (naturalWidth > 0 after load)
    for kind in ("pareto", "per_class", "umap"):
        assert f'id="{kind}-cell_type-tiny"' in dom
    n_img = len(re.findall(r"<img ", dom))
    assert n_img == 3
    assert f'data-images-loaded="{n_img}"' in dom
    # the summary table: one row per method and baseline, with intervals
    table = dom.split('id="summary-cell_type-tiny"', 1)[1].split("</table>", 1)[0]
    for name in ("scgpt / lora", "scgpt / full", "scgpt / zero_shot", "logreg", "knn_pca"):
        assert f"<td>{name}</td>" in table
    assert re.search(r"<td>0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]</td>", table)
    assert '<b id="cells-ok">9</b>' in dom
