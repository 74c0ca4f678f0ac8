-- 0002_scheduler: what the scheduler and the workers need (issue: run the DAG).
--
-- * scheduler_lock: at most one `orch run` owns a database at a time.
-- * Lease guards: capacity, exclusivity, conflicts and token buckets are checked by triggers on
--   INSERT INTO lease, so no client (not even a hand-written one) can oversubscribe a resource.
-- * Leases are released by a trigger whenever a task leaves running/validating, whatever moved it.
-- * Columns: task.bottom_level (critical-path rank for claim order), worker scope and stop flag,
--   attempt process group (so a lost worker's orphaned command can be killed).
--
-- Like 0001, everything here stays parseable by SQLite 3.40 (no expressions in RAISE()).

CREATE TABLE scheduler_lock (
    lock_id     INTEGER PRIMARY KEY CHECK (lock_id = 1),
    owner       TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    hostname    TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    renewed_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;

-- Longest estimated duration from this task to the end of its DAG (itself included): the
-- scheduler claims tasks with a larger bottom level first, so the critical path starts early.
ALTER TABLE task ADD COLUMN bottom_level REAL NOT NULL DEFAULT 0;
CREATE INDEX task_claim_order ON task (state, priority DESC, bottom_level DESC, queued_at, task_id);

-- Set by the scheduler (or `orch worker` on Ctrl-C) to ask a worker to stop after its task.
ALTER TABLE worker ADD COLUMN stop_requested INTEGER NOT NULL DEFAULT 0
    CHECK (stop_requested IN (0, 1));
-- The `orch run` that started this worker (NULL for `orch worker` joined by hand).
ALTER TABLE worker ADD COLUMN scheduler_owner TEXT;
-- JSON list of the workstreams this worker takes tasks from; NULL: all.
ALTER TABLE worker ADD COLUMN workstreams TEXT CHECK (workstreams IS NULL OR json_valid(workstreams));

-- The process group of the attempt's command and the host it runs on: when a worker dies, the
-- scheduler kills the orphaned group before handing the task on (never two runs at once).
ALTER TABLE attempt ADD COLUMN pgid INTEGER;
ALTER TABLE attempt ADD COLUMN hostname TEXT;

-- ---------------------------------------------------------------------------------------------
-- Lease guards (CONC-REG-002). Leases of the same task never conflict with each other.
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER lease_guard_exclusive BEFORE INSERT ON lease
WHEN (NEW.mode = 'exclusive'
      OR (SELECT type FROM resource WHERE resource_id = NEW.resource_id) = 'exclusive')
     AND EXISTS (SELECT 1 FROM lease l
                  WHERE l.resource_id = NEW.resource_id AND l.released_at IS NULL
                    AND l.task_id <> NEW.task_id)
BEGIN
    SELECT RAISE(ABORT, 'lease refused: an exclusive lease needs the resource to have no other holder');
END;

CREATE TRIGGER lease_guard_shared BEFORE INSERT ON lease
WHEN NEW.mode <> 'exclusive' AND EXISTS (
    SELECT 1 FROM lease l JOIN resource r ON r.resource_id = l.resource_id
     WHERE l.resource_id = NEW.resource_id AND l.released_at IS NULL
       AND l.task_id <> NEW.task_id AND (l.mode = 'exclusive' OR r.type = 'exclusive'))
BEGIN
    SELECT RAISE(ABORT, 'lease refused: the resource is held exclusively by another task');
END;

CREATE TRIGGER lease_guard_max_holders BEFORE INSERT ON lease
WHEN (SELECT max_holders FROM resource WHERE resource_id = NEW.resource_id) <> -1
     AND (SELECT COUNT(DISTINCT l.task_id) FROM lease l
           WHERE l.resource_id = NEW.resource_id AND l.released_at IS NULL
             AND l.task_id <> NEW.task_id)
         >= (SELECT max_holders FROM resource WHERE resource_id = NEW.resource_id)
BEGIN
    SELECT RAISE(ABORT, 'lease refused: the resource already has max_holders holders');
END;

CREATE TRIGGER lease_guard_pool BEFORE INSERT ON lease
WHEN (SELECT type FROM resource WHERE resource_id = NEW.resource_id) = 'pooled'
     AND COALESCE((SELECT SUM(l.amount) FROM lease l
                    WHERE l.resource_id = NEW.resource_id AND l.released_at IS NULL), 0)
         + NEW.amount
         > (SELECT capacity - reserved FROM resource WHERE resource_id = NEW.resource_id)
BEGIN
    SELECT RAISE(ABORT, 'lease refused: not enough units left in the pool');
END;

CREATE TRIGGER lease_guard_conflicts BEFORE INSERT ON lease
WHEN EXISTS (
    SELECT 1 FROM resource_conflict c
      JOIN lease l ON l.released_at IS NULL AND l.task_id <> NEW.task_id
                  AND ((c.resource_id = NEW.resource_id AND l.resource_id = c.conflicts_with)
                       OR (c.conflicts_with = NEW.resource_id AND l.resource_id = c.resource_id))
     WHERE c.resource_id = NEW.resource_id OR c.conflicts_with = NEW.resource_id)
BEGIN
    SELECT RAISE(ABORT, 'lease refused: another task holds a conflicting resource');
END;

-- Token bucket: tokens refill continuously at refill_per_second up to capacity; a lease
-- consumes `amount` tokens when it is taken (giving it back does not return them).
CREATE VIEW resource_tokens AS
SELECT r.resource_id, r.capacity, r.refill_per_second,
       COALESCE(b.tokens, r.capacity) AS tokens, b.refilled_at
  FROM resource r LEFT JOIN resource_bucket b ON b.resource_id = r.resource_id
 WHERE r.type = 'rate_limited';

CREATE TRIGGER lease_guard_rate BEFORE INSERT ON lease
WHEN (SELECT type FROM resource WHERE resource_id = NEW.resource_id) = 'rate_limited'
     AND (SELECT MIN(t.capacity, t.tokens + MAX(0.0, julianday(NEW.acquired_at)
                                                  - julianday(COALESCE(t.refilled_at, NEW.acquired_at)))
                                             * 86400.0 * t.refill_per_second)
            FROM resource_tokens t WHERE t.resource_id = NEW.resource_id) < NEW.amount
BEGIN
    SELECT RAISE(ABORT, 'lease refused: the rate limit has no tokens left for now');
END;

CREATE TRIGGER lease_rate_consume AFTER INSERT ON lease
WHEN (SELECT type FROM resource WHERE resource_id = NEW.resource_id) = 'rate_limited'
BEGIN
    INSERT INTO resource_bucket (resource_id, tokens, refilled_at)
    SELECT t.resource_id,
           MAX(0.0, MIN(t.capacity, t.tokens + MAX(0.0, julianday(NEW.acquired_at)
                                                    - julianday(COALESCE(t.refilled_at, NEW.acquired_at)))
                                               * 86400.0 * t.refill_per_second) - NEW.amount),
           MAX(NEW.acquired_at, COALESCE(t.refilled_at, NEW.acquired_at))
      FROM resource_tokens t WHERE t.resource_id = NEW.resource_id
    ON CONFLICT (resource_id) DO UPDATE SET tokens = excluded.tokens,
                                            refilled_at = excluded.refilled_at;
END;

-- A released lease stays released: history is kept, and a lease cannot be revived.
CREATE TRIGGER lease_released_is_final BEFORE UPDATE OF released_at ON lease
WHEN OLD.released_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a released lease cannot be changed: take a new lease');
END;

-- Leases are released when the task leaves running/validating, whoever moved it.
CREATE TRIGGER task_release_leases AFTER UPDATE OF state ON task
WHEN NEW.state IN ('pending', 'retrying', 'completed', 'failed', 'cancelled')
     AND OLD.state IS NOT NEW.state
BEGIN
    UPDATE lease
       SET released_at = MAX(acquired_at, COALESCE(json_extract(NEW.transition_metadata, '$.at'),
                                                   strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))),
           release_reason = 'task ' || NEW.state
     WHERE task_id = NEW.task_id AND released_at IS NULL;
END;

-- Who holds what, now (the scheduler, `orch status` and Datasette read this).
CREATE VIEW resource_usage AS
SELECT r.resource_id, r.type, r.max_holders, r.capacity, r.reserved,
       COUNT(l.lease_id) AS leases,
       COUNT(DISTINCT l.task_id) AS holders,
       COALESCE(SUM(l.amount), 0) AS amount_held,
       group_concat(l.task_id, ',') AS holder_tasks
  FROM resource r LEFT JOIN lease l ON l.resource_id = r.resource_id AND l.released_at IS NULL
 GROUP BY r.resource_id;
