-- Undo 0004: drop the compression policies, decompress every compressed chunk (the data stays), and
-- turn compression off. Nothing to do on the native-partitioning path.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR (SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')) IS DISTINCT FROM 'r' THEN
        RETURN;
    END IF;
    PERFORM remove_compression_policy('predictions', if_exists => true);
    PERFORM remove_compression_policy('prediction_metrics', if_exists => true);
    PERFORM decompress_chunk(c, if_compressed => true) FROM show_chunks('predictions') AS c;
    PERFORM decompress_chunk(c, if_compressed => true) FROM show_chunks('prediction_metrics') AS c;
    ALTER TABLE predictions SET (timescaledb.compress = false);
    ALTER TABLE prediction_metrics SET (timescaledb.compress = false);
END
$do$;

DELETE FROM schema_migrations WHERE version = 4;
