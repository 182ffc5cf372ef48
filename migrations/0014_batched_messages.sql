-- Items that travel together in one broker message: the outcome events of one type from one
-- worker batch, and the dispatch requests of one ingest transaction. Such a message's body is
-- `{"<list_key>": [{"<item_key>": <item>, "traceparent": "<W3C trace context>"}, ...]}`; a lone
-- item is sent as itself, with its trace context in the AMQP headers instead. The hot-path
-- inserts build their outbox rows with these two functions, so the shape is written once.
CREATE FUNCTION outbox_batch_body(list_key text, item_key text, items bytea[], traces text[])
RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(items) = 1 THEN items[1]
           ELSE convert_to(
               '{' || to_json(list_key)::text || ':['
               || (SELECT string_agg('{' || to_json(item_key)::text || ':'
                                     || convert_from(i, 'UTF8')
                                     || COALESCE(',"traceparent":' || to_json(t)::text, '')
                                     || '}', ',' ORDER BY n)
                   FROM unnest(items, traces) WITH ORDINALITY AS u(i, t, n))
               || ']}', 'UTF8') END
$$;

-- The AMQP headers of such a message: a lone item's trace context.
CREATE FUNCTION outbox_batch_headers(traces text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(traces) = 1 AND traces[1] IS NOT NULL
                THEN jsonb_build_object('traceparent', traces[1]) END
$$;
