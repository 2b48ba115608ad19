-- The default outbox table (README.md describes it) and an index for pruning by age.
--
-- Apply replaces the placeholders with quoted identifiers before running
-- this file:
--   {{table}}             the table, schema-qualified: "public"."outbox"
--   {{created_at_index}}  the index name (unqualified; it lives in the
--                         table's schema): "outbox_created_at_idx"
--
-- Apply runs the files, in one transaction, only when the table does not
-- exist yet; IF NOT EXISTS keeps them safe to run by hand.
-- gen_random_uuid() is in core PostgreSQL since version 13.
--
-- The CHECK constraints refuse rows the relay could only dead-letter or stop
-- on, when the application writes them rather than in the relay. They are
-- column constraints, so PostgreSQL names them <table>_<column>_check, the
-- names README.md gives for adding them to an existing table. An existing
-- table never gets them from Apply: it may hold rows that break them, and
-- adding them takes locks the table's owner should choose when to take.

CREATE TABLE IF NOT EXISTS {{table}} (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id   text        NOT NULL CHECK (aggregate_id <> ''),
    event_type     text        NOT NULL CHECK (event_type <> ''),
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS {{created_at_index}} ON {{table}} (created_at);
