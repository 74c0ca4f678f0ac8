-- The canned queries of `orch browse`: each block is `-- name:`, `-- title:`, `-- description:`
-- (one line each) and one SELECT. They read the kernel's views (ready_task, blocked_task,
-- stuck_task, active_lease, failure_occurrence, attempt_usage) instead of restating what a
-- state means, and run on SQLite 3.40 (Python's sqlite3, which Datasette uses): no concat(),
-- no JSONB. tests/test_browse_metadata.py runs each of them. Paste any into
-- `sqlite3 .state/kernel.db` (with `.parameter set :task_id 'build'` for the timeline).

-- name: ready_work
-- title: Ready work
-- description: Tasks that can run now (the ready_task view, as the scheduler and `orch ready` see it), in the order workers claim them: priority, then the longest chain of work after the task (its bottom level).
SELECT r.task_id, r.workstream_id, r.state, r.priority, r.critical,
       t.bottom_level AS chain_seconds, r.estimated_duration_seconds, r.queued_at, t.name
  FROM ready_task r JOIN task t ON t.task_id = r.task_id
 ORDER BY r.priority DESC, t.bottom_level DESC, r.queued_at, r.task_id;

-- name: blocked_work
-- title: Blocked work and what blocks it
-- description: Pending tasks, each prerequisite they still wait for and why (the blocked_task view); root_cause names the failed or cancelled task upstream when only an operator can unblock it (`orch retry`).
SELECT b.task_id, b.workstream_id, b.blocked_by, b.blocked_by_state, b.needs_operator,
       b.reason,
       (SELECT group_concat(s.root_task_id || ' (' || s.root_state || ')', ', ')
          FROM stuck_task s WHERE s.task_id = b.task_id) AS root_cause
  FROM blocked_task b
 ORDER BY b.needs_operator DESC, b.workstream_id, b.task_id, b.blocked_by;

-- name: critical_path
-- title: Critical path of each workstream
-- description: The chain of tasks that bounds how long each workstream takes, followed through the bottom levels `orch run` ranks work by (task.bottom_level: a task's estimated duration plus the longest chain after it): each step is the dependent with the longest chain. Empty before the first `orch run`. The DAG page of a workstream (/-/dag) draws the plan's path.
WITH RECURSIVE path (workstream_id, step, task_id) AS (
    SELECT w.workstream_id, 1,
           (SELECT s.task_id FROM task s
             WHERE s.workstream_id = w.workstream_id AND s.bottom_level > 0
             ORDER BY s.bottom_level DESC, s.task_id LIMIT 1)
      FROM workstream w
    UNION ALL
    SELECT p.workstream_id, p.step + 1,
           (SELECT d.task_id FROM task_dependency d JOIN task c ON c.task_id = d.task_id
             WHERE d.depends_on = p.task_id AND c.workstream_id = p.workstream_id
             ORDER BY c.bottom_level DESC, c.task_id LIMIT 1)
      FROM path p
     WHERE p.task_id IS NOT NULL
)
SELECT p.workstream_id, p.step, p.task_id, t.state, t.estimated_duration_seconds,
       t.bottom_level AS chain_seconds, t.started_at, t.completed_at
  FROM path p JOIN task t ON t.task_id = p.task_id
 ORDER BY p.workstream_id, p.step;

-- name: failures_by_mode
-- title: Failures by mode over time
-- description: Occurrences of each failure mode per hour (the failure_occurrence view), newest hour first, with the tasks they hit.
SELECT strftime('%Y-%m-%d %H:00', f.timestamp) AS hour, f.mode_id, f.category,
       COUNT(*) AS occurrences, COUNT(DISTINCT f.task_id) AS tasks,
       group_concat(DISTINCT f.task_id) AS task_ids, MAX(f.severity) AS severity
  FROM failure_occurrence f
 GROUP BY hour, f.mode_id, f.category
 ORDER BY hour DESC, occurrences DESC, f.mode_id;

-- name: task_timeline
-- title: Timeline of one task
-- description: Everything that happened to one task, oldest first: its events (state changes and kernel decisions) and the start and end of each attempt. Events moved to an archive file by `orch audit rotate` are in that file's event table.
SELECT e.timestamp AS at, 'event' AS kind, e.event AS what, e.from_state, e.to_state,
       e.trigger, e.severity, json_extract(e.metadata, '$.attempt_no') AS attempt_no,
       e.metadata AS details, e.seq
  FROM event e WHERE e.task_id = :task_id
UNION ALL
SELECT a.started_at, 'attempt', 'attempt ' || a.attempt_no || ' started', NULL, NULL, NULL,
       'info', a.attempt_no, 'worker ' || coalesce(a.worker_id, '-'), NULL
  FROM attempt a WHERE a.task_id = :task_id
UNION ALL
SELECT a.finished_at, 'attempt', 'attempt ' || a.attempt_no || ' ' || a.outcome, NULL, NULL,
       NULL, CASE WHEN a.outcome = 'succeeded' THEN 'info' ELSE 'error' END, a.attempt_no,
       CASE WHEN a.outcome = 'succeeded' THEN 'exit ' || coalesce(a.exit_code, '-')
            ELSE coalesce(a.failure_mode || ': ', '')
                 || coalesce(a.error_message, 'exit ' || a.exit_code, '') END,
       NULL
  FROM attempt a WHERE a.task_id = :task_id AND a.finished_at IS NOT NULL
 ORDER BY at, seq;

-- name: resource_holders
-- title: Resource holders now and waiting tasks
-- description: Who holds each resource now (the active_lease view) and the ready tasks that need it and do not hold it yet (the resource_waiting view).
SELECT l.resource_id AS resource_id, l.resource_type, 'holds' AS role, l.task_id AS task_id,
       t.state, l.mode, l.amount,
       l.acquired_at AS since, l.expires_at, l.expired
  FROM active_lease l JOIN task t ON t.task_id = l.task_id
UNION ALL
SELECT w.resource_id, r.type, 'waits', w.task_id, w.state, w.mode, w.amount,
       w.queued_at, NULL, NULL
  FROM resource_waiting w
  JOIN resource r ON r.resource_id = w.resource_id
 ORDER BY resource_id, role, since, task_id;

-- name: slowest_tasks
-- title: Slowest tasks against their estimates
-- description: The 100 tasks that ran longest (all their finished attempts together), with their estimated duration and the ratio of the two.
SELECT a.task_id, t.workstream_id, t.state, COUNT(*) AS attempts,
       ROUND(SUM((julianday(a.finished_at) - julianday(a.started_at)) * 86400.0), 3)
           AS seconds,
       t.estimated_duration_seconds AS estimated_seconds,
       ROUND(SUM((julianday(a.finished_at) - julianday(a.started_at)) * 86400.0)
             / NULLIF(t.estimated_duration_seconds, 0), 2) AS ratio
  FROM attempt a JOIN task t ON t.task_id = a.task_id
 WHERE a.finished_at IS NOT NULL
 GROUP BY a.task_id
 ORDER BY seconds DESC, a.task_id
 LIMIT 100;

-- name: agent_usage
-- title: Agent tokens and cost by task, workstream and model
-- description: The tokens and cost agents reported (the attempt_usage view), per task, per workstream, per agent and model, and in all; attempts that reported nothing are left out.
SELECT * FROM (
    SELECT 'task' AS level, workstream_id, task_id, agent, model, COUNT(*) AS attempts,
           SUM(tokens_used) AS tokens_used, SUM(tokens_sent) AS tokens_sent,
           SUM(tokens_received) AS tokens_received, ROUND(SUM(cost), 6) AS cost
      FROM attempt_usage WHERE has_usage = 1
     GROUP BY workstream_id, task_id, agent, model
    UNION ALL
    SELECT 'workstream', workstream_id, NULL, NULL, NULL, COUNT(*), SUM(tokens_used),
           SUM(tokens_sent), SUM(tokens_received), ROUND(SUM(cost), 6)
      FROM attempt_usage WHERE has_usage = 1
     GROUP BY workstream_id
    UNION ALL
    SELECT 'model', NULL, NULL, agent, model, COUNT(*), SUM(tokens_used), SUM(tokens_sent),
           SUM(tokens_received), ROUND(SUM(cost), 6)
      FROM attempt_usage WHERE has_usage = 1
     GROUP BY agent, model
    UNION ALL
    SELECT 'all', NULL, NULL, NULL, NULL, COUNT(*), SUM(tokens_used), SUM(tokens_sent),
           SUM(tokens_received), ROUND(SUM(cost), 6)
      FROM attempt_usage WHERE has_usage = 1
    HAVING COUNT(*) > 0
)
 ORDER BY CASE level WHEN 'task' THEN 1 WHEN 'workstream' THEN 2 WHEN 'model' THEN 3 ELSE 4 END,
          workstream_id, task_id, agent, model;
