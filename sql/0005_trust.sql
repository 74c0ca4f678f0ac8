-- 0005_trust: the rules that decide whether work can go on, each defined once (issue: trust).
--
-- * open_workstream: a workstream may start new work when it is not in a terminal state (from
--   machine_state, never a list restated here) and none of its critical tasks failed. A
--   critical failure halts its workstream: nothing more is queued or claimed; tasks already
--   running finish, then the workstream fails (SPEC.md section 8, decision on critical failure).
-- * queueable_task: pending tasks the scheduler may queue now. `orch run` queues from it, counts
--   from it whether anything can still happen, and `orch why` and `orch doctor` read it too.
-- * ready_task is redefined on top of it (queueable, plus queued tasks of open workstreams), so
--   "ready" cannot mean two things.
-- * stuck_task no longer walks through completed tasks: a skipped or completed intermediate
--   releases what is below it. blocked_task advises only what `orch retry` accepts.
-- * Event timestamps never run backwards against seq: a trigger's event is stamped no earlier
--   than the event before it (the caller may have read its clock before it had the write lock).
-- * Leases are released when a task enters any state but running and validating (queued is new:
--   a run interrupted by its operator puts its tasks back in the queue).
--
-- Like 0001, everything here stays parseable by SQLite 3.40 (no expressions in RAISE()).

CREATE VIEW open_workstream AS
SELECT w.workstream_id, w.state
  FROM workstream w
 WHERE NOT EXISTS (SELECT 1 FROM machine_state ms
                    WHERE ms.machine = 'workstream' AND ms.state = w.state AND ms.terminal = 1)
   AND NOT EXISTS (SELECT 1 FROM task c
                    WHERE c.workstream_id = w.workstream_id AND c.state = 'failed'
                      AND c.critical = 1);

CREATE VIEW queueable_task AS
SELECT t.task_id, t.workstream_id, t.state, t.priority, t.critical,
       t.estimated_duration_seconds, t.created_at, t.queued_at
  FROM task t JOIN open_workstream o ON o.workstream_id = t.workstream_id
 WHERE t.state = 'pending'
   AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
                    WHERE d.task_id = t.task_id AND p.state <> 'completed');

DROP VIEW ready_task;
CREATE VIEW ready_task AS
SELECT task_id, workstream_id, state, priority, critical, estimated_duration_seconds,
       created_at, queued_at
  FROM queueable_task
UNION ALL
SELECT t.task_id, t.workstream_id, t.state, t.priority, t.critical,
       t.estimated_duration_seconds, t.created_at, t.queued_at
  FROM task t JOIN open_workstream o ON o.workstream_id = t.workstream_id
 WHERE t.state = 'queued';

DROP VIEW blocked_task;
CREATE VIEW blocked_task AS
SELECT t.task_id, t.workstream_id, d.depends_on AS blocked_by, p.state AS blocked_by_state,
       CASE WHEN p.state IN ('failed', 'cancelled') THEN 1 ELSE 0 END AS needs_operator,
       CASE WHEN p.state IN ('failed', 'cancelled')
            THEN 'dependency ' || p.task_id || ' is ' || p.state
                 || ': it runs only after `orch retry ' || p.task_id || '`'
            ELSE 'waiting for dependency ' || p.task_id || ' (' || p.state || ')'
       END AS reason
  FROM task t
  JOIN task_dependency d ON d.task_id = t.task_id
  JOIN task p ON p.task_id = d.depends_on
 WHERE t.state = 'pending' AND p.state <> 'completed';

DROP VIEW stuck_task;
CREATE VIEW stuck_task AS
WITH RECURSIVE downstream (task_id, root_task_id, root_state) AS (
    SELECT d.task_id, p.task_id, p.state
      FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
     WHERE p.state IN ('failed', 'cancelled')
    UNION
    SELECT d.task_id, s.root_task_id, s.root_state
      FROM task_dependency d JOIN downstream s ON d.depends_on = s.task_id
      JOIN task m ON m.task_id = s.task_id
     WHERE m.state <> 'completed'
)
SELECT s.task_id, t.workstream_id, s.root_task_id, s.root_state
  FROM downstream s JOIN task t ON t.task_id = s.task_id
 WHERE t.state = 'pending';


DROP TRIGGER task_created_event;
CREATE TRIGGER task_created_event AFTER INSERT ON task
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
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

DROP TRIGGER task_transition_event;
CREATE TRIGGER task_transition_event AFTER UPDATE OF state ON task
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
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

DROP TRIGGER task_deleted_event;
CREATE TRIGGER task_deleted_event AFTER DELETE ON task
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, metadata)
    VALUES (MAX(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                   COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')), 'task_deleted', 'task_state_transition',
            'warning', 'task', OLD.task_id, OLD.workstream_id, OLD.task_id, OLD.state, NULL,
            'definition_removed', '{}');
END;

DROP TRIGGER workstream_created_event;
CREATE TRIGGER workstream_created_event AFTER INSERT ON workstream
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
            'workstream_created', 'workstream_state_transition', 'info', 'workstream',
            NEW.workstream_id, NEW.workstream_id, NULL, NULL, NEW.state,
            COALESCE(NEW.transition_trigger, 'workstream_loaded'),
            json_extract(NEW.transition_metadata, '$.caused_by'),
            COALESCE(json_remove(NEW.transition_metadata, '$.at', '$.caused_by'), '{}'));
    UPDATE workstream SET transition_trigger = NULL, transition_metadata = NULL
     WHERE workstream_id = NEW.workstream_id
       AND (NEW.transition_trigger IS NOT NULL OR NEW.transition_metadata IS NOT NULL);
END;

DROP TRIGGER workstream_transition_event;
CREATE TRIGGER workstream_transition_event AFTER UPDATE OF state ON workstream
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
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

DROP TRIGGER worker_created_event;
CREATE TRIGGER worker_created_event AFTER INSERT ON worker
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    VALUES (MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
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

DROP TRIGGER worker_transition_event;
CREATE TRIGGER worker_transition_event AFTER UPDATE OF state ON worker
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT MAX(COALESCE(json_extract(NEW.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
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
-- Leases are held only while running or validating: they are released on entering any other
-- state (queued is new: a run interrupted by its operator puts its tasks back in the queue).
DROP TRIGGER task_release_leases;
CREATE TRIGGER task_release_leases AFTER UPDATE OF state ON task
WHEN NEW.state NOT IN ('running', 'validating') AND OLD.state IS NOT NEW.state
BEGIN
    UPDATE lease
       SET released_at = MAX(acquired_at, COALESCE(json_extract(NEW.transition_metadata, '$.at'),
                                                   strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))),
           release_reason = 'task ' || NEW.state
     WHERE task_id = NEW.task_id AND released_at IS NULL;
END;
