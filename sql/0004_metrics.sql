-- 0004_metrics: metric samples and failure occurrences (SPEC OBS-001, OBS-002).
--
-- * metric_sample: one row per `.state/metrics.json` written (kernel.observe.metrics.write_metrics: at
--   the start and end of `orch run`, every [views] metrics_interval_seconds while it runs, and
--   on every `orch metrics`). Rows older than the retention (30 days by default, never less) are
--   deleted by the same transaction that inserts a new one.
-- * metric_history / metric_history_errors: the samples as columns and as (sample, mode) rows,
--   for Datasette charts and plain SQL.
-- * failure_occurrence: one row per occurrence of a failure mode, read from the event log; the
--   `errors` of metrics.json and the Prometheus counter orch_failures_total count its rows.
--
-- Like 0001, everything here stays parseable by SQLite 3.40 (Datasette, the sqlite3 shell).

CREATE TABLE metric_sample (
    -- The document's `timestamp` (ISO-8601 UTC, ms): when the sample was taken.
    sampled_at     TEXT PRIMARY KEY CHECK (sampled_at GLOB
                   '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    schema_version TEXT NOT NULL,
    -- The whole metrics.json document (schemas/metrics.schema.json), compact, sorted keys.
    document       TEXT NOT NULL CHECK (json_valid(document))
) STRICT;

CREATE VIEW metric_history AS
SELECT sampled_at,
       json_extract(document, '$.workstreams.active')           AS workstreams_active,
       json_extract(document, '$.workstreams.completed_today')  AS workstreams_completed_today,
       json_extract(document, '$.workstreams.failed_today')     AS workstreams_failed_today,
       json_extract(document, '$.tasks.pending')                AS tasks_pending,
       json_extract(document, '$.tasks.queued')                 AS tasks_queued,
       json_extract(document, '$.tasks.running')                AS tasks_running,
       json_extract(document, '$.tasks.validating')             AS tasks_validating,
       json_extract(document, '$.tasks.retrying')               AS tasks_retrying,
       json_extract(document, '$.tasks.completed')              AS tasks_completed,
       json_extract(document, '$.tasks.failed')                 AS tasks_failed,
       json_extract(document, '$.tasks.cancelled')              AS tasks_cancelled,
       json_extract(document, '$.tasks.avg_duration_seconds')   AS tasks_avg_duration_seconds,
       json_extract(document, '$.tasks.completion_rate_per_hour') AS tasks_completion_rate_per_hour,
       json_extract(document, '$.workers.total')                AS workers_total,
       json_extract(document, '$.workers.idle')                 AS workers_idle,
       json_extract(document, '$.workers.busy')                 AS workers_busy,
       json_extract(document, '$.workers.unresponsive')         AS workers_unresponsive,
       json_extract(document, '$.workers.avg_utilization')      AS workers_avg_utilization,
       (SELECT COALESCE(SUM(e.value), 0) FROM json_each(document, '$.errors') e) AS errors_today
  FROM metric_sample;

CREATE VIEW metric_history_errors AS
SELECT s.sampled_at, e.key AS mode_id, e.value AS occurrences_today
  FROM metric_sample s, json_each(s.document, '$.errors') e;

-- One row per occurrence of a failure mode. An event is an occurrence of mode M when its
-- metadata names M (`failure_mode`), or, when it names none, when its event name is M's event
-- (e.g. worker_unresponsive); and when it is about an entity of M's category (task, worker,
-- workstream; `system` modes: system and resource events). So a task handed on because its
-- worker crashed is not a second Worker-Crashed (the worker's own event is), a failed attempt
-- that is retried counts (task_retry carries the mode), and the shutdown of a worker that stayed
-- unresponsive is not a second Worker-Unresponsive (its unresponsive event already counted).
-- Failures are never severity info (STATE-OBS-004), which keeps the scan cheap.
CREATE VIEW failure_occurrence AS
SELECT e.seq, e.timestamp, f.mode_id, f.category, e.event, e.severity, e.entity_type,
       e.entity_id, e.workstream_id, e.task_id, e.from_state, e.to_state, e.trigger
  FROM event e
  JOIN failure_mode f
    ON f.mode_id = COALESCE(json_extract(e.metadata, '$.failure_mode'),
                            (SELECT m.mode_id FROM failure_mode m WHERE m.event = e.event
                              ORDER BY m.mode_id LIMIT 1))
 WHERE e.severity <> 'info'
   AND (f.category = e.entity_type
        OR (f.category = 'system' AND e.entity_type IN ('system', 'resource')))
   AND NOT (e.entity_type = 'worker' AND e.from_state = 'unresponsive'
            AND f.mode_id = 'Worker-Unresponsive');
