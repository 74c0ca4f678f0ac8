"""The generic ``agent`` executor with a scripted agent CLI (tests/scripted_agent.py), run as a
real program by a real `orch run` in a real git repository: the context it is given, the
allow-listed environment, the judgement by the diff (out of scope, no change, missing context),
the revert of a failed attempt, the commit only after the post rules pass, and usage reported
through the output and the report file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel.runtime.executors.agent import agent_argv, agent_env, pattern_usage
from kernel.runtime.executors.agentkit import INSUFFICIENT_CONTEXT, AgentContext
from tests.conftest import git, orch

AGENT = Path(__file__).with_name("scripted_agent.py")
OLD = "def greet():\n    return 'old'\n"
NEW = "def greet():\n    return 'new'\n"


def make_project(root: Path, steps: list[dict[str, Any]], *, agent_toml: str = "",
                 rules_toml: str = "", files: dict[str, str] | None = None,
                 **task: Any) -> Path:
    """A git project with one agent task (``edit`` in ``ws``) running the scripted agent."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    orch("--root", str(root), "init", check=True)
    script = root / "agent-script.json"
    script.write_text(json.dumps(steps))
    command = [sys.executable, str(AGENT), str(script), "--message-file", "{prompt_file}",
               "--model", "{model}", "{files}"]
    with open(root / "orch.toml", "w") as fh:
        fh.write("[agents.scripted]\n"
                 f"command = {json.dumps(command)}\n"
                 'model = "scripted-1"\n'
                 'env = ["ALLOWED_*"]\n'
                 r"tokens_pattern = 'used (\d+) tokens'" "\n"
                 r"cost_pattern = 'cost \$([\d.]+)'" "\n" + agent_toml)
        fh.write("\n[workers]\nheartbeat_seconds = 0.5\nretry_jitter = 0\n"
                 "[run]\ntick_seconds = 0.05\n" + rules_toml)
    for name, content in {"app.py": OLD, "notes.md": "notes\n", **(files or {})}.items():
        (root / name).write_text(content)
    (root / ".gitignore").write_text("agent-script.json*\n")
    execution = {"executor": "agent", "agent": "scripted", "timeout_seconds": 60,
                 "prompt": "Make greet() return 'new'.", "retry_delay_seconds": 0,
                 **task.pop("execution", {})}
    definition = {"schema_version": "2.0.0", "task_id": "edit", "workstream_id": "ws",
                  "name": "edit app", "type": "custom", "execution": execution,
                  "context_requirements": {"max_context_tokens": 4000,
                                           "required_files": ["app.py"],
                                           "optional_files": ["notes.md"]},
                  "validation_rules": {"pre_execution": [], "post_execution": []}, **task}
    (root / "tasks" / "ws").mkdir(parents=True)
    (root / "tasks" / "ws" / "edit.json").write_text(json.dumps(definition))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    orch("--root", str(root), "load", check=True)
    return root


def run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALLOWED_TOKEN": "yes", "SECRET_KEY": "do-not-pass"}
    return subprocess.run([str(Path(sys.executable).parent / "orch"), "--root", str(root),
                           "run", "--workers", "1"], capture_output=True, text=True, env=env,
                          timeout=300)


def show(root: Path) -> dict[str, Any]:
    proc = orch("--root", str(root), "--json", "show", "edit")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def calls(root: Path) -> list[dict[str, Any]]:
    path = root / "agent-script.json.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def worktree(root: Path) -> Path:
    return root / ".state" / "worktrees" / "ws"


def output(attempt: dict[str, Any]) -> dict[str, Any]:
    out = attempt["output"]
    data: dict[str, Any] = json.loads(out) if isinstance(out, str) else out
    return data


# --------------------------------------------------------------------------- units


def test_the_command_template_expands_files_per_argument_and_never_twice() -> None:
    argv = agent_argv(["agent", "--msg={prompt_file}", "{files}", "--read={read_only_files}",
                       "-m", "{model}", "{unknown}"],
                      {"prompt_file": "/p/{task_id}", "task_id": "T", "model": "m1"},
                      ["a.py", "b c.py"], [])
    # A value is never scanned again ({task_id} inside the prompt file's value stays), an
    # argument with {files} repeats per file, one with no files is dropped, an unknown
    # placeholder is left as written.
    assert argv == ["agent", "--msg=/p/{task_id}", "a.py", "b c.py", "-m", "m1", "{unknown}"]


