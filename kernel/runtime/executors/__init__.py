"""Executors: how a claimed task is run. One small module each; this one picks among them.

Public API:
    ``EXECUTORS`` (name → class), ``executor_for(definition) -> Executor``, and re-exports of
    ``ExecutionRequest``, ``ExecutionResult``, ``Executor``.

Stability Guarantees:
    A task picks its executor with ``execution.executor``; without it the type decides
    (``kernel.definitions.models.effective_executor``): ``aider`` → aider (the Aider CLI),
    ``pytest`` → pytest, ``lint`` → ruff, otherwise ``subprocess``. ``agent`` runs the agent CLI
    of ``[agents.NAME]`` (``"executor": "agent", "agent": "NAME"``).

Integration Points:
    ``kernel.runtime.worker``. A new executor (dask) is a new module plus one entry here.

Dependencies:
    ``kernel.definitions.executors``, ``kernel.runtime.executors.agent``,
    ``kernel.runtime.executors.aider``, ``kernel.runtime.executors.base``,
    ``kernel.runtime.executors.local``, ``kernel.runtime.executors.noop``,
    ``kernel.runtime.executors.pytest``, ``kernel.runtime.executors.ruff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel.definitions.executors import effective_executor
from kernel.runtime.executors.agent import AgentExecutor
from kernel.runtime.executors.aider import AiderExecutor
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult, Executor
from kernel.runtime.executors.local import SubprocessExecutor
from kernel.runtime.executors.noop import NoopExecutor
from kernel.runtime.executors.pytest import PytestExecutor
from kernel.runtime.executors.ruff import RuffExecutor

EXECUTORS: dict[str, type[Executor]] = {
    "subprocess": SubprocessExecutor,
    "noop": NoopExecutor,
    "pytest": PytestExecutor,
    "ruff": RuffExecutor,
    "aider": AiderExecutor,
    "agent": AgentExecutor,
}

__all__ = ["EXECUTORS", "ExecutionRequest", "ExecutionResult", "Executor", "executor_for"]


def executor_for(definition: Mapping[str, Any]) -> Executor:
    name = effective_executor((definition.get("execution") or {}).get("executor"),
                              definition.get("type"))
    return EXECUTORS[name]()
