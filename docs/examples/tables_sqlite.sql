-- What create_table=True runs on SQLite for table="capillary_audit_logs" and no schema.
-- tests/test_docs_examples.py compares this file with the operator's own statements.
-- [START table_sqlite]
CREATE TABLE IF NOT EXISTS "capillary_audit_logs" (
  "event_name" TEXT NOT NULL,
  "id" TEXT,
  "org_id" INTEGER,
  "updated_type" TEXT,
  "request_id" TEXT,
  "value" TEXT,
  "previous_value" TEXT,
  "changed_on" TEXT,
  "changed_on_raw" TEXT
);
CREATE INDEX IF NOT EXISTS "capillary_audit_logs_event_name_changed_on_idx" ON "capillary_audit_logs" ("event_name", "changed_on");
-- [END table_sqlite]