def test_the_environment_is_an_allow_list() -> None:
    env = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "OPENAI_API_KEY": "k",
           "ANTHROPIC_API_KEY": "a", "ORCH_TASK_ID": "t", "AWS_SECRET": "s"}
    assert agent_env(env, ["ANTHROPIC_*"]) == {
        "PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "ANTHROPIC_API_KEY": "a",
        "ORCH_TASK_ID": "t"}


def test_usage_patterns_sum_every_match() -> None:
    text = '{"input_tokens": 1200, "output_tokens": 34}\n{"total_cost_usd": 0.0123}'
    assert pattern_usage(text, r'"(?:input|output)_tokens":\s*(\d+)',
                         r'"total_cost_usd":\s*([\d.]+)') == {"tokens_used": 1234,
                                                             "cost": 0.0123}
    assert pattern_usage("nothing here", r"(\d+) tokens", None) == {}


def test_optional_files_are_added_while_they_fit(tmp_path: Path) -> None:
    (tmp_path / "req.py").write_text("x" * 300)       # 100 tokens
    (tmp_path / "small.md").write_text("y" * 30)      # 10 tokens
    (tmp_path / "big.md").write_text("z" * 3000)      # 1000 tokens
    (tmp_path / "secret.env").write_text("k")
    ctx = AgentContext.assemble(
        {"execution": {"prompt": "p" * 3},
         "context_requirements": {"max_context_tokens": 150, "required_files": ["req.py"],
                                  "optional_files": ["big.md", "small.md", "secret.env"],
                                  "exclude_patterns": ["*.env"]}}, tmp_path)
    assert (ctx.required, ctx.read_only, ctx.left_out) == (["req.py"], ["small.md"], ["big.md"])
    assert (ctx.required_tokens, ctx.total_tokens) == (101, 111)
    message = ctx.message()
    assert message.startswith("ppp\n") and "req.py" in message and "small.md" in message
    # The marker never starts a line of the note itself (an echo of it is no false alarm).
    assert not any(line.lstrip().startswith(INSUFFICIENT_CONTEXT)
                   for line in message.splitlines())


# --------------------------------------------------------------------------- end to end


def test_an_agent_edits_its_file_and_the_change_is_committed(tmp_path: Path) -> None:
    check = "import sys; sys.exit('new' not in open('app.py').read())"
    root = make_project(
        tmp_path / "p", [
            {"write": {"app.py": NEW}, "say": "done: used 120 tokens, used 30 tokens, cost $0.02",
             "report": {"commit_message": "Make greet() say new"}}],
        rules_toml=f"[rules]\ntests_still_passing = {json.dumps(f'python -c {check!r}')}\n"
                   .replace("python", sys.executable),
        validation_rules={"pre_execution": ["git_clean"],
                          "post_execution": ["tests_still_passing"]})
    proc = run(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    task = show(root)
    assert task["state"] == "completed"
    out = output(task["attempts"][-1])
    assert out["status"] == "success" and out["validation_status"] == "passed"
    assert out["files_modified"] == ["app.py"]
    assert out["commit_message"].startswith("Make greet() say new")
    assert "1 file changed" in out["diff_summary"]
    details = out.get("details", out)
    assert details.get("tokens_used", out["metadata"].get("tokens_used")) == 150
    assert details.get("cost", out["metadata"].get("cost")) == 0.02
    # The agent got the prompt and orch's note by file, its one editable file as an argument,
    # the model, and an environment reduced to the allow-list.
    (call,) = calls(root)
    assert call["argv"][-3:] == ["--model", "scripted-1", "app.py"]
    assert call["message"].startswith("Make greet() return 'new'.")
    assert "notes.md" in call["message"] and INSUFFICIENT_CONTEXT in call["message"]
    assert "ALLOWED_TOKEN" in call["env"] and "ORCH_AGENT_REPORT" in call["env"]
    assert "SECRET_KEY" not in call["env"]
    # The change was committed on the workstream's branch (merged into main when the workstream
    # completed), with the agent's message and trailers naming the agent and the model.
    log = git(root, "log", "-1", "--format=%B", "main^2")   # the task's commit, merged --no-ff
    assert log.startswith("Make greet() say new")
    assert "Orch-Agent: scripted" in log and "Orch-Model: scripted-1" in log
    assert (root / "app.py").read_text() == NEW
    # `orch show` says what the agent was given and what it did.
    text = orch("--root", str(root), "show", "edit", check=True).stdout
    for expected in ("agent:            scripted (agent executor)", "edits:            app.py",
                     "reads:            notes.md", "token budget:     4,000",
                     "files modified: app.py", "context: about ", "tokens 150"):
        assert expected in text, (expected, text)


def test_an_edit_outside_the_required_files_is_reverted_and_fails(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        {"write": {"app.py": NEW, "other.py": "x = 1\n", "notes.md": "changed\n"}}],
        execution={"max_retries": 1})
    proc = run(root)
    assert proc.returncode == 1
    task = show(root)
    assert task["state"] == "failed"
    assert len(task["attempts"]) == 2              # out of scope is retried like a failure
    for attempt in task["attempts"]:
        assert attempt["error_type"] == "out_of_scope"
        assert "notes.md, other.py" in attempt["error_message"]
    tree = worktree(root)
    # Nothing of either attempt is left: the required file is back, the new file is gone,
    # and the diff is kept for a person to review.
    assert (tree / "app.py").read_text() == OLD
    assert not (tree / "other.py").exists()
    assert (tree / "notes.md").read_text() == "notes\n"
    assert git(tree, "status", "--porcelain") == ""
    diff = root / ".state" / "agents" / "scripted" / "edit" / "attempt-1.diff"
    assert "+x = 1" in diff.read_text() and "return 'new'" in diff.read_text()


