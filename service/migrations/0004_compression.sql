-- 0004 compression: TimescaleDB's columnar compression for chunks older than 3 days, on both
-- hypertables. On the native-partitioning path this file only records itself (PostgreSQL has no
-- equivalent; old partitions are dropped whole by the retention routine of 0003).
--
-- Why 3 days: chunks are one UTC day (0002), and compress_after counts from a chunk's end, so today's
-- chunk and the two before it stay row-oriented with their B-tree indexes. That keeps what is read
-- and written most on the fast path: late rows (a writer's backlog after an outage, rows of a
-- batch that straddles midnight) land in plain chunks, and a request can be looked up by request_id
-- through its index for about three days (a weekend's incidents). The other 27 of the 30 retained
-- days are compressed. Compressed chunks still take inserts, updates and deletes (TimescaleDB 2.11+),
-- only more slowly. Ratio measured on a realistic day of rows: docs/performance.md.
--
-- segmentby: the columns queries filter and group on, with few distinct values (rows of one model
-- version sit together, so a per-model query decompresses only its segments); orderby time DESC
-- like the indexes. Compression jobs run as the role that ran this file (the tables' owner).

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR (SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')) = 'p' THEN
        RAISE NOTICE 'compression: native partitions, nothing to compress';
        RETURN;
    END IF;
    -- Compression settings are set once; applying the file again keeps them (changing segmentby
    -- would be refused once chunks are compressed).
    IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables
             WHERE hypertable_schema = current_schema() AND hypertable_name = 'predictions') THEN
        ALTER TABLE predictions SET (timescaledb.compress,
                                     timescaledb.compress_segmentby = 'model, model_version',
                                     timescaledb.compress_orderby = 'time DESC');
    END IF;
    IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables
             WHERE hypertable_schema = current_schema() AND hypertable_name = 'prediction_metrics') THEN
        ALTER TABLE prediction_metrics SET (timescaledb.compress,
                                            timescaledb.compress_segmentby = 'model, model_version, instance',
                                            timescaledb.compress_orderby = 'time DESC');
    END IF;
    PERFORM add_compression_policy('predictions', INTERVAL '3 days', if_not_exists => true);
    PERFORM add_compression_policy('prediction_metrics', INTERVAL '3 days', if_not_exists => true);
    RAISE NOTICE 'compression: chunks older than 3 days are compressed (segmentby model, model_version)';
END
$do$;

INSERT INTO schema_migrations (version, name) VALUES (4, 'compression')
ON CONFLICT DO NOTHING;
