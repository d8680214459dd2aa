-- Badge's store: one generic object table, the change feed, and the revision counter.
--
-- Kept portable on purpose (a later backend runs the same schema ideas on SQLite):
-- plain TEXT / BIGINT / BYTEA columns, times as BIGINT microseconds since the Unix
-- epoch, labels as a JSON object in a TEXT column (no jsonb operators). The only
-- Postgres-specific bit is COLLATE "C", which makes (namespace, name) order bytewise
-- (the same order as Rust's String and SQLite's BINARY collation) whatever the
-- database's locale is, so list cursors and page tokens mean the same everywhere.

-- Every object of every kind. The identity service encodes the prost message into
-- `data`; server-managed metadata lives in columns and is overlaid on decode.
CREATE TABLE objects (
    kind               TEXT   NOT NULL,
    -- '' for cluster-scoped kinds (Namespace, Node).
    namespace          TEXT   COLLATE "C" NOT NULL,
    name               TEXT   COLLATE "C" NOT NULL,
    uid                TEXT   NOT NULL,
    -- The revision of the object's last write.
    resource_version   BIGINT NOT NULL,
    -- JSON object of string -> string.
    labels             TEXT   NOT NULL,
    data               BYTEA  NOT NULL,
    creation_timestamp BIGINT NOT NULL,
    -- Set when a graceful delete is pending; the reaper removes the row after it.
    deletion_timestamp BIGINT,
    -- Identity of an object, and also the index behind get (exact match) and list:
    -- list filters on kind (and maybe namespace) and orders/pages by
    -- (namespace, name), which is exactly this index's order.
    PRIMARY KEY (kind, namespace, name)
);

-- DeleteNamespaceContents finds every object of a namespace across all kinds; the
-- primary key leads with kind, so without this it would scan the table.
CREATE INDEX objects_by_namespace ON objects (namespace, kind, name);

-- The graceful-delete reaper asks for the earliest pending deletion of a kind and
-- for the ones that are due. Partial: almost no rows have a deletion timestamp, so
-- the index stays tiny and costs writes nothing for ordinary objects.
CREATE INDEX objects_pending_deletion ON objects (kind, deletion_timestamp)
    WHERE deletion_timestamp IS NOT NULL;

-- The change feed: one row per object write, committed in the same transaction as
-- the write. Watchers read `revision > N` in order (the primary key serves that
-- range scan). A Deleted row carries the object's last state.
CREATE TABLE changes (
    revision           BIGINT PRIMARY KEY,
    -- 'ADDED' | 'MODIFIED' | 'DELETED'
    event              TEXT   NOT NULL,
    kind               TEXT   NOT NULL,
    namespace          TEXT   COLLATE "C" NOT NULL,
    name               TEXT   COLLATE "C" NOT NULL,
    uid                TEXT   NOT NULL,
    resource_version   BIGINT NOT NULL,
    labels             TEXT   NOT NULL,
    data               BYTEA  NOT NULL,
    creation_timestamp BIGINT NOT NULL,
    deletion_timestamp BIGINT,
    -- When the write was applied (the writer's clock), microseconds.
    committed_at       BIGINT NOT NULL
);

-- Compaction looks for the newest revision committed before a cut-off time and
-- then deletes the prefix of the feed up to it (by primary key); this index makes
-- the first step an index scan instead of a full scan of the feed.
CREATE INDEX changes_by_committed_at ON changes (committed_at, revision);

-- The revision counter: exactly one row. Every write transaction locks it first
-- (UPDATE ... RETURNING) and advances it before commit, so writers are serialised
-- and commit order equals revision order: a watcher that has seen revision N has
-- seen everything below N (a sequence would let a late commit of a smaller
-- revision slip behind a watcher).
CREATE TABLE revision_counter (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT  NOT NULL
);
INSERT INTO revision_counter (id, revision) VALUES (1, 0);

-- Feed bookkeeping, kept apart from the counter so compaction never takes the
-- writers' lock: the highest revision compaction has removed. A watcher resuming
-- from a revision below it has missed history and must relist.
CREATE TABLE feed_meta (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    compacted_revision BIGINT  NOT NULL
);
INSERT INTO feed_meta (id, compacted_revision) VALUES (1, 0);
