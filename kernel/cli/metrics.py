"""``orch metrics``: the operational metrics (SPEC OBS-001, OBS-002).

Public API:
    ``COMMANDS``; ``parse_address(text) -> (host, port)``; ``parse_since(text, now) -> float``.

Stability Guarantees:
    ``orch metrics --json`` prints the metrics document (``schemas/metrics.schema.json``) and
    writes ``.state/metrics.json`` and a sample row. ``--openmetrics FILE`` prints
    ``{"openmetrics": {"file", "bytes"}}``; ``--history`` prints ``{"samples": [document...]}``;
    ``--serve`` prints ``{"serving": {"host", "port", "url"}}`` once bound, then serves until
    Ctrl-C (exit 0). A non-loopback ``--serve`` address is refused (exit 2) unless
    ``--allow-remote`` is given.

Integration Points:
    ``kernel.observe.metrics`` (collect, write_metrics, samples, render_openmetrics, serve).

Dependencies:
    click; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.cli.common``, ``kernel.observe.metrics``, ``kernel.store.project``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from kernel.base import clock
from kernel.base.errors import EXIT_OK, OrchError, UsageError
from kernel.base.files import write_atomic
from kernel.cli.common import CliState, command, emit
from kernel.observe import metrics as m
from kernel.store.project import Project

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError("usage", f"--serve wants HOST:PORT, not {text!r}",
                         hint="e.g. --serve 127.0.0.1:9464 (port 0 picks a free port)")
    return host.strip("[]"), int(port)


def parse_since(text: str, now: float) -> float:
    """An ISO-8601 time (``2026-11-24T10:00:00Z``) or a duration back from now (``30m``,
    ``24h``, ``7d``) -> epoch seconds."""
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return clock.epoch(text.strip())
    except ValueError:
        raise UsageError("usage", f"--since wants a time or a duration, not {text!r}",
                         hint="e.g. --since 24h, --since 7d or --since 2026-11-24T00:00:00Z"
                         ) from None


def _summary(doc: dict[str, Any], path: Path) -> None:
    ws, tasks, workers = doc["workstreams"], doc["tasks"], doc["workers"]
    avg = tasks["avg_duration_seconds"]
    click.echo(f"metrics at {doc['timestamp']} (written to {path})")
    click.echo(f"workstreams  active {ws['active']}  completed today {ws['completed_today']}  "
               f"failed today {ws['failed_today']}  total {ws['total']}")
    click.echo("tasks        " + "  ".join(f"{s} {tasks[s]}" for s in m.TASK_STATES))
    click.echo(f"             avg duration {'-' if avg is None else f'{avg:.1f} s'}  "
               f"completions in the last hour {tasks['completion_rate_per_hour']:g}")
    click.echo(f"workers      total {workers['total']}  idle {workers['idle']}  busy "
               f"{workers['busy']}  unresponsive {workers['unresponsive']}  utilization "
               f"{workers['avg_utilization']:.0%} (last hour)")
    errors = [f"{mode} {n}" for mode, n in doc["errors"].items() if n]
    click.echo("errors today " + (", ".join(errors) if errors else "none"))


def _history_table(docs: list[dict[str, Any]]) -> None:
    if not docs:
        click.echo("no samples in that range")
        return
    header = (f"{'sampled_at':<25} {'pending':>7} {'running':>7} {'done':>6} {'failed':>6} "
              f"{'busy/workers':>12} {'util':>5} {'errors':>6}")
    click.echo(header)
    for d in docs:
        t, w = d["tasks"], d["workers"]
        click.echo(f"{d['timestamp']:<25} {t['pending']:>7} {t['running']:>7} "
                   f"{t['completed']:>6} {t['failed']:>6} "
                   f"{str(w['busy']) + '/' + str(w['total']):>12} "
                   f"{w['avg_utilization']:>5.0%} {sum(d['errors'].values()):>6}")


@command("metrics")
@click.option("--openmetrics", "openmetrics", default=None, metavar="FILE",
              help="Write the metrics in the OpenMetrics text format to FILE ('-': stdout).")
@click.option("--serve", "serve", default=None, metavar="HOST:PORT",
              help="Serve the metrics for Prometheus on HOST:PORT until Ctrl-C.")
@click.option("--allow-remote", is_flag=True,
              help="Let --serve bind an address that is not loopback.")
@click.option("--history", is_flag=True, help="List the stored samples instead.")
@click.option("--since", default="24h", show_default=True,
              help="With --history: an ISO time or a duration back from now (30m, 24h, 7d).")
def metrics_cmd(state: CliState, openmetrics: str | None, serve: str | None,
                allow_remote: bool, history: bool, since: str) -> int:
    """Print the metrics (and write .state/metrics.json and a sample), or render, serve or
    list them."""
    chosen = [name for name, on in (("--openmetrics", openmetrics is not None),
                                    ("--serve", serve is not None), ("--history", history)) if on]
    if len(chosen) > 1:
        raise UsageError("usage", f"{' and '.join(chosen)} cannot be combined",
                         hint="run one `orch metrics` per mode")
    project = state.project()
    if serve is not None:
        return _serve(state, project, serve, allow_remote)
    now = time.time()
    if history:
        start = parse_since(since, now)
        with project.open(readonly=True) as conn:
            docs = m.samples(conn, since=start)
        emit(state, {"samples": docs}, lambda: _history_table(docs))
        return EXIT_OK
    if openmetrics is not None:
        with project.open() as conn:  # migrated, so the views it reads exist
            data = m.render_openmetrics(conn, now)
        if openmetrics == "-":
            if state.json:
                raise UsageError("usage", "--json and --openmetrics - both print to stdout",
                                 hint="write to a file, or drop --json")
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return EXIT_OK
        path = Path(openmetrics)
        try:
            write_atomic(path.resolve(), data.decode("utf-8"))
        except OSError as exc:
            raise OrchError("write_failed", f"cannot write {path}: {exc.strerror}",
                            file=str(path), hint="check the directory exists and is writable"
                            ) from exc
        emit(state, {"openmetrics": {"file": str(path), "bytes": len(data)}},
             f"wrote {len(data)} bytes of OpenMetrics text to {path}")
        return EXIT_OK
    with project.open() as conn:
        doc = m.write_metrics(conn, project.state_dir, now)
    emit(state, doc, lambda: _summary(doc, project.state_dir / m.METRICS_FILE))
    return EXIT_OK


def _serve(state: CliState, project: Project, address: str, allow_remote: bool) -> int:
    host, port = parse_address(address)
    if not allow_remote and not m.is_loopback(host):
        raise UsageError("remote_address_refused",
                         f"{host} is not a loopback address: the metrics would be reachable "
                         "from other machines",
                         hint=f"serve on 127.0.0.1:{port}, or pass --allow-remote on purpose")
    project.require_db()

    def ready(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}/metrics"
        emit(state, {"serving": {"host": bound_host, "port": bound_port, "url": url}},
             f"serving {url} (Ctrl-C stops)")
        sys.stdout.flush()

    try:
        m.serve(project, host, port, on_ready=ready)
    except OSError as exc:
        raise OrchError("address_unavailable", f"cannot listen on {address}: {exc.strerror}",
                        hint="pick another port (port 0 picks a free one)") from exc
    return EXIT_OK


COMMANDS: list[click.Command] = [metrics_cmd]
