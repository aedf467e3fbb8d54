-- Nodes tell the controller a secret with which it may read their guest logs.
ALTER TABLE nodes ADD COLUMN logs_key TEXT;
