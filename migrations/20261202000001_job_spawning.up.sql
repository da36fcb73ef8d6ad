-- A large spawn is `spawning` while its items are enqueued in chunks.
ALTER TABLE agents.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE agents.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'spawning', 'running', 'completed', 'failed', 'cancelled'));
