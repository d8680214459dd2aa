-- Fewer index inserts per write (issue 17): every create inserted four index
-- entries (objects' primary key and objects_by_namespace; changes' primary key and
-- changes_by_committed_at), every non-HOT update three.
--
-- objects_by_namespace served DeleteNamespaceContents only; the primary key
-- (kind, namespace, name) serves it as well when the query names every kind
-- (`kind IN (…all kinds…) AND namespace = $1`: one index range per kind).
DROP INDEX objects_by_namespace;

-- Compaction asks for the newest revision committed before a cut-off. committed_at
-- grows with revision (it is the writing batch's clock), so a BRIN index — a few
-- bytes per range of pages, next to nothing to maintain on insert — finds the
-- pages as well as the btree did.
DROP INDEX changes_by_committed_at;
CREATE INDEX changes_by_committed_at ON changes USING brin (committed_at);
