-- 0008_resource_waiting: which ready tasks wait for which resource, defined once.
--
-- * resource_waiting: one row per (ready task, resource it needs and does not hold yet): the
--   tasks of the ready_task view joined with what each needs (task_resource), less the leases
--   it holds now (active_lease). `orch resources` and the canned query of `orch browse` read
--   it; the scheduler's all-or-nothing lease decides when the wait ends.
--
-- Like 0001, everything here stays parseable by SQLite 3.40.

CREATE VIEW resource_waiting AS
SELECT tr.resource_id, rt.task_id, rt.workstream_id, rt.state, tr.mode, tr.amount,
       rt.priority, rt.queued_at
  FROM ready_task rt
  JOIN task_resource tr ON tr.task_id = rt.task_id
 WHERE NOT EXISTS (SELECT 1 FROM active_lease l
                    WHERE l.task_id = rt.task_id AND l.resource_id = tr.resource_id);
