-- 0003 partition_maintenance: the routines that keep the native daily partitions of migration 0002
-- ahead of time and drop the ones past the retention. On the TimescaleDB path both are no-ops
-- (TimescaleDB makes its chunks itself and its retention policy drops them), so the service calls
-- them the same way on either path.
--
-- Partitions are whole UTC days, named <table>_pYYYYMMDD, covering [day 00:00 UTC, next day 00:00 UTC).
-- Both routines take a transaction-scoped advisory lock, so several service instances may run them
-- at the same moment. Both take an explicit reference point, so they can be tested for any date.

CREATE OR REPLACE FUNCTION prediction_partitions_ensure(
    days_ahead integer DEFAULT 7,
    reference  date    DEFAULT (now() AT TIME ZONE 'UTC')::date
) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    parent       text;
    default_part regclass;
    part         text;
    day          date;
    lo           timestamptz;
    hi           timestamptz;
    locked       boolean;
BEGIN
    IF days_ahead IS NULL OR days_ahead < 0 OR reference IS NULL THEN
        RAISE EXCEPTION USING
            MESSAGE = 'prediction_partitions_ensure: days_ahead must be 0 or more and reference a date, got '
                      || coalesce(days_ahead::text, 'NULL') || ' and ' || coalesce(reference::text, 'NULL');
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('prediction_partitions'));

    FOREACH parent IN ARRAY ARRAY['predictions', 'prediction_metrics'] LOOP
        -- Only natively partitioned tables (relkind p); a hypertable is left to TimescaleDB.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(parent) AND relkind = 'p');
        SELECT NULLIF(partdefid, 0)::regclass INTO default_part
          FROM pg_partitioned_table WHERE partrelid = to_regclass(parent);
        locked := false;

        FOR i IN 0..days_ahead LOOP
            day  := reference + i;
            part := parent || '_p' || to_char(day, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            lo := day::timestamp AT TIME ZONE 'UTC';
            hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
            IF NOT locked THEN
                -- Parent first (the order inserts lock in); blocks writers, not readers, so no row can
                -- reach the DEFAULT partition between moving its rows out and attaching the new one.
                EXECUTE 'LOCK TABLE ' || quote_ident(parent) || ' IN SHARE ROW EXCLUSIVE MODE';
                locked := true;
            END IF;
            EXECUTE 'CREATE TABLE ' || quote_ident(part) || ' (LIKE ' || quote_ident(parent)
                    || ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)';
            -- Rows of that day that landed in the DEFAULT partition move into it, otherwise the
            -- attach would fail (the DEFAULT partition may not hold rows of an attached range).
            IF default_part IS NOT NULL THEN
                EXECUTE 'WITH moved AS (DELETE FROM ' || default_part::text
                        || ' WHERE time >= $1 AND time < $2 RETURNING *) INSERT INTO '
                        || quote_ident(part) || ' SELECT * FROM moved'
                  USING lo, hi;
            END IF;
            -- Attaching creates the partition's copies of the parent's indexes.
            EXECUTE 'ALTER TABLE ' || quote_ident(parent) || ' ATTACH PARTITION ' || quote_ident(part)
                    || ' FOR VALUES FROM (' || quote_literal(lo) || ') TO (' || quote_literal(hi) || ')';
            RETURN NEXT part;
        END LOOP;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION prediction_partitions_ensure(integer, date) IS
    'Creates the missing daily partitions of predictions and prediction_metrics for reference .. '
    'reference + days_ahead (UTC days), moving rows of those days out of the DEFAULT partition; '
    'returns the names created. No-op on TimescaleDB hypertables.';

CREATE OR REPLACE FUNCTION prediction_partitions_drop_older_than(
    retention interval    DEFAULT INTERVAL '30 days',
    reference timestamptz DEFAULT now()
) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    parent       text;
    default_part regclass;
    cutoff       timestamptz;
    part         regclass;
    part_name    text;
    upper_bound  timestamptz;
    deleted      bigint;
BEGIN
    IF retention IS NULL OR retention < INTERVAL '0 seconds' OR reference IS NULL THEN
        RAISE EXCEPTION USING
            MESSAGE = 'prediction_partitions_drop_older_than: retention must be zero or more and reference a time, got '
                      || coalesce(retention::text, 'NULL') || ' and ' || coalesce(reference::text, 'NULL');
    END IF;
    -- Whole partitions only: one is dropped when its upper bound is at or before the cutoff, so
    -- nothing newer than the retention goes. The cutoff never passes the start of the current UTC
    -- day, so today's partition is never dropped, whatever the arguments.
    cutoff := least(reference - retention,
                    date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
    PERFORM pg_advisory_xact_lock(hashtext('prediction_partitions'));

    FOREACH parent IN ARRAY ARRAY['predictions', 'prediction_metrics'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(parent) AND relkind = 'p');
        SELECT NULLIF(partdefid, 0)::regclass INTO default_part
          FROM pg_partitioned_table WHERE partrelid = to_regclass(parent);

        FOR part, upper_bound IN
            SELECT c.oid::regclass,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO [(]''([^'']*)''[)]'))[1]::timestamptz
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass(parent)
             ORDER BY 2
        LOOP
            -- The DEFAULT partition (and any MAXVALUE bound) has no upper bound literal: never dropped.
            CONTINUE WHEN upper_bound IS NULL OR upper_bound > cutoff;
            part_name := part::text;  -- a dropped regclass would print as a bare OID
            EXECUTE 'DROP TABLE ' || part_name;
            RETURN NEXT part_name;
        END LOOP;

        -- Rows that fell into the DEFAULT partition expire with the same cutoff.
        IF default_part IS NOT NULL THEN
            EXECUTE 'DELETE FROM ' || default_part::text || ' WHERE time < $1' USING cutoff;
            GET DIAGNOSTICS deleted = ROW_COUNT;
            IF deleted > 0 THEN
                RAISE NOTICE USING MESSAGE = 'deleted ' || deleted || ' expired rows from ' || default_part::text;
            END IF;
        END IF;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION prediction_partitions_drop_older_than(interval, timestamptz) IS
    'Drops the daily partitions of predictions and prediction_metrics whose whole range is older than '
    'reference - retention (never the current UTC day), deletes expired rows of the DEFAULT partitions; '
    'returns the names dropped. No-op on TimescaleDB hypertables (their retention policy does this).';

-- Partitions for today and the next 7 days, so a fresh database takes rows at once.
SELECT count(*) AS partitions_created FROM prediction_partitions_ensure(7);

INSERT INTO schema_migrations (version, name) VALUES (3, 'partition_maintenance')
ON CONFLICT DO NOTHING;
