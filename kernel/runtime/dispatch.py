"""The kernel's end of its workers' links: claims and outcomes group-committed by ``orch run``.

Public API:
    ``Dispatcher(conn, workers_config)`` with ``add(sock)``, ``listen(server)`` (accept workers
    that join by hand), ``pump(timeout) -> Turn``, ``poke()``, ``busy()``, ``close()``;
    ``Turn``.

Stability Guarantees:
    ``orch run`` is the one writer of the hot path: each ``pump`` reads every report its
    workers sent (``kernel.runtime.channel``) and applies them all, in the order they arrived,
    together with the next claim of every worker that waits for work, in ONE ``BEGIN
    IMMEDIATE`` transaction (group commit); the replies and claims go out right after the
    commit. Each report is applied with the same functions a worker uses on its own
    (``kernel.runtime.claims``: the triggers check every transition, every transition writes
    its event in the same transaction, every report is a compare-and-set on the fencing
    generation), inside its own savepoint: a report that cannot be applied is rolled back alone
    and answered with ``state`` null, so its worker writes it itself and the others' reports
    still commit. Timestamps are read under the write lock, in order, so events stay in time
    order. A worker waiting for work is offered a claim after any report was applied, when it
    says hello, and after ``poke()`` (the scheduler queued something, another process
    committed); workers with the same offers stop being tried once one of them found nothing.

Integration Points:
    ``kernel.runtime.runner`` adds the kernel's end of each worker's socket pair and pumps
    between scheduler ticks; the reports are those of ``kernel.runtime.worker`` through
    ``kernel.runtime.channel.KernelLink``.

Dependencies:
    apsw; ``kernel.definitions.fit``, ``kernel.runtime.attempts``, ``kernel.runtime.channel``,
    ``kernel.runtime.claims``, ``kernel.runtime.leases``, ``kernel.store.db``.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import apsw

from kernel.definitions.fit import worker_limits, worker_offers
from kernel.runtime import attempts, claims, leases
from kernel.runtime.attempts import Claim
from kernel.runtime.channel import Wire, claim_to_wire
from kernel.store import db

__all__ = ["Dispatcher", "Turn"]


@dataclass
class Turn:
    """What one ``pump`` did."""

    reports: int = 0          # reports applied (finished, refused, validated)
    claims: int = 0           # claims made
    closed: int = 0           # links that closed (a worker exited or died)
    committed: bool = False   # a write transaction was committed


@dataclass
class _Peer:
    wire: Wire
    worker_id: str | None = None
    waiting: bool = False                 # waits for a claim (no report pending)
    offers: dict[str, str] | None = None
    limits: dict[str, float] | None = None
    scope: str | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)


class Dispatcher:
    """The kernel's end of every link; see the module docstring."""

    def __init__(self, conn: apsw.Connection, workers_config: Any) -> None:
        self.conn = conn
        self.lease_ttl = leases.ttl_for(workers_config)
        self.backoff = attempts.retry_backoff(workers_config)
        self.peers: dict[int, _Peer] = {}
        self.claims: dict[int, Claim] = {}     # attempt_id -> the claim it was given
        self.server: socket.socket | None = None
        self._dirty = False

    def add(self, sock: socket.socket) -> None:
        peer = _Peer(Wire(sock))
        self.peers[peer.wire.fileno()] = peer

    def listen(self, server: socket.socket) -> None:
        """Accept the workers that connect to ``server`` (``kernel.runtime.channel.listen``)."""
        self.server = server

    def poke(self) -> None:
        """Something may have become claimable: offer work to the waiting workers."""
        self._dirty = True

    def busy(self) -> int:
        """Workers with a task (known to this kernel)."""
        return sum(1 for p in self.peers.values() if p.worker_id and not p.waiting)

    def close(self) -> None:
        """Close every link: a worker still running a task writes its report itself."""
        for peer in self.peers.values():
            peer.wire.close()
        self.peers.clear()
        if self.server is not None:
            self.server.close()
            self.server = None

    # ------------------------------------------------------------------ one turn

    def pump(self, timeout: float) -> Turn:
        turn = Turn()
        inbox = self._read(timeout, turn)
        waiting = [p for p in self.peers.values() if p.waiting]
        if not inbox and not (self._dirty and waiting and self._anything_queued()):
            self._dirty = self._dirty and bool(waiting)
            return turn
        self._dirty = False
        with db.write_tx(self.conn):
            for peer, msg in inbox:
                self._apply(peer, msg, turn)
            self._claim_for_waiting(turn)
        turn.committed = True
        for peer in list(self.peers.values()):
            for reply in peer.replies:
                if not peer.wire.send(reply):
                    break
            peer.replies = []
        return turn

    def _read(self, timeout: float, turn: Turn) -> list[tuple[_Peer, dict[str, Any]]]:
        watched = list(self.peers) + ([self.server.fileno()] if self.server else [])
        if not watched:
            time.sleep(timeout)
            return []
        readable, _, _ = select.select(watched, [], [], timeout)
        inbox: list[tuple[_Peer, dict[str, Any]]] = []
        for fd in readable:
            if self.server is not None and fd == self.server.fileno():
                self._accept(self.server)
                continue
            peer = self.peers[fd]
            alive = peer.wire.feed()
            inbox.extend((peer, msg) for msg in peer.wire.take())
            if not alive:
                turn.closed += 1
                peer.wire.close()
                del self.peers[fd]
        return inbox

    def _accept(self, server: socket.socket) -> None:
        try:
            sock, _ = server.accept()
        except OSError:
            return
        sock.setblocking(True)
        self.add(sock)

    def _anything_queued(self) -> bool:
        return db.scalar(self.conn, "SELECT 1 FROM task WHERE state = 'queued' LIMIT 1") \
            is not None

    def _apply(self, peer: _Peer, msg: dict[str, Any], turn: Turn) -> None:
        op = msg.get("op")
        if op == "hello":
            peer.worker_id, peer.waiting = str(msg["worker_id"]), True
            peer.offers = worker_offers(self.conn, peer.worker_id)
            peer.limits = worker_limits(self.conn, peer.worker_id)
            peer.scope = db.scalar(self.conn, "SELECT workstreams FROM worker "
                                              "WHERE worker_id = ?", (peer.worker_id,))
            self._dirty = True
            return
        if op == "started":
            claims.record_process_in_tx(self.conn, int(msg["attempt_id"]), int(msg["pgid"]),
                                        str(msg["hostname"]))
            return
        claim = self.claims.get(int(msg.get("attempt_id") or 0))
        state: str | None = None
        error: str | None = None
        self.conn.execute("SAVEPOINT report")
        try:
            if claim is None:
                raise LookupError(f"no claim of attempt {msg.get('attempt_id')} is known")
            state = self._report_in_tx(claim, op, msg, max(time.time(), 0.0))
        except (apsw.Error, LookupError, KeyError, TypeError, ValueError) as exc:
            self.conn.execute("ROLLBACK TO report")
            state, error = None, f"{type(exc).__name__}: {exc}"
        self.conn.execute("RELEASE report")
        turn.reports += 1
        self._dirty = True
        if state is not None and state != "validating" and claim is not None:
            self.claims.pop(claim.attempt_id, None)
        peer.waiting = bool(msg.get("more")) and state not in (None, "validating")
        peer.replies.append({"op": "done", "state": state, "error": error, "claim": None})

    def _report_in_tx(self, claim: Claim, op: Any, msg: dict[str, Any], now: float) -> str:
        if op == "finished":
            return claims.finish_execution_in_tx(
                self.conn, claim, now, outcome=str(msg["outcome"]),
                exit_code=msg.get("exit_code"), error=msg.get("error"),
                duration=float(msg.get("duration") or 0.0), details=msg.get("details") or {},
                backoff=self.backoff, cancel_reason=msg.get("cancel_reason"))
        if op == "refused":
            return claims.fail_before_start_in_tx(
                self.conn, claim, now, rule=str(msg["rule"]), reason=str(msg["reason"]),
                rules=msg.get("rules") or {})
        if op == "validated":
            return claims.finish_validation_in_tx(
                self.conn, claim, now, passed=bool(msg["passed"]), summary=str(msg["summary"]),
                rules=msg.get("rules") or {}, duration=float(msg.get("duration") or 0.0),
                details=msg.get("details") or {})
        raise ValueError(f"unknown report {op!r}")

    def _claim_for_waiting(self, turn: Turn) -> None:
        """A claim for every waiting worker, in the same transaction; once a worker found
        nothing, others with the same offers and scope are not tried."""
        exhausted: set[tuple[Any, ...]] = set()
        for peer in self.peers.values():
            if not peer.waiting or peer.worker_id is None:
                continue
            key = (tuple(sorted((peer.offers or {}).items())),
                   tuple(sorted((peer.limits or {}).items())), peer.scope)
            if key in exhausted:
                continue
            claim = claims.claim_in_tx(self.conn, peer.worker_id, time.time(),
                                       lease_ttl=self.lease_ttl, offers=peer.offers,
                                       limits=peer.limits)
            if claim is None:
                exhausted.add(key)
                continue
            turn.claims += 1
            peer.waiting = False
            self.claims[claim.attempt_id] = claim
            pending = [r for r in peer.replies if r.get("op") == "done"]
            if pending:
                pending[-1]["claim"] = claim_to_wire(claim)
            else:
                peer.replies.append({"op": "claim", "claim": claim_to_wire(claim)})