def test_missing_context_fails_for_review_without_retry(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        {"say": f"I need more.\n{INSUFFICIENT_CONTEXT} src/config.py (the settings)"}],
        execution={"max_retries": 2})
    assert run(root).returncode == 1
    task = show(root)
    assert task["state"] == "failed" and len(task["attempts"]) == 1
    attempt = task["attempts"][0]
    assert attempt["error_type"] == "insufficient_context"
    assert "src/config.py (the settings)" in attempt["error_message"]


def test_missing_context_through_the_report_file_reverts_partial_edits(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        {"write": {"app.py": NEW},
         "report": {"status": "insufficient_context", "needed": ["db.py", "models.py"]}}])
    assert run(root).returncode == 1
    attempt = show(root)["attempts"][0]
    assert attempt["error_type"] == "insufficient_context"
    assert "db.py, models.py" in attempt["error_message"]
    assert (worktree(root) / "app.py").read_text() == OLD


def test_no_change_is_a_failure_unless_the_task_allows_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [{"say": "all good"}])
    assert run(root).returncode == 1
    attempt = show(root)["attempts"][0]
    assert attempt["error_type"] == "no_change"
    allowed = make_project(tmp_path / "q", [{"say": "all good"}],
                           execution={"allow_no_change": True})
    assert run(allowed).returncode == 0
    assert show(allowed)["state"] == "completed"


def test_over_budget_fails_before_the_agent_starts(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [{"write": {"app.py": NEW}}],
                        files={"app.py": "x" * 30_000},
                        context_requirements={"max_context_tokens": 1000,
                                              "required_files": ["app.py"]})
    assert run(root).returncode == 1
    task = show(root)
    attempt = task["attempts"][0]
    assert attempt["failure_mode"] == "Context-Overflow"
    assert attempt["error_type"] == "context_overflow"
    assert calls(root) == []                       # the agent never started
    events = json.loads(orch("--root", str(root), "--json", "events", "--task", "edit").stdout)
    failed = [e for e in events["events"] if e.get("to_state") == "failed"]
    assert [e["event"] for e in failed] == ["context_overflow"]
    assert failed and failed[-1]["metadata"]["required_tokens"] > 10_000
    assert failed[-1]["metadata"]["max_tokens"] == 1000


def test_a_failing_post_rule_undoes_the_change_and_nothing_is_committed(tmp_path: Path) -> None:
    check = "import sys; sys.exit('new' in open('app.py').read())"
    root = make_project(
        tmp_path / "p", [{"write": {"app.py": NEW}}],
        rules_toml=f"[rules]\ntests_still_passing = {json.dumps(f'python -c {check!r}')}\n"
                   .replace("python", sys.executable),
        validation_rules={"pre_execution": [], "post_execution": ["tests_still_passing"]})
    head = git(root, "rev-parse", "main")
    assert run(root).returncode == 1
    task = show(root)
    attempt = task["attempts"][0]
    assert attempt["failure_mode"] == "Validation-Failed"
    assert "undone" in attempt["error_message"]
    tree = worktree(root)
    assert (tree / "app.py").read_text() == OLD
    assert git(tree, "status", "--porcelain") == ""
    assert git(tree, "rev-parse", "HEAD") == head  # no commit on the workstream's branch


