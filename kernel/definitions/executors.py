"""Which executor runs a task, and what an executor needs: the one home of those facts.

Public API:
    ``effective_executor(executor, task_type) -> str``; ``AGENT_EXECUTORS`` (the executors that
    run an agent CLI and build its command line themselves); ``EXECUTOR_CAPABILITIES``
    (executor -> the capability a worker must offer to run it).

Stability Guarantees:
    ``execution.executor`` wins; without it the type decides: ``aider`` -> aider, ``pytest`` ->
    pytest, ``lint`` -> ruff, anything else -> subprocess. Standard library only, so the
    light command paths (``orch show``) can ask without loading the models.

Integration Points:
    ``kernel.definitions.models`` (a task's command is optional for an agent executor),
    ``kernel.definitions.taskfiles`` (the implied capability), ``kernel.definitions.task_checks``
    (``required_file_new``), ``kernel.runtime.executors`` (which class runs the task),
    ``kernel.runtime.worker`` (the tree lock: exclusive for agents), ``kernel.cli.operator``
    (``orch show``).

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

__all__ = ["AGENT_EXECUTORS", "EXECUTOR_CAPABILITIES", "effective_executor"]

#: The executors that run an agent CLI and build its command line themselves.
AGENT_EXECUTORS = ("aider", "agent")
#: The capability a worker must offer to run a task of this executor.
EXECUTOR_CAPABILITIES = {"aider": "cap-aider-001"}
_EXECUTOR_BY_TYPE = {"aider": "aider", "pytest": "pytest", "lint": "ruff"}


def effective_executor(executor: str | None, task_type: str | None) -> str:
    """The executor a task runs with: ``execution.executor``, else its type's (aider -> aider,
    pytest -> pytest, lint -> ruff), else ``subprocess``."""
    return executor or _EXECUTOR_BY_TYPE.get(str(task_type), "subprocess")
