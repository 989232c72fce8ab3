//! The PostgreSQL schema and its migrations.
//!
//! `writ_schema` holds one row: the schema version. Migrations are applied at start, in order,
//! each in its own transaction under an advisory lock, so servers starting together migrate once.
//! A database whose version is newer than this build knows is refused (a newer writ migrated
//! it; running an older one against it could write what the newer one does not expect).

use tokio_postgres::Client;

use crate::StoreError;

/// Serialises migrations between servers (any constant; "writ" in ASCII).
const MIGRATION_LOCK: i64 = 0x7772_6974;

/// The migrations; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: everything the Store trait keeps.
    r#"
CREATE TABLE writ_entries (
    id text PRIMARY KEY,
    spiffe_id text NOT NULL,
    parent_id text NOT NULL,
    body text NOT NULL
);
CREATE INDEX writ_entries_spiffe ON writ_entries (spiffe_id, id);
CREATE INDEX writ_entries_parent ON writ_entries (parent_id, id);
CREATE TABLE writ_entry_selectors (
    selector text NOT NULL,
    entry_id text NOT NULL REFERENCES writ_entries (id) ON DELETE CASCADE,
    PRIMARY KEY (selector, entry_id)
);
CREATE TABLE writ_revlog (revision bigint PRIMARY KEY, body text NOT NULL);
CREATE TABLE writ_counters (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO writ_counters VALUES ('revision', 0);
CREATE TABLE writ_nodes (id text PRIMARY KEY, body text NOT NULL);
CREATE TABLE writ_join_tokens (token text PRIMARY KEY, body text NOT NULL, expires_at bigint NOT NULL);
CREATE TABLE writ_bundles (trust_domain text PRIMARY KEY, body text NOT NULL);
CREATE TABLE writ_blobs (name text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE writ_tasks (id text PRIMARY KEY, body text NOT NULL);
CREATE TABLE writ_audit (
    seq bigint PRIMARY KEY,
    body text NOT NULL,
    spiffe_id text, serial text, jti text, entry_id text, task_id text
);
CREATE INDEX writ_audit_spiffe ON writ_audit (spiffe_id, seq) WHERE spiffe_id IS NOT NULL;
CREATE INDEX writ_audit_serial ON writ_audit (serial, seq) WHERE serial IS NOT NULL;
CREATE INDEX writ_audit_jti ON writ_audit (jti, seq) WHERE jti IS NOT NULL;
CREATE INDEX writ_audit_entry ON writ_audit (entry_id, seq) WHERE entry_id IS NOT NULL;
CREATE INDEX writ_audit_task ON writ_audit (task_id, seq) WHERE task_id IS NOT NULL;
CREATE TABLE writ_audit_checkpoints (seq bigint PRIMARY KEY, body text NOT NULL);
CREATE TABLE writ_audit_head (one int PRIMARY KEY CHECK (one = 1), seq bigint NOT NULL, hash text NOT NULL);
"#,
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations the database lacks; refuses a newer schema.
pub(crate) async fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS writ_schema (version bigint NOT NULL)")
        .await?;
    let row = tx.query_opt("SELECT version FROM writ_schema", &[]).await?;
    let have: i64 = match row {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO writ_schema VALUES (0)", &[])
                .await?;
            0
        }
    };
    if have > VERSION {
        return Err(StoreError::Db(
            format!(
                "the database has schema version {have}, newer than this writ supports ({VERSION}): \
                 upgrade writ, or point it at another database"
            )
            .into(),
        ));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.batch_execute(m).await?;
        let v = i as i64 + 1;
        tx.execute("UPDATE writ_schema SET version = $1", &[&v])
            .await?;
        tracing::info!(version = v, "applied PostgreSQL schema migration");
    }
    // The audit head row exists from the first migration on.
    tx.execute(
        "INSERT INTO writ_audit_head VALUES (1, 0, $1) ON CONFLICT DO NOTHING",
        &[&writ_audit::GENESIS],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
