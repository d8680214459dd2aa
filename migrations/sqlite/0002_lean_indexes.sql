-- Fewer index inserts per write, as Postgres' migration 2: objects_by_namespace
-- served DeleteNamespaceContents only, which now names every kind and so uses the
-- primary key (kind, namespace, name). (SQLite has no BRIN index:
-- changes_by_committed_at stays as it is.)
DROP INDEX objects_by_namespace;
