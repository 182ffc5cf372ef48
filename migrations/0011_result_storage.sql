-- Rendered documents may live in an object store (`storage.url` = `file://...` or `s3://...`)
-- instead of the `result` column. `result_key` names the object; NULL means the document, if the
-- dispatch has one, is in `result` (every dispatch finished with `storage.url = postgres`, and all
-- that finished before this migration). A dispatch has a document when `result_content_type` is
-- set, wherever the document is. Adding a nullable column without a default rewrites nothing.
ALTER TABLE dispatches ADD COLUMN result_key text;
