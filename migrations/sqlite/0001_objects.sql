-- Badge's store on SQLite: the same tables as ../0001_objects.sql (read that file
-- for what each one is for), in SQLite's dialect. Migrations are numbered in
-- lockstep with the Postgres ones: migration N makes the same schema on both.
--
-- Differences: STRICT tables with INTEGER / TEXT / BLOB columns (SQLite's integers
-- are 64-bit); no COLLATE "C" — SQLite's default BINARY collation already orders
-- (namespace, name) bytewise; changes.revision is an INTEGER PRIMARY KEY (the rowid).

CREATE TABLE objects (
    kind               TEXT    NOT NULL,
    namespace          TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    uid                TEXT    NOT NULL,
    resource_version   INTEGER NOT NULL,
    labels             TEXT    NOT NULL,
    data               BLOB    NOT NULL,
    creation_timestamp INTEGER NOT NULL,
    deletion_timestamp INTEGER,
    PRIMARY KEY (kind, namespace, name)
) STRICT;

CREATE INDEX objects_by_namespace ON objects (namespace, kind, name);

CREATE INDEX objects_pending_deletion ON objects (kind, deletion_timestamp)
    WHERE deletion_timestamp IS NOT NULL;

CREATE TABLE changes (
    revision           INTEGER PRIMARY KEY,
    event              TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    namespace          TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    uid                TEXT    NOT NULL,
    resource_version   INTEGER NOT NULL,
    labels             TEXT    NOT NULL,
    data               BLOB    NOT NULL,
    creation_timestamp INTEGER NOT NULL,
    deletion_timestamp INTEGER,
    committed_at       INTEGER NOT NULL
) STRICT;

CREATE INDEX changes_by_committed_at ON changes (committed_at, revision);

-- Writers are serialised in-process (and by BEGIN IMMEDIATE); the counter still
-- hands out revisions, so commit order equals revision order as on Postgres.
CREATE TABLE revision_counter (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
) STRICT;
INSERT INTO revision_counter (id, revision) VALUES (1, 0);

CREATE TABLE feed_meta (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    compacted_revision INTEGER NOT NULL
) STRICT;
INSERT INTO feed_meta (id, compacted_revision) VALUES (1, 0);
