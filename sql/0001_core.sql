-- 0001_core: the kernel's data model.
--
-- Forward-only: never edit a migration that has shipped; add sql/NNNN_name.sql instead. Each file
-- runs in one BEGIN IMMEDIATE transaction that ends by setting PRAGMA user_version to NNNN.
--
-- Everything here must stay parseable by SQLite 3.40 (Python's sqlite3 module, the sqlite3 shell
-- and Datasette link it): no concat(), no JSONB, no expressions in RAISE().
--
-- The state machines (docs/state_machines/*.yaml) are loaded by the kernel into machine,
-- machine_state and machine_transition; the kernel also generates one `<machine>_illegal_transition`
-- trigger per machine from them (see kernel/store/machines.py). The triggers below hold the guards and
-- invariants that do not depend on the YAML's wording, and write the audit events.
--
-- Requesting a transition: UPDATE the entity's `state` together with `transition_trigger`
-- (and optionally `transition_metadata`, a JSON object copied into the event's metadata; its keys
-- "at" and "caused_by" set the event's timestamp and caused_by). The event trigger clears both
-- columns again, so they are NULL at rest.

CREATE TABLE kernel_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- ---------------------------------------------------------------------------------------------
-- State machines as data
-- ---------------------------------------------------------------------------------------------

CREATE TABLE machine (
    machine       TEXT PRIMARY KEY CHECK (machine IN ('task', 'workstream', 'worker')),
    version       TEXT NOT NULL,
    description   TEXT NOT NULL,
    initial_state TEXT NOT NULL,
    source_sha256 TEXT NOT NULL
) STRICT;

CREATE TABLE machine_state (
    machine       TEXT NOT NULL REFERENCES machine (machine),
    state         TEXT NOT NULL,
    description   TEXT NOT NULL,
    terminal      INTEGER NOT NULL CHECK (terminal IN (0, 1)),
    entry_actions TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(entry_actions)),
    PRIMARY KEY (machine, state)
) STRICT, WITHOUT ROWID;

CREATE TABLE machine_transition (
    machine           TEXT NOT NULL,
    from_state        TEXT NOT NULL,
    to_state          TEXT NOT NULL,
    trigger           TEXT NOT NULL,
    event             TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    severity          TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    guard             TEXT,
    guard_enforced_by TEXT,
    operator_override INTEGER NOT NULL DEFAULT 0 CHECK (operator_override IN (0, 1)),
    description       TEXT,
    PRIMARY KEY (machine, from_state, to_state, trigger),
    FOREIGN KEY (machine, from_state) REFERENCES machine_state (machine, state),
    FOREIGN KEY (machine, to_state) REFERENCES machine_state (machine, state)
) STRICT, WITHOUT ROWID;

-- ---------------------------------------------------------------------------------------------
-- Reference data: failure modes (SPEC ERR-FM), capabilities (CAP-REG), resources (CONC-REG)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE failure_mode (
    mode_id             TEXT PRIMARY KEY,          -- e.g. 'Task-Timeout'
    category            TEXT NOT NULL CHECK (category IN ('task', 'worker', 'workstream', 'system')),
    event               TEXT NOT NULL,             -- the event it emits, e.g. 'task_timeout'
    severity            TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    probability         TEXT NOT NULL,
    impact              TEXT NOT NULL,
    detection           TEXT NOT NULL,
    automatic_recovery  TEXT NOT NULL,
    manual_intervention TEXT NOT NULL,
    retryable           INTEGER NOT NULL CHECK (retryable IN (0, 1))
) STRICT;

CREATE TABLE failure_mode_relation (
    mode_id         TEXT NOT NULL REFERENCES failure_mode (mode_id) ON DELETE CASCADE,
    related_mode_id TEXT NOT NULL REFERENCES failure_mode (mode_id) ON DELETE CASCADE,
    PRIMARY KEY (mode_id, related_mode_id),
    CHECK (mode_id <> related_mode_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE capability (
    capability_id TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    provider      TEXT NOT NULL DEFAULT '',
    deprecated_by TEXT,
    stability     TEXT NOT NULL CHECK (stability IN ('experimental', 'stable', 'deprecated')),
    since_version TEXT NOT NULL,
    requirements  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(requirements)),
    operations    TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(operations))
) STRICT;

CREATE TABLE resource (
    resource_id       TEXT PRIMARY KEY,
    type              TEXT NOT NULL
                      CHECK (type IN ('exclusive', 'shared', 'pooled', 'rate_limited')),
    description       TEXT NOT NULL DEFAULT '',
    max_holders       INTEGER NOT NULL DEFAULT -1 CHECK (max_holders = -1 OR max_holders >= 1),
    capacity          REAL CHECK (capacity IS NULL OR capacity >= 0),   -- pool units, bucket size
    refill_per_second REAL CHECK (refill_per_second IS NULL OR refill_per_second > 0),
    min_per_task      REAL,
    max_per_task      REAL,
    reserved          REAL NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    priority          INTEGER NOT NULL DEFAULT 0,
    settings          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    CONSTRAINT pooled_needs_capacity CHECK (type NOT IN ('pooled', 'rate_limited') OR capacity IS NOT NULL),
    CONSTRAINT rate_limited_needs_refill CHECK (type <> 'rate_limited' OR refill_per_second IS NOT NULL)
) STRICT;

CREATE TABLE resource_conflict (
    resource_id    TEXT NOT NULL REFERENCES resource (resource_id) ON DELETE CASCADE,
    conflicts_with TEXT NOT NULL REFERENCES resource (resource_id) ON DELETE CASCADE,
    PRIMARY KEY (resource_id, conflicts_with)
) STRICT, WITHOUT ROWID;

-- Token buckets of rate_limited resources: tokens left as of refilled_at.
CREATE TABLE resource_bucket (
    resource_id TEXT PRIMARY KEY REFERENCES resource (resource_id) ON DELETE CASCADE,
    tokens      REAL NOT NULL CHECK (tokens >= 0),
    refilled_at TEXT NOT NULL
) STRICT;

-- ---------------------------------------------------------------------------------------------
-- Workstreams, workers, tasks
-- ---------------------------------------------------------------------------------------------

CREATE TABLE workstream (
    workstream_id        TEXT PRIMARY KEY,
    name                 TEXT NOT NULL DEFAULT '',
    description          TEXT NOT NULL DEFAULT '',
    base_branch          TEXT,
    max_duration_seconds REAL CHECK (max_duration_seconds IS NULL OR max_duration_seconds > 0),
    max_parallelism      INTEGER CHECK (max_parallelism IS NULL OR max_parallelism >= 1),
    state                TEXT NOT NULL DEFAULT 'planned',
    definition           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(definition)),
    definition_sha256    TEXT,
    worktree_path        TEXT,
    branch               TEXT,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at           TEXT,
    completed_at         TEXT,
    updated_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    transition_trigger   TEXT,
    transition_metadata  TEXT CHECK (transition_metadata IS NULL OR json_valid(transition_metadata)),
    CONSTRAINT workstream_timestamps_ordered CHECK (
        (started_at IS NULL OR started_at >= created_at)
        AND (completed_at IS NULL OR completed_at >= COALESCE(started_at, created_at)))
) STRICT;

CREATE TABLE worker (
    worker_id                  TEXT PRIMARY KEY,
    name                       TEXT NOT NULL DEFAULT '',
    executor                   TEXT NOT NULL DEFAULT 'subprocess',
    pid                        INTEGER,
    hostname                   TEXT,
    version                    TEXT,
    state                      TEXT NOT NULL DEFAULT 'initializing',
    heartbeat_interval_seconds REAL NOT NULL DEFAULT 10 CHECK (heartbeat_interval_seconds > 0),
    last_heartbeat_at          TEXT,
    registered_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    stopped_at                 TEXT,
    exit_code                  INTEGER,
    updated_at                 TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    transition_trigger         TEXT,
    transition_metadata        TEXT CHECK (transition_metadata IS NULL OR json_valid(transition_metadata)),
    CONSTRAINT worker_timestamps_ordered CHECK (stopped_at IS NULL OR stopped_at >= registered_at)
) STRICT;

CREATE TABLE worker_capability (
    worker_id     TEXT NOT NULL REFERENCES worker (worker_id) ON DELETE CASCADE,
    capability_id TEXT NOT NULL,
    version       TEXT NOT NULL,
    PRIMARY KEY (worker_id, capability_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE task (
    task_id                    TEXT PRIMARY KEY,
    workstream_id              TEXT NOT NULL REFERENCES workstream (workstream_id),
    name                       TEXT NOT NULL DEFAULT '',
    description                TEXT NOT NULL DEFAULT '',
    type                       TEXT NOT NULL DEFAULT 'custom'
                               CHECK (type IN ('aider', 'pytest', 'lint', 'custom')),
    critical                   INTEGER NOT NULL DEFAULT 0 CHECK (critical IN (0, 1)),
    priority                   INTEGER NOT NULL DEFAULT 0,
    state                      TEXT NOT NULL DEFAULT 'pending',
    worker_id                  TEXT REFERENCES worker (worker_id),
    retry_count                INTEGER NOT NULL DEFAULT 0,
    max_retries                INTEGER NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    timeout_seconds            REAL CHECK (timeout_seconds IS NULL OR timeout_seconds > 0),
    retry_delay_seconds        REAL NOT NULL DEFAULT 0 CHECK (retry_delay_seconds >= 0),
    estimated_duration_seconds REAL NOT NULL DEFAULT 60 CHECK (estimated_duration_seconds >= 0),
    command                    TEXT,
    definition                 TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(definition)),
    definition_sha256          TEXT,
    source_file                TEXT,
    generation                 INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),  -- fencing token
    next_attempt_at            TEXT,     -- retrying: not before this time
    last_error                 TEXT,
    failure_mode               TEXT REFERENCES failure_mode (mode_id),
    created_at                 TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    queued_at                  TEXT,
    started_at                 TEXT,
    completed_at               TEXT,
    updated_at                 TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    transition_trigger         TEXT,
    transition_metadata        TEXT CHECK (transition_metadata IS NULL OR json_valid(transition_metadata)),
    CONSTRAINT running_iff_worker CHECK ((state = 'running') = (worker_id IS NOT NULL)),
    CONSTRAINT retry_count_within_max_retries CHECK (retry_count >= 0 AND retry_count <= max_retries),
    CONSTRAINT task_timestamps_ordered CHECK (
        (started_at IS NULL OR started_at >= created_at)
        AND (completed_at IS NULL OR completed_at >= COALESCE(started_at, created_at)))
) STRICT;

-- A worker runs at most one task: worker_id is only set while running (running_iff_worker).
CREATE UNIQUE INDEX task_one_running_per_worker ON task (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX task_by_workstream ON task (workstream_id, state);
CREATE INDEX task_by_state ON task (state, priority DESC, created_at);

CREATE TABLE task_dependency (
    task_id    TEXT NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    depends_on TEXT NOT NULL REFERENCES task (task_id),
    PRIMARY KEY (task_id, depends_on),
    CONSTRAINT no_self_dependency CHECK (task_id <> depends_on)
) STRICT, WITHOUT ROWID;

CREATE INDEX task_dependency_by_prerequisite ON task_dependency (depends_on, task_id);

CREATE TABLE task_capability (
    task_id       TEXT NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    capability_id TEXT NOT NULL,
    min_version   TEXT,
    PRIMARY KEY (task_id, capability_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE task_resource (
    task_id     TEXT NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    resource_id TEXT NOT NULL REFERENCES resource (resource_id),
    mode        TEXT NOT NULL CHECK (mode IN ('exclusive', 'shared', 'units')),
    amount      REAL NOT NULL DEFAULT 1 CHECK (amount > 0),
    PRIMARY KEY (task_id, resource_id)
) STRICT, WITHOUT ROWID;

-- One row per execution attempt of a task; `output` holds the AIDER-INT-003 output contract.
CREATE TABLE attempt (
    attempt_id    INTEGER PRIMARY KEY,
    task_id       TEXT NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    attempt_no    INTEGER NOT NULL CHECK (attempt_no >= 1),
    worker_id     TEXT REFERENCES worker (worker_id),
    generation    INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    outcome       TEXT CHECK (outcome IS NULL OR outcome IN
                  ('succeeded', 'failed', 'timeout', 'cancelled', 'lost', 'validation_failed',
                   'not_started')),
    exit_code     INTEGER,
    failure_mode  TEXT REFERENCES failure_mode (mode_id),
    error_type    TEXT,
    error_message TEXT,
    log_path      TEXT,
    output        TEXT CHECK (output IS NULL OR json_valid(output)),
    tokens_used   INTEGER CHECK (tokens_used IS NULL OR tokens_used >= 0),
    UNIQUE (task_id, attempt_no),
    CONSTRAINT attempt_timestamps_ordered CHECK (finished_at IS NULL OR finished_at >= started_at)
) STRICT;

-- Resource leases (CONC-REG-002): owner, expiry and generation (the fencing token).
CREATE TABLE lease (
    lease_id       INTEGER PRIMARY KEY,
    resource_id    TEXT NOT NULL REFERENCES resource (resource_id),
    task_id        TEXT NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    attempt_id     INTEGER REFERENCES attempt (attempt_id),
    owner          TEXT NOT NULL,
    mode           TEXT NOT NULL CHECK (mode IN ('exclusive', 'shared', 'units')),
    amount         REAL NOT NULL DEFAULT 1 CHECK (amount > 0),
    generation     INTEGER NOT NULL,
    acquired_at    TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    released_at    TEXT,
    release_reason TEXT,
    CONSTRAINT lease_timestamps_ordered CHECK (
        expires_at >= acquired_at AND (released_at IS NULL OR released_at >= acquired_at))
) STRICT;

CREATE INDEX lease_held ON lease (resource_id) WHERE released_at IS NULL;
CREATE INDEX lease_by_task ON lease (task_id) WHERE released_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- The audit log (STATE-OBS-004): append-only, gapless seq.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE event (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- ISO-8601 UTC with milliseconds, as strftime('%Y-%m-%dT%H:%M:%fZ') writes it.
    timestamp     TEXT NOT NULL CHECK (timestamp GLOB
                  '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    event         TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    severity      TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    entity_type   TEXT NOT NULL
                  CHECK (entity_type IN ('task', 'workstream', 'worker', 'resource', 'system')),
    entity_id     TEXT,
    workstream_id TEXT,
    task_id       TEXT,
    from_state    TEXT,
    to_state      TEXT,
    trigger       TEXT,
    caused_by     INTEGER,
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
) STRICT;

CREATE INDEX event_by_task ON event (task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX event_by_time ON event (timestamp);

CREATE TRIGGER event_append_only_update BEFORE UPDATE ON event
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: an event cannot be updated');
END;

CREATE TRIGGER event_append_only_delete BEFORE DELETE ON event
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: an event cannot be deleted (old events are archived with orch audit rotate)');
END;

-- seq stays gapless: an explicit seq must be the next one.
CREATE TRIGGER event_seq_gapless AFTER INSERT ON event
WHEN NEW.seq <> COALESCE((SELECT MAX(seq) FROM event WHERE seq < NEW.seq), 0) + 1
BEGIN
    SELECT RAISE(ABORT, 'the event log is gapless: seq must be the next number (leave seq out of the INSERT)');
END;

-- ---------------------------------------------------------------------------------------------
-- Transition guards that do not depend on the YAML's wording (the transition table itself is
-- checked by the generated <machine>_illegal_transition triggers).
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER task_insert_initial_state BEFORE INSERT ON task
WHEN NEW.state IS NOT (SELECT initial_state FROM machine WHERE machine = 'task')
BEGIN
    SELECT RAISE(ABORT, 'a new task must start in the task machine''s initial state (pending)');
END;

CREATE TRIGGER workstream_insert_initial_state BEFORE INSERT ON workstream
WHEN NEW.state IS NOT (SELECT initial_state FROM machine WHERE machine = 'workstream')
BEGIN
    SELECT RAISE(ABORT, 'a new workstream must start in the workstream machine''s initial state (planned)');
END;

CREATE TRIGGER worker_insert_initial_state BEFORE INSERT ON worker
WHEN NEW.state IS NOT (SELECT initial_state FROM machine WHERE machine = 'worker')
BEGIN
    SELECT RAISE(ABORT, 'a new worker must start in the worker machine''s initial state (initializing)');
END;

-- A transition request (transition_trigger / transition_metadata) only ever travels with a state
-- change: left at rest it would authorise a later bare UPDATE of state.
CREATE TRIGGER task_transition_request_needs_state_change
BEFORE UPDATE OF transition_trigger, transition_metadata ON task
WHEN NEW.state IS OLD.state
     AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'illegal task transition: transition_trigger and transition_metadata are set only in the UPDATE that changes state');
END;

-- INSERT OR REPLACE would delete the row and insert a fresh one in the initial state; clients
-- without recursive_triggers would not even log the delete. Refuse it: history is kept.
CREATE TRIGGER task_insert_no_replace BEFORE INSERT ON task
WHEN EXISTS (SELECT 1 FROM task WHERE task_id = NEW.task_id)
BEGIN
    SELECT RAISE(ABORT, 'task already exists: INSERT OR REPLACE would erase its history; UPDATE it instead');
END;

-- A transition request (transition_trigger / transition_metadata) only ever travels with a state
-- change: left at rest it would authorise a later bare UPDATE of state.
CREATE TRIGGER workstream_transition_request_needs_state_change
BEFORE UPDATE OF transition_trigger, transition_metadata ON workstream
WHEN NEW.state IS OLD.state
     AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'illegal workstream transition: transition_trigger and transition_metadata are set only in the UPDATE that changes state');
END;

-- INSERT OR REPLACE would delete the row and insert a fresh one in the initial state; clients
-- without recursive_triggers would not even log the delete. Refuse it: history is kept.
CREATE TRIGGER workstream_insert_no_replace BEFORE INSERT ON workstream
WHEN EXISTS (SELECT 1 FROM workstream WHERE workstream_id = NEW.workstream_id)
BEGIN
    SELECT RAISE(ABORT, 'workstream already exists: INSERT OR REPLACE would erase its history; UPDATE it instead');
END;

-- A transition request (transition_trigger / transition_metadata) only ever travels with a state
-- change: left at rest it would authorise a later bare UPDATE of state.
CREATE TRIGGER worker_transition_request_needs_state_change
BEFORE UPDATE OF transition_trigger, transition_metadata ON worker
WHEN NEW.state IS OLD.state
     AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'illegal worker transition: transition_trigger and transition_metadata are set only in the UPDATE that changes state');
END;

-- INSERT OR REPLACE would delete the row and insert a fresh one in the initial state; clients
-- without recursive_triggers would not even log the delete. Refuse it: history is kept.
CREATE TRIGGER worker_insert_no_replace BEFORE INSERT ON worker
WHEN EXISTS (SELECT 1 FROM worker WHERE worker_id = NEW.worker_id)
BEGIN
    SELECT RAISE(ABORT, 'worker already exists: INSERT OR REPLACE would erase its history; UPDATE it instead');
END;

CREATE TRIGGER task_guard_dependencies_completed BEFORE UPDATE OF state ON task
WHEN NEW.state = 'queued' AND OLD.state IS NOT 'queued' AND EXISTS (
    SELECT 1 FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
     WHERE d.task_id = NEW.task_id AND p.state <> 'completed')
BEGIN
    SELECT RAISE(ABORT, 'task guard failed: a task is queued only when all its dependencies are completed (see the blocked_task view)');
END;

CREATE TRIGGER task_guard_live_worker BEFORE UPDATE OF state ON task
WHEN NEW.state = 'running' AND OLD.state IS NOT 'running' AND NOT EXISTS (
    SELECT 1 FROM worker w WHERE w.worker_id = NEW.worker_id AND w.state IN ('idle', 'busy'))
BEGIN
    SELECT RAISE(ABORT, 'task guard failed: a task runs only on a live (idle or busy) worker; set worker_id in the same UPDATE');
END;

CREATE TRIGGER task_guard_retry_counted BEFORE UPDATE OF state ON task
WHEN NEW.state = 'retrying' AND OLD.state IS NOT 'retrying'
     AND NEW.retry_count IS NOT OLD.retry_count + 1
BEGIN
    SELECT RAISE(ABORT, 'task guard failed: entering retrying counts a retry: SET retry_count = retry_count + 1 in the same UPDATE (when retry_count = max_retries the task fails instead)');
END;

CREATE TRIGGER task_retry_count_never_decreases BEFORE UPDATE OF retry_count ON task
WHEN NEW.retry_count < OLD.retry_count
BEGIN
    SELECT RAISE(ABORT, 'task invariant: retry_count never decreases');
END;

-- A worker goes idle or shut down only after its running task was handed on.
CREATE TRIGGER worker_guard_no_running_task BEFORE UPDATE OF state ON worker
WHEN NEW.state IN ('idle', 'shutdown') AND OLD.state IS NOT NEW.state
     AND EXISTS (SELECT 1 FROM task t WHERE t.worker_id = NEW.worker_id)
BEGIN
    SELECT RAISE(ABORT, 'worker guard failed: the worker still has a running task; move the task on (running -> retrying, trigger worker_lost) first');
END;

-- ---------------------------------------------------------------------------------------------
-- Audit events for every accepted transition, in the same transaction.
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER task_created_event AFTER INSERT ON task
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            'task_created', 'task_state_transition', 'info', 'task', NEW.task_id,
            NEW.workstream_id, NEW.task_id, NULL, NEW.state,
            COALESCE(NEW.transition_trigger, 'task_loaded'),
            json_extract(NEW.transition_metadata, '$.caused_by'),
            json_patch(json_object('max_retries', NEW.max_retries, 'source_file', NEW.source_file),
                       COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}')));
    UPDATE task SET transition_trigger = NULL, transition_metadata = NULL
     WHERE task_id = NEW.task_id
       AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL);
END;

CREATE TRIGGER task_transition_event AFTER UPDATE OF state ON task
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
           mt.event, mt.event_type, mt.severity, 'task', NEW.task_id,
           NEW.workstream_id, NEW.task_id, OLD.state, NEW.state, NEW.transition_trigger,
           json_extract(NEW.transition_metadata, '$.caused_by'),
           json_patch(json_object('worker_id', COALESCE(NEW.worker_id, OLD.worker_id),
                                  'retry_count', NEW.retry_count,
                                  'generation', NEW.generation),
                      COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}'))
      FROM machine_transition mt
     WHERE mt.machine = 'task' AND mt.from_state = OLD.state AND mt.to_state = NEW.state
       AND mt.trigger = NEW.transition_trigger;
    UPDATE task
       SET transition_trigger = NULL, transition_metadata = NULL,
           updated_at = COALESCE(json_extract(NEW.transition_metadata, '$.at'),
                                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
     WHERE task_id = NEW.task_id;
END;

CREATE TRIGGER task_deleted_event AFTER DELETE ON task
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, metadata)
    VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'task_deleted', 'task_state_transition',
            'warning', 'task', OLD.task_id, OLD.workstream_id, OLD.task_id, OLD.state, NULL,
            'definition_removed', '{}');
END;

CREATE TRIGGER workstream_created_event AFTER INSERT ON workstream
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            'workstream_created', 'workstream_state_transition', 'info', 'workstream',
            NEW.workstream_id, NEW.workstream_id, NULL, NULL, NEW.state,
            COALESCE(NEW.transition_trigger, 'workstream_loaded'),
            json_extract(NEW.transition_metadata, '$.caused_by'),
            COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}'));
    UPDATE workstream SET transition_trigger = NULL, transition_metadata = NULL
     WHERE workstream_id = NEW.workstream_id
       AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL);
END;

CREATE TRIGGER workstream_transition_event AFTER UPDATE OF state ON workstream
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
           mt.event, mt.event_type, mt.severity, 'workstream', NEW.workstream_id,
           NEW.workstream_id, NULL, OLD.state, NEW.state, NEW.transition_trigger,
           json_extract(NEW.transition_metadata, '$.caused_by'),
           COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}')
      FROM machine_transition mt
     WHERE mt.machine = 'workstream' AND mt.from_state = OLD.state AND mt.to_state = NEW.state
       AND mt.trigger = NEW.transition_trigger;
    UPDATE workstream
       SET transition_trigger = NULL, transition_metadata = NULL,
           updated_at = COALESCE(json_extract(NEW.transition_metadata, '$.at'),
                                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
     WHERE workstream_id = NEW.workstream_id;
END;

CREATE TRIGGER worker_created_event AFTER INSERT ON worker
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            'worker_started', 'worker_registration', 'info', 'worker', NEW.worker_id,
            NULL, NULL, NULL, NEW.state, COALESCE(NEW.transition_trigger, 'process_started'),
            json_extract(NEW.transition_metadata, '$.caused_by'),
            json_patch(json_object('pid', NEW.pid, 'hostname', NEW.hostname,
                                   'executor', NEW.executor),
                       COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}')));
    UPDATE worker SET transition_trigger = NULL, transition_metadata = NULL
     WHERE worker_id = NEW.worker_id
       AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL);
END;

CREATE TRIGGER worker_transition_event AFTER UPDATE OF state ON worker
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
           mt.event, mt.event_type, mt.severity, 'worker', NEW.worker_id,
           NULL, NULL, OLD.state, NEW.state, NEW.transition_trigger,
           json_extract(NEW.transition_metadata, '$.caused_by'),
           json_patch(json_object('pid', NEW.pid, 'last_heartbeat_at', NEW.last_heartbeat_at),
                      COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}'))
      FROM machine_transition mt
     WHERE mt.machine = 'worker' AND mt.from_state = OLD.state AND mt.to_state = NEW.state
       AND mt.trigger = NEW.transition_trigger;
    UPDATE worker
       SET transition_trigger = NULL, transition_metadata = NULL,
           updated_at = COALESCE(json_extract(NEW.transition_metadata, '$.at'),
                                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
     WHERE worker_id = NEW.worker_id;
END;

-- ---------------------------------------------------------------------------------------------
-- Derived state, defined once: the scheduler, the CLI, the exporters and Datasette read these.
-- ---------------------------------------------------------------------------------------------

-- Tasks waiting to run whose dependencies are all completed: pending ones the scheduler may
-- queue, and queued ones waiting for a worker and resources.
CREATE VIEW ready_task AS
SELECT t.task_id, t.workstream_id, t.state, t.priority, t.critical,
       t.estimated_duration_seconds, t.created_at, t.queued_at
  FROM task t
 WHERE t.state IN ('pending', 'queued')
   AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
                    WHERE d.task_id = t.task_id AND p.state <> 'completed');

-- One row per (pending task, dependency that is not completed), with the reason in words.
CREATE VIEW blocked_task AS
SELECT t.task_id, t.workstream_id, d.depends_on AS blocked_by, p.state AS blocked_by_state,
       CASE WHEN p.state IN ('failed', 'cancelled') THEN 1 ELSE 0 END AS needs_operator,
       CASE WHEN p.state IN ('failed', 'cancelled')
            THEN 'dependency ' || p.task_id || ' is ' || p.state
                 || ': it runs only after `orch retry ' || p.task_id || '` or `orch skip '
                 || p.task_id || '`'
            ELSE 'waiting for dependency ' || p.task_id || ' (' || p.state || ')'
       END AS reason
  FROM task t
  JOIN task_dependency d ON d.task_id = t.task_id
  JOIN task p ON p.task_id = d.depends_on
 WHERE t.state = 'pending' AND p.state <> 'completed';

-- Pending tasks that cannot run until an operator acts: a failed or cancelled task upstream.
CREATE VIEW stuck_task AS
WITH RECURSIVE downstream (task_id, root_task_id, root_state) AS (
    SELECT d.task_id, p.task_id, p.state
      FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
     WHERE p.state IN ('failed', 'cancelled')
    UNION
    SELECT d.task_id, s.root_task_id, s.root_state
      FROM task_dependency d JOIN downstream s ON d.depends_on = s.task_id
)
SELECT s.task_id, t.workstream_id, s.root_task_id, s.root_state
  FROM downstream s JOIN task t ON t.task_id = s.task_id
 WHERE t.state = 'pending';

CREATE VIEW active_lease AS
SELECT l.lease_id, l.resource_id, r.type AS resource_type, l.task_id, l.owner, l.mode, l.amount,
       l.generation, l.acquired_at, l.expires_at,
       l.expires_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS expired
  FROM lease l JOIN resource r ON r.resource_id = l.resource_id
 WHERE l.released_at IS NULL;

CREATE VIEW task_state_count AS
SELECT workstream_id, state, COUNT(*) AS tasks
  FROM task GROUP BY workstream_id, state;

CREATE VIEW worker_health AS
SELECT w.worker_id, w.state, w.pid, w.last_heartbeat_at, w.heartbeat_interval_seconds,
       ROUND((julianday('now') - julianday(COALESCE(w.last_heartbeat_at, w.registered_at)))
             * 86400.0, 3) AS seconds_since_heartbeat,
       (SELECT t.task_id FROM task t WHERE t.worker_id = w.worker_id) AS running_task_id
  FROM worker w;
