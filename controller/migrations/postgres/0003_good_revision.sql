-- The last revision that became fully available: where an automatic rollback returns.
ALTER TABLE apps ADD COLUMN good_revision INTEGER;
