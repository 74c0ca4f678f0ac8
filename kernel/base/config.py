"""The project's configuration file, ``orch.toml``: every key optional, defaults documented.

Public API:
    ``Config`` (frozen pydantic model: ``database``, ``workers``, ``run``, ``rules``, ``views``,
    ``bundle``, ``definitions``, ``agents``); ``load_config(path) -> Config`` (raises
    ``ConfigError``);
    ``config_problems(path) -> list[DocumentError]`` (every problem, for ``orch validate``);
    ``ConfigError(OrchError)`` with ``.problems``; ``DEFAULT_CONFIG_TOML`` (the commented file
    ``orch init`` writes).

Stability Guarantees:
    Keys are only added; a renamed key keeps its old name as an alias for at least one minor
    version. Unknown keys are an error naming the file and the key, so typos never pass
    silently. Types are strict: ``"60"`` is not a number, ``1`` is not a boolean (an integer is
    accepted where a float is expected). NaN, infinity, integers beyond 64 bits, negative
    durations and timeouts, durations over ``MAX_SECONDS``, a rule command that cannot be split
    into arguments and a ``[bundle] redact`` pattern that is not a regular expression are
    errors. Every problem is reported, each with its key and line (exit 1, code
    ``config_invalid``) by every command that reads the file.

Integration Points:
    ``kernel.store.project.Project.config``; the scheduler reads ``workers``, the validation rules
    read
    ``rules``, the connection factory reads ``database``, ``orch bundle`` reads ``bundle``,
    ``kernel.definitions.collect`` reads ``definitions`` (and lists this file's problems in ``orch
    validate`` / ``orch load``).

Dependencies:
    pydantic; ``kernel.base.documents``, ``kernel.base.errors``, ``kernel.base.formats``.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from kernel.base.documents import (
    DEFAULT_MAX_FILE_BYTES,
    MAX_SECONDS,
    DocumentError,
    path_text,
    read_file,
)
from kernel.base.errors import OrchError
from kernel.base.formats import parse_toml, toml_line

_HINT = "see the commented defaults in docs/operations/CONFIGURATION.md"


class _Section(BaseModel):
    # Strict like the definitions: no "60" for a number, no 1 for a boolean; no NaN/infinity.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


Seconds = Annotated[float, Field(le=MAX_SECONDS)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class DatabaseConfig(_Section):
    durability: Literal["normal", "full"] = "normal"
    busy_timeout_ms: int = Field(5000, ge=0, le=2**31 - 1)


class WorkersConfig(_Section):
    heartbeat_seconds: Seconds = Field(10.0, gt=0)
    unresponsive_after_missed: int = Field(3, ge=1, le=1_000_000)
    shutdown_after_unresponsive_seconds: Seconds = Field(180.0, gt=0)
    retry_backoff_cap_seconds: Seconds = Field(600.0, ge=0)
    retry_jitter: float = Field(0.1, ge=0, le=1)
    kill_grace_seconds: Seconds = Field(5.0, ge=0)
    #: An attempt's section of its task log keeps at most this many bytes: the first and the
    #: last half, with a line saying how much was cut between them.
    max_log_bytes_per_attempt: int = Field(16 * 1024 * 1024, ge=4096, le=1 << 40)


class RunConfig(_Section):
    worktrees: bool = True
    tick_seconds: Seconds = Field(0.25, gt=0)
    executor: Literal["local", "dask"] = "local"


_ADDRESS = r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$"


class DaskConfig(_Section):
    scheduler_address: str | None = Field(None, pattern=_ADDRESS)
    workers: int | None = Field(None, ge=1, le=1024)
    resources: dict[Annotated[str, Field(min_length=1)],
                    Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]] = Field(
        default_factory=dict)
    setup_command: str | None = Field(None, min_length=1)
    connect_timeout_seconds: Seconds = Field(30.0, gt=0)


class ExecutorsConfig(_Section):
    dask: DaskConfig = DaskConfig()


class RulesConfig(_Section):
    git_clean: str = "git status --porcelain"
    tests_passing: str = "python -m pytest -q"
    tests_still_passing: str = "python -m pytest -q"
    no_lint_errors: str = "ruff check ."
    no_security_issues: str | None = None


class ViewsConfig(_Section):
    export: bool = True
    export_min_interval_seconds: Seconds = Field(0.25, ge=0)
    metrics_interval_seconds: Seconds = Field(60.0, gt=0)


class BundleConfig(_Section):
    redact: list[Annotated[str, AfterValidator(_regex)]] = Field(default_factory=list)


class DefinitionsConfig(_Section):
    max_task_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, ge=1, le=2**30)


class AiderConfig(_Section):
    # The Aider executor (kernel.runtime.executors.aider); docs/agents/aider.md.
    executable: str = Field("aider", min_length=1)
    model: str | None = None
    api_base: str | None = None
    edit_format: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    # The variable of the worker's environment holding the API key; passed to Aider as
    # {PROVIDER}_API_KEY, PROVIDER being the model's prefix ("openai/gpt-4o" -> OPENAI_API_KEY).
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _key_needs_provider(self) -> AiderConfig:
        if self.api_key_env and "/" not in (self.model or ""):
            raise ValueError("api_key_env: set model as PROVIDER/NAME (e.g. openai/gpt-4o), so "
                             "orch knows which variable Aider reads the key from")
        return self

    def key_variable(self) -> str | None:
        """The variable Aider reads the key from (``OPENAI_API_KEY`` for ``openai/...``)."""
        if not self.api_key_env or not self.model:
            return None
        provider = self.model.split("/", 1)[0]
        return re.sub(r"[^A-Za-z0-9]", "_", provider).upper() + "_API_KEY"


_AGENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class AgentCommandConfig(_Section):
    # Any other agent CLI, run by the generic agent executor (kernel.runtime.executors.agent);
    # docs/agents/README.md. ``command`` is an argument list: no shell.
    command: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\*?$")]] = Field(
        default_factory=list)
    model: str | None = None
    tokens_pattern: Annotated[str, AfterValidator(_regex)] | None = None
    cost_pattern: Annotated[str, AfterValidator(_regex)] | None = None


class AgentsConfig(_Section):
    # [agents.aider] is the Aider executor's; any other [agents.NAME] is an agent CLI.
    model_config = ConfigDict(frozen=True, extra="allow", strict=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, AgentCommandConfig] = Field(init=False)
    aider: AiderConfig = AiderConfig()

    @model_validator(mode="after")
    def _names(self) -> AgentsConfig:
        for name in self.__pydantic_extra__ or {}:
            if not _AGENT_NAME.match(name):
                raise ValueError(f"agent name {name!r}: use lowercase letters, digits, - and _ "
                                 "(starting with a letter)")
        return self

    def command_agent(self, name: str) -> AgentCommandConfig | None:
        """The ``[agents.NAME]`` of an agent CLI, or None when orch.toml has none."""
        return (self.__pydantic_extra__ or {}).get(name)

    def command_agents(self) -> dict[str, AgentCommandConfig]:
        return dict(self.__pydantic_extra__ or {})


class Config(_Section):
    database: DatabaseConfig = DatabaseConfig()
    workers: WorkersConfig = WorkersConfig()
    run: RunConfig = RunConfig()
    rules: RulesConfig = RulesConfig()
    views: ViewsConfig = ViewsConfig()
    bundle: BundleConfig = BundleConfig()
    definitions: DefinitionsConfig = DefinitionsConfig()
    agents: AgentsConfig = AgentsConfig()
    executors: ExecutorsConfig = ExecutorsConfig()


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
# Where commands run: "local" (worker processes on this machine) or "dask" (on the workers of
# a Dask cluster, [executors.dask]; docs/operations/SCALING.md). `orch run --executor` wins.
executor = "local"

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
# built-in patterns for API keys, tokens, passwords and private keys). orch validate checks
# that each one compiles (Python `re` syntax).
redact = []

[definitions]
# orch validate and orch load refuse a task file (or workstream.json) larger than this many
# bytes, before reading it. The registries in capabilities/ may be as large as this, and
# always 1 MiB.
max_task_file_bytes = 1048576

[agents.aider]
# The Aider executor ("executor": "aider"); see docs/agents/aider.md. The program to run (a
# path, or a name looked up on PATH), and what it passes to Aider: --model, --openai-api-base,
# --edit-format (each left out when unset: Aider's own default) and extra arguments, appended
# as given. API keys come from the worker's environment (OPENAI_API_KEY, ...), never from here.
executable = "aider"
# model = "openai/gpt-4o"
# api_base = "http://127.0.0.1:8000/v1"
# edit_format = "whole"
# api_key_env = "MY_OPENAI_KEY"   # the variable holding the key; given to Aider as OPENAI_API_KEY
extra_args = []

# Any other agent CLI is a section of its own, run by the "agent" executor ("executor":
# "agent", "agent": "NAME"); recipes for Claude Code, Codex, Gemini CLI and OpenCode are in
# docs/agents/README.md. For example:
# [agents.claude]
# command = ["claude", "-p", "--output-format", "json", "{prompt}"]
# env = ["ANTHROPIC_API_KEY"]            # variables passed through, besides PATH, HOME, LANG...
# tokens_pattern = '"(?:input|output)_tokens":\\s*(\\d+)'   # summed over every match
# cost_pattern = '"total_cost_usd":\\s*([\\d.]+)'

[executors.dask]
# `orch run --executor dask` (docs/operations/SCALING.md; needs `pip install 'orch-kernel[dask]'`
# here and on every Dask worker). The scheduler to connect to; unset: orch starts a LocalCluster
# of worker processes on this machine. `--scheduler-address` wins.
# scheduler_address = "tcp://10.0.0.5:8786"
# The LocalCluster's size (default: the number of CPUs; `--workers` wins) and the resources
# each of its workers advertises (an external cluster's workers advertise their own, with
# `dask worker --resources "cpu_cores=8"`). A task asking for units of a resource some Dask
# worker advertises only runs on a worker advertising at least that many.
# workers = 4
resources = {}
# A shell command run on the Dask worker before each task, in the worker's directory, with the
# task's ORCH_* variables: for workers without the project at the same path on a shared file
# system (e.g. a git clone into $ORCH_WORKTREE). Unset: the working directory must exist there.
# setup_command = "test -d \"$ORCH_WORKTREE\" || git clone -q ssh://host/repo \"$ORCH_WORKTREE\""
# How long to wait for the scheduler (and for a LocalCluster to start).
connect_timeout_seconds = 30
"""


