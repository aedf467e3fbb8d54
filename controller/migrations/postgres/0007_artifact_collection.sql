-- When the artifact collector first found no kept revision naming the
-- artifact (NULL: referenced, or not looked at yet). It is removed once
-- this is older than the retention (--artifact-retention).
ALTER TABLE artifacts ADD COLUMN unreferenced_since BIGINT;
