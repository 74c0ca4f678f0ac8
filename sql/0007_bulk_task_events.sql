-- 0007_bulk_task_events: the task_created events of a bulk load written by one INSERT ... SELECT
-- instead of a trigger program per inserted row (orch load of 100k tasks: one statement instead
-- of 100k trigger firings).
--
-- * task_bulk_insert: at most one row, and only inside the write transaction of a load. While it
--   exists, task_created_event does not fire; deleting it (in the same transaction) fires
--   task_bulk_insert_events, which writes one task_created event for every task inserted since
--   the row was (rowid > after_rowid), in insertion order: the same rows, columns, metadata and
--   gapless seq as the row trigger writes (tests/test_load_events.py compares them), and clears
--   transition_trigger / transition_metadata as the row trigger does. The event's timestamp is
--   the row trigger's (its '$.at', else now, never before the previous event), computed as a
--   running maximum over the batch.
-- * Every other INSERT INTO task (no row in task_bulk_insert) is audited by the row trigger as
--   before. A load that fails rolls the marker back with everything else.

CREATE TABLE task_bulk_insert (
    marker_id   INTEGER PRIMARY KEY CHECK (marker_id = 1),
    after_rowid INTEGER NOT NULL
) STRICT;

DROP TRIGGER task_created_event;
CREATE TRIGGER task_created_event AFTER INSERT ON task
WHEN NOT EXISTS (SELECT 1 FROM task_bulk_insert)
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

CREATE TRIGGER task_bulk_insert_events AFTER DELETE ON task_bulk_insert
BEGIN
    INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id,
                       workstream_id, task_id, from_state, to_state, trigger, caused_by, metadata)
    SELECT MAX(MAX(COALESCE(json_extract(t.transition_metadata, '$.at'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                   OVER (ORDER BY t.rowid ROWS UNBOUNDED PRECEDING),
               COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), '')),
           'task_created', 'task_state_transition', 'info', 'task', t.task_id,
           t.workstream_id, t.task_id, NULL, t.state,
           COALESCE(t.transition_trigger, 'task_loaded'),
           json_extract(t.transition_metadata, '$.caused_by'),
           json_patch(json_object('max_retries', t.max_retries, 'source_file', t.source_file),
                      COALESCE(json_remove(t.transition_metadata, '$.at', '$.caused_by'), '{}'))
      FROM task t
     WHERE t.rowid > OLD.after_rowid
     ORDER BY t.rowid;
    UPDATE task SET transition_trigger = NULL, transition_metadata = NULL
     WHERE rowid > OLD.after_rowid
       AND (transition_trigger IS NOT NULL OR transition_metadata IS NOT NULL);
END;
