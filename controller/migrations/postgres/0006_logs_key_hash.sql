-- A node's API key is stored as its sha256 only, like every other secret:
-- the controller holds the key itself in memory (from the node's
-- registration and heartbeats). Keys stored in clear text are forgotten;
-- whether a node offers its API is kept apart.
ALTER TABLE nodes ADD COLUMN offers_api BIGINT NOT NULL DEFAULT 0;
UPDATE nodes SET offers_api = CASE WHEN logs_key IS NULL THEN 0 ELSE 1 END, logs_key = NULL;
