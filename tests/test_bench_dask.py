"""orch bench --only dask: the report's shape from a real `--quick` run (a real LocalCluster of
worker processes), never its timings; and the rows a machine without dask.distributed gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.bench import dask as bench_dask
from kernel.bench.harness import CPU, SPAN, WALL
from tests.conftest import orch

FIELDS = {"benchmark", "figure", "value", "unit", "reference", "ratio", "goal", "met", "note"}


@pytest.mark.slow
def test_quick_dask_bench_runs_both_pools_to_the_end(tmp_path: Path) -> None:
    proc = orch("--json", "bench", "--only", "dask", "--quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout)  # exactly one JSON document
    assert report["ok"] is True and report["errors"] == []
    assert report["quick"] is True and report["benchmarks"] == ["dask"]
    figures = report["figures"]
    assert [(f["figure"], f["unit"]) for f in figures] == bench_dask.ROWS
    for fig in figures:
        assert set(fig) == FIELDS and fig["benchmark"] == "dask", fig
        assert isinstance(fig["value"], int | float), fig  # distributed is a test dependency
        assert fig["note"] and not fig["note"].startswith("unavailable"), fig
    by_name = {f["figure"]: f for f in figures}
    for name in (bench_dask.LOCAL_DONE, bench_dask.DASK_DONE):  # every task loaded, completed
        done = by_name[name]
        assert done["value"] == done["reference"] == 60, done
        assert done["met"] is True and done["goal"], done
    ratio = by_name[bench_dask.DASK_RATE]
    assert ratio["reference"] == by_name[bench_dask.LOCAL_RATE]["value"] > 0
    assert ratio["value"] > 0 and ratio["ratio"] > 0 and ratio["met"] is None
    assert "--executor dask --workers 2 --no-worktrees" in ratio["note"]
    assert "--executor" not in by_name[bench_dask.LOCAL_RATE]["note"]
    startup = by_name[bench_dask.STARTUP]
    assert startup["value"] > 0 and startup["reference"] > 0 and startup["ratio"] > 0
    assert isinstance(by_name[bench_dask.OVERHEAD]["value"], float)
    assert by_name[WALL]["value"] >= by_name[SPAN]["value"] > 0  # start-up and exit
    assert by_name[CPU]["value"] > 0 and by_name[CPU]["reference"] > 0
    assert "--executor dask" in by_name[WALL]["note"]
    assert not any(tmp_path.iterdir())  # the bench works in its own temporary directory


def test_without_distributed_every_row_is_unavailable_with_the_fix(tmp_path: Path) -> None:
    """A machine where `import distributed` fails (here: a package on PYTHONPATH that raises
    ImportError, as a missing one does) gets every row, no value, the reason and the fix,
    and no `orch run` is started."""
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    proc = subprocess.run([str(Path(sys.executable).parent / "orch"), "--json", "bench",
                           "--only", "dask", "--quick", "--keep"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["errors"] == []
    assert [(f["figure"], f["unit"]) for f in report["figures"]] == bench_dask.ROWS
    for fig in report["figures"]:
        assert fig["value"] is None and fig["met"] is None and fig["ratio"] is None, fig
        assert fig["note"].startswith("unavailable: --executor dask needs dask.distributed")
        assert "pip install 'orch-kernel[dask]'" in fig["note"], fig
    kept = Path(report["machine"]["kept_directory"])
    try:
        assert not (kept / "dask").exists()  # no project was made, no orch run started
    finally:
        shutil.rmtree(kept)
    assert not any(work.iterdir())
