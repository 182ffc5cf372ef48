-- Items that travel together in one broker message: the outcome events of one type from one
-- worker batch, and the dispatch requests of one ingest transaction. Such a message's body is
-- `{"<list_key>": [{"<item_key>": <item>, "traceparent": "<W3C trace context>"}, ...]}`; a lone
-- item is sent as itself, with its trace context in the AMQP headers instead. The hot-path
-- inserts build their outbox rows with these two functions, so the shape is written once.
-- PL/pgSQL rather than SQL: a SQL function with a subquery is not inlined, and is planned again
-- at every execution of the statement that calls it; PL/pgSQL keeps its plan for the session.
CREATE FUNCTION outbox_batch_body(list_key text, item_key text, items bytea[], traces text[])
RETURNS bytea LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF cardinality(items) = 1 THEN
        RETURN items[1];
    END IF;
    RETURN convert_to(
        '{' || to_json(list_key)::text || ':['
        || (SELECT string_agg('{' || to_json(item_key)::text || ':' || convert_from(i, 'UTF8')
                              || COALESCE(',"traceparent":' || to_json(t)::text, '') || '}',
                              ',' ORDER BY n)
            FROM unnest(items, traces) WITH ORDINALITY AS u(i, t, n))
        || ']}', 'UTF8');
END
$$;

-- The AMQP headers of such a message: a lone item's trace context (a plain expression, which the
-- planner inlines).
CREATE FUNCTION outbox_batch_headers(traces text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(traces) = 1 AND traces[1] IS NOT NULL
                THEN jsonb_build_object('traceparent', traces[1]) END
$$;
