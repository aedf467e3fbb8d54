-- A replica being retired: out of the endpoints since then, removed once drained.
ALTER TABLE replicas ADD COLUMN retiring_at INTEGER;
