-- The example line database of the postgres service (scripts/services.d/postgres.sh):
-- what a plant's MES keeps about one production line. Applied as user unsflow, who
-- owns the tables (Debezium creates its publication for them); safe to apply again.
--
-- REPLICA IDENTITY FULL: the write-ahead log keeps the whole old row of an update
-- or delete, so Debezium's change events carry a full "before" image (with the
-- default, only the primary key of a deleted row).
-- `revision` counts the changes of a row (1 when inserted, +1 per update), as an
-- application with optimistic locking keeps it; tests use it to find lost events.

CREATE TABLE IF NOT EXISTS work_orders (
    id          bigserial PRIMARY KEY,
    line        text        NOT NULL,
    product     text        NOT NULL,
    quantity    integer     NOT NULL CHECK (quantity > 0),
    status      text        NOT NULL DEFAULT 'planned',  -- planned, running, done, cancelled
    revision    integer     NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS maintenance_events (
    id          bigserial PRIMARY KEY,
    machine     text        NOT NULL,
    kind        text        NOT NULL,  -- inspection, lubrication, repair, calibration
    started_at  timestamptz NOT NULL DEFAULT now(),
    duration_s  integer,
    technician  text,
    notes       text,
    revision    integer     NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS quality_results (
    id             bigserial PRIMARY KEY,
    work_order_id  bigint           NOT NULL,
    machine        text             NOT NULL,
    measure        text             NOT NULL,  -- e.g. diameter_mm
    value          double precision NOT NULL,
    passed         boolean          NOT NULL,
    measured_at    timestamptz      NOT NULL DEFAULT now(),
    revision       integer          NOT NULL DEFAULT 1
);

ALTER TABLE work_orders REPLICA IDENTITY FULL;
ALTER TABLE maintenance_events REPLICA IDENTITY FULL;
ALTER TABLE quality_results REPLICA IDENTITY FULL;
