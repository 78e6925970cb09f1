-- What create_table=True runs on PostgreSQL for table="capillary_audit_logs", schema="audit".
-- tests/test_docs_examples.py compares this file with the operator's own statements.
-- [START table_postgresql]
CREATE TABLE IF NOT EXISTS "audit"."capillary_audit_logs" (
  "event_name" TEXT NOT NULL,
  "id" TEXT,
  "org_id" BIGINT,
  "updated_type" TEXT,
  "request_id" TEXT,
  "value" TEXT,
  "previous_value" TEXT,
  "changed_on" TIMESTAMP WITH TIME ZONE,
  "changed_on_raw" TEXT
);
CREATE INDEX IF NOT EXISTS "capillary_audit_logs_event_name_changed_on_idx" ON "audit"."capillary_audit_logs" ("event_name", "changed_on");
-- [END table_postgresql]
