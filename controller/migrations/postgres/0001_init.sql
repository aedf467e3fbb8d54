-- Skiff controller schema, PostgreSQL dialect. Keep in step with ../sqlite.
-- Timestamps are Unix milliseconds; JSON documents are TEXT.

CREATE TABLE tokens (
    kind TEXT PRIMARY KEY,            -- 'admin' | 'join'
    hash TEXT NOT NULL,               -- sha256 hex of the token
    created_at BIGINT NOT NULL
);

CREATE TABLE artifacts (
    digest TEXT PRIMARY KEY,          -- 'sha256:<hex>'
    size BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE artifact_chunks (
    digest TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (digest, seq)
);

CREATE TABLE apps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,               -- AppSpec JSON of the current revision
    replicas BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    conditions TEXT NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE revisions (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app, number)
);

CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    ingress TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    cordoned BIGINT NOT NULL DEFAULT 0,
    draining BIGINT NOT NULL DEFAULT 0,
    assign_version BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL,
    registered_at BIGINT NOT NULL
);

-- Narrow row renewed in place by every heartbeat: nothing grows with time.
CREATE TABLE node_leases (
    node TEXT PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    renewed_at BIGINT NOT NULL
);

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    revision BIGINT NOT NULL,
    node TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX replicas_by_node ON replicas(node);
CREATE INDEX replicas_by_app ON replicas(app);

CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    time BIGINT NOT NULL,
    app TEXT,
    node TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_by_app ON events(app, id);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL
);