class ConfigError(OrchError):
    """``orch.toml`` is malformed: every problem in ``problems`` (each with its key path)."""

    def __init__(self, source: str, problems: list[DocumentError]) -> None:
        self.problems = problems
        listed = "".join(f"\n  - {_where(p)}{p.message}" for p in problems)
        super().__init__(
            "config_invalid", f"invalid configuration ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):{listed}", file=source,
            line=problems[0].line if len(problems) == 1 else None,
            hint=problems[0].hint if len(problems) == 1 and problems[0].hint else _HINT)


def _where(p: DocumentError) -> str:
    parts = [f"line {p.line}" if p.line else "", p.path]
    where = ", ".join(x for x in parts if x)
    return f"{where}: " if where else ""


def config_problems(path: Path) -> list[DocumentError]:
    """Every problem of the configuration file ``path`` (none when it does not exist)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []


def load_config(path: Path) -> Config:
    source = str(path)
    if not os.path.lexists(source):
        return Config()
    try:
        raw = read_file(source, max_bytes=DEFAULT_MAX_FILE_BYTES)
    except DocumentError as exc:
        raise ConfigError(source, [exc]) from None
    data, problems = parse_toml(raw, source)
    if problems:
        raise ConfigError(source, problems)
    text = raw.decode("utf-8")
    problems = _rule_problems(data, text, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, text, source) for err in exc.errors()] + problems
    if problems:
        raise ConfigError(source, problems)
    return config


def _rule_problems(data: dict[str, Any], text: str, source: str) -> list[DocumentError]:
    """A rule command kernel.runtime.rules could not split into arguments (checked here, in the
    file, so that the rules can still be given any string in code and fail at run time)."""
    problems = []
    rules = data.get("rules")
    for name, command in (rules.items() if isinstance(rules, dict) else ()):
        if not isinstance(command, str):
            continue  # the model reports it
        try:
            shlex.split(command)
        except ValueError as exc:
            loc = ("rules", name)
            problems.append(DocumentError(
                "config_invalid", f"the command cannot be split into arguments: {exc}",
                file=source, line=toml_line(text, loc), path=path_text(loc),
                hint="close the quote, or escape it with a backslash"))
    return problems


def _problem(err: Any, text: str, source: str) -> DocumentError:
    loc = tuple(err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(known)
        return DocumentError("config_invalid", f"unknown key '{loc[-1]}' ({hint})", file=source,
                             line=toml_line(text, loc), path=path_text(loc), hint=hint)
    return DocumentError("config_invalid", message, file=source, line=toml_line(text, loc),
                         path=path_text(loc), hint=_HINT)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)
