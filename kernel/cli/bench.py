"""``orch bench``: the benchmark suite, one table of figures against references and goals.

Public API:
    ``COMMANDS`` (``bench``).

Stability Guarantees:
    See ``kernel.cli``. ``orch bench [--quick] [--only NAME]... [--no-install] [--markdown]``
    runs the benchmarks of ``kernel.bench.BENCHMARKS`` (all, or those named; ``--only`` may be
    repeated or take a comma-separated list; an unknown name is a usage error, exit 2) in a
    temporary directory, never in a project, and prints one table: figure, value, reference,
    ratio, goal, met. ``--json`` prints ``kernel.bench.Report.as_dict()`` as one document.
    Exit 0 when every benchmark ran, whether or not its goals were met (unmet goals are
    reported, not errors); 1 when a benchmark crashed. ``--quick`` shrinks every size for a
    smoke test (its timings mean nothing). ``--no-install`` never installs the Huey reference
    (its figure is then unavailable unless an earlier run installed it). Progress goes to
    stderr on a terminal only.

Integration Points:
    ``kernel.bench.run``, ``kernel.bench.format_table``, ``kernel.bench.markdown_table``;
    docs/PERFORMANCE.md holds a full run's ``--markdown`` table.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.bench``, ``kernel.cli.common``.
"""

from __future__ import annotations

import sys

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, UsageError
from kernel.bench import BENCHMARKS
from kernel.cli.common import CliState, command, emit


@command("bench")
@click.option("--quick", is_flag=True,
              help="Shrink every size for a smoke test (seconds, not minutes; timings mean "
                   "nothing).")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this benchmark; repeat, or separate names with commas. Names: "
                   + ", ".join(BENCHMARKS) + ".")
@click.option("--no-install", is_flag=True,
              help="Never pip-install Huey (the reference of noop-throughput) into its cache "
                   "venv; the figure is unavailable unless it is installed already.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--keep", is_flag=True,
              help="Keep the temporary directory (projects, databases, logs) and name it.")
def bench_cmd(state: CliState, quick: bool, only: tuple[str, ...], no_install: bool,
              markdown: bool, keep: bool) -> int:
    """Run the benchmark suite and print its figures against references and goals.

    Every benchmark works in a temporary directory with seeded generated workloads; the full
    run takes several minutes (see docs/PERFORMANCE.md). Goals that are not met are reported,
    not errors: the exit code is 1 only when a benchmark crashed.
    """
    from kernel import bench

    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    try:
        bench.select(names)
    except KeyError as exc:
        raise UsageError("usage", f"unknown benchmark: {exc.args[0]}",
                         hint="one of: " + ", ".join(bench.BENCHMARKS)) from None
    say = bench.default_say if sys.stderr.isatty() else None
    report = bench.run(names or None, quick=quick, install=not no_install, say=say, keep=keep)
    if keep:
        click.echo(f"kept {report.machine['kept_directory']}", err=True)
    if markdown and not state.json:
        click.echo(bench.markdown_table(report))
    else:
        emit(state, report.as_dict(), bench.format_table(report))
    return EXIT_OK if report.ok else EXIT_FAILED


COMMANDS = [bench_cmd]
