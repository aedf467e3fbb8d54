-- Jobs (wasi:cli/run components run to completion) and their runs.
CREATE TABLE jobs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,               -- JobSpec JSON
    state TEXT NOT NULL,              -- Active | Complete | Failed
    message TEXT NOT NULL DEFAULT '',
    next_run INTEGER NOT NULL,         -- number of the next run id (<job>.<n>)
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    succeeded INTEGER NOT NULL DEFAULT 0, -- counts frozen when it finished (runs are pruned then)
    failed INTEGER NOT NULL DEFAULT 0,
    owner TEXT,                       -- the schedule that started it
    last_fired INTEGER                    -- a schedule: the time it last fired for
);
CREATE INDEX jobs_by_owner ON jobs(owner);

CREATE TABLE job_runs (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL REFERENCES jobs(name) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    state TEXT NOT NULL,              -- Pending | Running | Succeeded | Failed
    reservation INTEGER NOT NULL,      -- memory reserved on the node while it runs
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    exit_code INTEGER,
    reason TEXT,
    message TEXT
);
CREATE INDEX job_runs_by_job ON job_runs(job, seq);
CREATE INDEX job_runs_by_node ON job_runs(node, state);
