-- The durable record of agentbus, mirrored from Redis by the sink.
-- Money is NUMERIC; every mirrored row carries the id of the event it came
-- from, so replays of the same event change nothing.

CREATE SCHEMA IF NOT EXISTS agents;

CREATE TABLE agents.credit_balances (
    tenant_id        TEXT PRIMARY KEY,
    total_credits    NUMERIC(18,2) NOT NULL DEFAULT 0,
    reserved_credits NUMERIC(18,2) NOT NULL DEFAULT 0,
    spent_credits    NUMERIC(18,2) NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE agents.credit_ledger (
    id         BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    tenant_id  TEXT NOT NULL,
    job_id     UUID,
    operation  TEXT NOT NULL CHECK (operation IN ('grant', 'reserve', 'spend', 'refund', 'charge')),
    skill      TEXT NOT NULL,
    amount     NUMERIC(18,2) NOT NULL CHECK (amount >= 0),
    context    JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_credit_ledger_tenant ON agents.credit_ledger (tenant_id, created_at);
CREATE INDEX idx_credit_ledger_job ON agents.credit_ledger (job_id);

CREATE TABLE agents.jobs (
    id                       UUID PRIMARY KEY,
    tenant_id                TEXT NOT NULL,
    orchestrator_instance_id TEXT,
    worker_agent             TEXT,
    task                     TEXT NOT NULL,
    config                   JSONB NOT NULL DEFAULT '{}'::jsonb,
    status                   TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    total_items              INTEGER NOT NULL,
    completed_items          INTEGER NOT NULL DEFAULT 0,
    failed_items             INTEGER NOT NULL DEFAULT 0,
    credits_reserved         NUMERIC(18,2) NOT NULL DEFAULT 0,
    credits_spent            NUMERIC(18,2) NOT NULL DEFAULT 0,
    credits_refunded         NUMERIC(18,2) NOT NULL DEFAULT 0,
    created_at               TIMESTAMPTZ NOT NULL,
    started_at               TIMESTAMPTZ,
    completed_at             TIMESTAMPTZ,
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_jobs_tenant_created ON agents.jobs (tenant_id, created_at);

CREATE TABLE agents.job_cancellations (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id         TEXT NOT NULL UNIQUE,
    job_id           UUID NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    cancelled_by     TEXT,
    reason           TEXT,
    items_completed  INTEGER NOT NULL,
    items_cancelled  INTEGER NOT NULL,
    credits_refunded NUMERIC(18,2) NOT NULL,
    cancelled_at     TIMESTAMPTZ NOT NULL
);

-- Exactly the seed document's table and indexes.
CREATE TABLE agents.invoke_audit (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    invoke_id TEXT NOT NULL UNIQUE,
    caller_instance_id TEXT NOT NULL,
    target_instance_id TEXT NOT NULL,
    job_id UUID,
    request_payload JSONB NOT NULL,
    response_payload JSONB,
    status TEXT NOT NULL,  -- pending, completed, timeout, failed
    credits_charged DECIMAL(12,2),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    duration_ms INTEGER,
    error_message TEXT
);

CREATE INDEX idx_invoke_audit_invoke_id ON agents.invoke_audit(invoke_id);
CREATE INDEX idx_invoke_audit_caller ON agents.invoke_audit(caller_instance_id);
CREATE INDEX idx_invoke_audit_job ON agents.invoke_audit(job_id);

-- The seed's invoke_audit has no tenant column; this side table keeps each
-- invocation's tenant (written in the same transaction) so queries stay per tenant.
CREATE TABLE agents.invoke_tenants (
    invoke_id TEXT PRIMARY KEY REFERENCES agents.invoke_audit (invoke_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL
);
CREATE INDEX idx_invoke_tenants_tenant ON agents.invoke_tenants (tenant_id);
