-- 0009_worker_resource: what a worker advertises of a resource (a Dask worker's resources).
--
-- * worker_resource: one row per (worker, resource) the worker's executor advertises: a Dask
--   worker started with `dask worker --resources "cpu_cores=4"` joins as a kernel worker with
--   the row (cpu_cores, 4). A worker with rows takes a task only when, for each of them, what
--   the task asks of that resource (units, or 1 for exclusive and shared) is at most the
--   amount; a resource the worker has no row for does not constrain it. Local workers have
--   no rows. The kernel's leases (task_resource, lease) still decide what may run at once.
--   The rule is kernel.definitions.fit.fits_resources; written once, at registration.
--
-- Like 0001, everything here stays parseable by SQLite 3.40.

CREATE TABLE worker_resource (
    worker_id   TEXT NOT NULL REFERENCES worker (worker_id) ON DELETE CASCADE,
    resource_id TEXT NOT NULL,
    amount      REAL NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (worker_id, resource_id)
) STRICT, WITHOUT ROWID;
