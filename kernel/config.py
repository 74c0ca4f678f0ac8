"""The project's configuration file, ``orch.toml``: every key optional, defaults documented.

Public API:
    ``Config`` (frozen pydantic model: ``database``, ``workers``, ``run``, ``rules``, ``views``);
    ``load_config(path) -> Config``; ``DEFAULT_CONFIG_TOML`` (the commented file ``orch init``
    writes).

Stability Guarantees:
    Keys are only added; a renamed key keeps its old name as an alias for at least one minor
    version. Unknown keys are an error naming the file and the key, so typos never pass silently.

Integration Points:
    ``kernel.project.Project.config``; the scheduler reads ``workers``, the validation rules read
    ``rules``, the connection factory reads ``database``.

Dependencies:
    pydantic; tomllib (standard library).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernel.errors import OrchError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseConfig(_Section):
    durability: Literal["normal", "full"] = "normal"
    busy_timeout_ms: int = Field(5000, ge=0)


class WorkersConfig(_Section):
    heartbeat_seconds: float = Field(10.0, gt=0)
    unresponsive_after_missed: int = Field(3, ge=1)
    shutdown_after_unresponsive_seconds: float = Field(180.0, gt=0)
    retry_backoff_cap_seconds: float = Field(600.0, ge=0)
    retry_jitter: float = Field(0.1, ge=0, le=1)
    kill_grace_seconds: float = Field(5.0, ge=0)
    #: An attempt's section of its task log keeps at most this many bytes: the first and the
    #: last half, with a line saying how much was cut between them.
    max_log_bytes_per_attempt: int = Field(16 * 1024 * 1024, ge=4096)


class RunConfig(_Section):
    worktrees: bool = True
    tick_seconds: float = Field(0.25, gt=0)


class RulesConfig(_Section):
    git_clean: str = "git status --porcelain"
    tests_passing: str = "python -m pytest -q"
    tests_still_passing: str = "python -m pytest -q"
    no_lint_errors: str = "ruff check ."
    no_security_issues: str | None = None


class ViewsConfig(_Section):
    export: bool = True
    export_min_interval_seconds: float = Field(0.25, ge=0)
    metrics_interval_seconds: float = Field(60.0, gt=0)


class BundleConfig(_Section):
    redact: list[str] = Field(default_factory=list)


class Config(_Section):
    database: DatabaseConfig = DatabaseConfig()
    workers: WorkersConfig = WorkersConfig()
    run: RunConfig = RunConfig()
    rules: RulesConfig = RulesConfig()
    views: ViewsConfig = ViewsConfig()
    bundle: BundleConfig = BundleConfig()


DEFAULT_CONFIG_TOML = """\
# orch project configuration. Every key is optional: the values below are the defaults.
# Reference: docs/operations/CONFIGURATION.md

[database]
# "normal": SQLite synchronous=NORMAL in WAL mode. A crash never corrupts the database; a power
#           loss may lose the last few transactions.
# "full":   an fsync on every commit; slower, nothing committed is ever lost.
durability = "normal"
# How long a writer waits for another writer before giving up (exit code 3).
busy_timeout_ms = 5000

[workers]
# Workers heartbeat this often; one that misses `unresponsive_after_missed` heartbeats is
# unresponsive, and is shut down (its task handed on) after this many seconds unresponsive.
heartbeat_seconds = 10
unresponsive_after_missed = 3
shutdown_after_unresponsive_seconds = 180
# A failed attempt is retried after retry_delay_seconds * 2^retry_count (the task's setting),
# plus up to retry_jitter of that at random, and never later than the cap.
retry_backoff_cap_seconds = 600
retry_jitter = 0.1
# A command that times out or is cancelled gets SIGTERM; its whole process group gets SIGKILL
# this many seconds later.
kill_grace_seconds = 5
# Each attempt's section of .state/logs/{task}.log keeps at most this many bytes: its first and
# its last half, with a line saying how many bytes were cut between them.
max_log_bytes_per_attempt = 16777216

[run]
# In a git repository each workstream runs in its own worktree and branch
# (.state/worktrees/{ws}, branch orch/{ws}), merged into the base branch when it completes.
worktrees = true
# The scheduler re-checks timers (retry delays, heartbeats) at least this often; it wakes at
# once when another process commits.
tick_seconds = 0.25

[rules]
# The command each validation rule runs in the task's working directory; exit 0 passes.
# git_clean passes when the command prints nothing.
git_clean = "git status --porcelain"
tests_passing = "python -m pytest -q"
tests_still_passing = "python -m pytest -q"
no_lint_errors = "ruff check ."
# No default: a task that asks for no_security_issues fails with "not configured" until you set
# one, e.g. no_security_issues = "bandit -q -r src"
# no_security_issues = ""

[views]
# Keep the JSON views under .state/ (current.json, transitions.jsonl, indices, DAG and plan
# files, checkpoints) up to date while orch run runs and after commands that change state.
export = true
# At most one export per this many seconds during a run (exports also keep within ~10% of the
# run's time, so large projects export less often).
export_min_interval_seconds = 0.25
# How often a running kernel refreshes .state/metrics.json.
metrics_interval_seconds = 60

[bundle]
# Extra regular expressions whose matches orch bundle replaces by [REDACTED] (besides the
# built-in patterns for API keys, tokens, passwords and private keys).
redact = []
"""


def load_config(path: Path) -> Config:
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise OrchError(
            "config_invalid", f"not valid TOML: {exc}", file=str(path),
            hint="fix the syntax; `orch init` prints a commented example",
        ) from exc
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise OrchError(
            "config_invalid",
            f"{key}: {first['msg']}",
            file=str(path),
            hint="see the commented defaults in docs/operations/CONFIGURATION.md",
        ) from exc
