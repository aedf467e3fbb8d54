-- Skiff controller schema, SQLite dialect. Keep in step with ../postgres.
-- Timestamps are Unix milliseconds; JSON documents are TEXT.

CREATE TABLE tokens (
    kind TEXT PRIMARY KEY,            -- 'admin' | 'join'
    hash TEXT NOT NULL,               -- sha256 hex of the token
    created_at INTEGER NOT NULL
);

CREATE TABLE artifacts (
    digest TEXT PRIMARY KEY,          -- 'sha256:<hex>'
    size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE artifact_chunks (
    digest TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (digest, seq)
);

CREATE TABLE apps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,               -- AppSpec JSON of the current revision
    replicas INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    conditions TEXT NOT NULL DEFAULT '[]',
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE revisions (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, number)
);

CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    ingress TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    cordoned INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0,
    assign_version INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);

-- Narrow row renewed in place by every heartbeat: nothing grows with time.
CREATE TABLE node_leases (
    node TEXT PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    renewed_at INTEGER NOT NULL
);

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    revision INTEGER NOT NULL,
    node TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX replicas_by_node ON replicas(node);
CREATE INDEX replicas_by_app ON replicas(app);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    app TEXT,
    node TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_by_app ON events(app, id);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL
);
