-- 0003 and 0004 declared these INTEGER, which PostgreSQL stores in 32 bits:
-- a millisecond timestamp (retiring_at) does not fit, and the store reads
-- both as 64-bit values like every other number column. SQLite's INTEGER is
-- already 64-bit, so only PostgreSQL needs this.
ALTER TABLE replicas ALTER COLUMN retiring_at TYPE BIGINT;
ALTER TABLE apps ALTER COLUMN good_revision TYPE BIGINT;
