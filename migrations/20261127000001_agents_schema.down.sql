DROP TABLE IF EXISTS agents.invoke_tenants;
DROP TABLE IF EXISTS agents.invoke_audit;
DROP TABLE IF EXISTS agents.job_cancellations;
DROP TABLE IF EXISTS agents.jobs;
DROP TABLE IF EXISTS agents.credit_ledger;
DROP TABLE IF EXISTS agents.credit_balances;
-- Not CASCADE: anything else someone put in the schema stays, and so does the schema.
DROP SCHEMA IF EXISTS agents;
