-- 0006_usage: what each attempt used (SPEC AIDER-INT-003 metadata, AUDIT-001 "account for
-- resource use and cost"), defined once.
--
-- * attempt_usage: one row per attempt, the usage fields of its output document (the output
--   contract, schemas/attempt-output.schema.json) as columns. `orch audit report` sums it per
--   task, workstream and model; Datasette and the sqlite3 shell can sum it the same way.
--   tokens_used and cost are NULL when the attempt reported none (a command that is not an
--   agent, an agent that reports nothing, an attempt still running): unknown, never zero.
--   has_usage is 1 when tokens_used is known. The column attempt.tokens_used (0001) has never
--   been written by orch; it is read here too, after the output, so a client that fills it is
--   counted.
--
-- Like 0001, everything here stays parseable by SQLite 3.40 (json_extract, no ->> operator).

CREATE VIEW attempt_usage AS
SELECT a.attempt_id, a.task_id, t.workstream_id, a.attempt_no, a.worker_id, a.started_at,
       a.finished_at, a.outcome,
       json_extract(a.output, '$.status')                       AS status,
       json_extract(a.output, '$.validation_status')            AS validation_status,
       json_extract(a.output, '$.metadata.agent')               AS agent,
       json_extract(a.output, '$.metadata.model')               AS model,
       coalesce(json_extract(a.output, '$.metadata.tokens_used'), a.tokens_used)
                                                                AS tokens_used,
       json_extract(a.output, '$.metadata.tokens.sent')         AS tokens_sent,
       json_extract(a.output, '$.metadata.tokens.received')     AS tokens_received,
       json_extract(a.output, '$.metadata.cost')                AS cost,
       json_extract(a.output, '$.metadata.duration_seconds')    AS duration_seconds,
       CASE WHEN coalesce(json_extract(a.output, '$.metadata.tokens_used'), a.tokens_used)
                 IS NULL THEN 0 ELSE 1 END                      AS has_usage
  FROM attempt a JOIN task t ON t.task_id = a.task_id;
