-- Rows still spawning become running: the older check has no other word for them.
UPDATE agents.jobs SET status = 'running' WHERE status = 'spawning';
ALTER TABLE agents.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE agents.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled'));
