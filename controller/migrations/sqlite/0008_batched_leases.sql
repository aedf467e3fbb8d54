-- Lease renewals are kept in memory and persisted in batches; each row says
-- which controller persisted it, so a leader reads only the renewals other
-- controllers received, by time (indexed).
ALTER TABLE node_leases ADD COLUMN renewed_by TEXT;
CREATE INDEX node_leases_by_time ON node_leases (renewed_at);
