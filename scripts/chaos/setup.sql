-- Helpers of scripts/chaos.sh, in a schema of its own in its own database. chaos.ts reads a
-- ledger time whichever way the schema stores it (timestamptz before migration 0003,
-- integer milliseconds since the epoch from it on).
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE OR REPLACE FUNCTION chaos.ts(bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$ SELECT to_timestamp($1 / 1000.0) $$;
CREATE OR REPLACE FUNCTION chaos.ts(timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