def test_a_failing_agent_leaves_nothing_and_an_unknown_agent_never_starts(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [{"write": {"app.py": NEW}, "exit": 3}])
    assert run(root).returncode == 1
    attempt = show(root)["attempts"][0]
    assert attempt["exit_code"] == 3
    assert (worktree(root) / "app.py").read_text() == OLD
    unknown = make_project(tmp_path / "q", [{"write": {"app.py": NEW}}],
                           execution={"agent": "nosuch"})
    proc = orch("--root", str(unknown), "--json", "validate")
    warned = [p for p in json.loads(proc.stdout)["problems"] if p["code"] == "agent_unconfigured"]
    assert warned and warned[0]["severity"] == "warning" and "[agents.nosuch]" in \
        warned[0]["message"] and "scripted" in warned[0]["hint"]
    assert run(unknown).returncode == 1
    attempt = show(unknown)["attempts"][0]
    assert "[agents.nosuch]" in attempt["error_message"]
    assert calls(unknown) == []


@pytest.mark.parametrize("bad", [{"executor": "agent"}, {"agent": "x"},
                                 {"executor": "agent", "agent": "Bad Name"}])
def test_an_agent_task_must_name_a_well_formed_agent(tmp_path: Path, bad: dict[str, Any]
                                                     ) -> None:
    root = tmp_path / "p"
    root.mkdir()
    orch("--root", str(root), "init", check=True)
    (root / "tasks" / "ws").mkdir(parents=True)
    task = {"schema_version": "2.0.0", "task_id": "t", "workstream_id": "ws", "name": "t",
            "type": "custom", "execution": {"command": "true", **bad}}
    (root / "tasks" / "ws" / "t.json").write_text(json.dumps(task))
    proc = orch("--root", str(root), "validate")
    assert proc.returncode == 1
    assert "agent" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_timeout_kills_the_agents_group_and_reverts_its_edit(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [{"write": {"app.py": NEW}, "sleep": 120}],
                        execution={"timeout_seconds": 2})
    assert run(root).returncode == 1
    task = show(root)
    attempt = task["attempts"][0]
    assert task["failure_mode"] == "Task-Timeout"
    (call,) = calls(root)
    with pytest.raises(ProcessLookupError):
        os.killpg(call["pgid"], 0)                 # the agent's whole group is gone
    assert attempt["error_type"] == "timeout"
    assert (worktree(root) / "app.py").read_text() == OLD


def test_aider_gets_the_key_of_api_key_env_under_its_providers_variable(tmp_path: Path) -> None:
    from kernel.base.config import AiderConfig
    from kernel.base.errors import OrchError
    from kernel.runtime.executors.aider import aider_env

    settings = AiderConfig(model="anthropic/claude-x", api_key_env="MY_KEY")
    env = aider_env({"MY_KEY": "k1", "PATH": "/bin"}, tmp_path, settings)
    assert env["ANTHROPIC_API_KEY"] == "k1" and env["HOME"] == str(tmp_path)
    with pytest.raises(OrchError, match="MY_KEY, which is not set"):
        aider_env({"PATH": "/bin"}, tmp_path, settings)
    with pytest.raises(ValueError, match="PROVIDER/NAME"):
        AiderConfig(model="gpt-4o", api_key_env="MY_KEY")


def test_the_token_estimate_counts_non_ascii_characters_one_by_one(tmp_path: Path) -> None:
    from kernel.base.tokens import MAX_READ_BYTES, file_tokens, text_tokens

    assert text_tokens("abcdef") == 2
    assert text_tokens("αβγ δ") == 5             # Greek: bytes / 3 alone would say 3
    assert text_tokens("ok 😀") == 1 + 2           # "ok " is 3 ASCII bytes; the emoji 2
    (tmp_path / "greek.txt").write_text("λόγος " * 100, encoding="utf-8")
    # 500 Greek characters, and 100 spaces at 3 bytes per token: 34.
    assert file_tokens(tmp_path / "greek.txt") == text_tokens("λόγος " * 100) == 534
    assert file_tokens(tmp_path / "missing.txt") == 0
    assert MAX_READ_BYTES >= 1 << 20
