-- The production tables the worker's jobs read and write, with the production names and types
-- (spec section 2). Production already has them (the Python app owns its schema); this migration
-- exists for fresh environments and tests. `IF NOT EXISTS` keeps it harmless on a database the
-- Python app created, though only the columns the jobs use are declared here.
--
-- `updated_at` has a default on insert only: every UPDATE the jobs run sets it itself.

CREATE TABLE IF NOT EXISTS users (
    id                       SERIAL PRIMARY KEY,
    telegram_id              BIGINT       NOT NULL UNIQUE,
    username                 VARCHAR(255) NULL,
    first_name               VARCHAR(255) NOT NULL,
    last_name                VARCHAR(255) NULL,
    role                     VARCHAR(50)  NOT NULL,
    roles                    JSONB        NOT NULL DEFAULT '[]',
    is_active                BOOLEAN      NULL DEFAULT true,
    notification_preferences JSONB        NULL DEFAULT '{}',
    created_at               TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ  NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS objects (
    id                    SERIAL PRIMARY KEY,
    name                  VARCHAR(255)   NOT NULL,
    owner_id              INTEGER        NOT NULL REFERENCES users (id),
    address               TEXT           NULL,
    opening_time          TIME           NOT NULL,
    closing_time          TIME           NOT NULL,
    hourly_rate           NUMERIC(10, 2) NOT NULL,
    auto_close_minutes    INTEGER        NOT NULL DEFAULT 60,
    work_days_mask        INTEGER        NOT NULL DEFAULT 31,
    schedule_repeat_weeks INTEGER        NOT NULL DEFAULT 1,
    timezone              VARCHAR(50)    NULL,
    is_active             BOOLEAN        NULL DEFAULT true,
    created_at            TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ    NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_objects_owner_id ON objects (owner_id);

CREATE TABLE IF NOT EXISTS time_slots (
    id            SERIAL PRIMARY KEY,
    object_id     INTEGER        NOT NULL REFERENCES objects (id),
    slot_date     DATE           NOT NULL,
    start_time    TIME           NOT NULL,
    end_time      TIME           NOT NULL,
    hourly_rate   NUMERIC(10, 2) NULL,
    max_employees INTEGER        NULL DEFAULT 1,
    is_additional BOOLEAN        NULL DEFAULT false,
    is_active     BOOLEAN        NULL DEFAULT true,
    notes         TEXT           NULL,
    created_at    TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ    NULL DEFAULT now()
);
-- Deliberately not unique: several slots a day are legal (additional slots).
CREATE INDEX IF NOT EXISTS ix_time_slots_object_date_active
    ON time_slots (object_id, slot_date, is_active);

CREATE TABLE IF NOT EXISTS shift_schedules (
    id                SERIAL PRIMARY KEY,
    user_id           INTEGER        NOT NULL REFERENCES users (id),
    object_id         INTEGER        NOT NULL REFERENCES objects (id),
    time_slot_id      INTEGER        NULL REFERENCES time_slots (id),
    planned_start     TIMESTAMPTZ    NOT NULL,
    planned_end       TIMESTAMPTZ    NOT NULL,
    status            VARCHAR(50)    NULL DEFAULT 'planned',
    hourly_rate       NUMERIC(10, 2) NULL,
    notification_sent BOOLEAN        NULL DEFAULT false,
    auto_closed       BOOLEAN        NULL DEFAULT false,
    actual_shift_id   INTEGER        NULL,
    created_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ    NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_shift_schedules_status_start
    ON shift_schedules (status, planned_start);
CREATE INDEX IF NOT EXISTS ix_shift_schedules_user_id ON shift_schedules (user_id);
CREATE INDEX IF NOT EXISTS ix_shift_schedules_object_id ON shift_schedules (object_id);

CREATE TABLE IF NOT EXISTS shifts (
    id            SERIAL PRIMARY KEY,
    user_id       INTEGER        NOT NULL REFERENCES users (id),
    object_id     INTEGER        NOT NULL REFERENCES objects (id),
    time_slot_id  INTEGER        NULL REFERENCES time_slots (id),
    schedule_id   INTEGER        NULL REFERENCES shift_schedules (id),
    start_time    TIMESTAMPTZ    NOT NULL,
    end_time      TIMESTAMPTZ    NULL,
    status        VARCHAR(50)    NULL DEFAULT 'active',
    is_planned    BOOLEAN        NULL DEFAULT false,
    total_hours   NUMERIC(5, 2)  NULL,
    hourly_rate   NUMERIC(10, 2) NULL,
    total_payment NUMERIC(10, 2) NULL,
    created_at    TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ    NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_shifts_status_start ON shifts (status, start_time);
CREATE INDEX IF NOT EXISTS ix_shifts_object_start ON shifts (object_id, start_time);
CREATE INDEX IF NOT EXISTS ix_shifts_user_id ON shifts (user_id);

-- shifts and shift_schedules point at each other; the second key can only come once both exist.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'shift_schedules_actual_shift_id_fkey'
    ) THEN
        ALTER TABLE shift_schedules
            ADD CONSTRAINT shift_schedules_actual_shift_id_fkey
            FOREIGN KEY (actual_shift_id) REFERENCES shifts (id);
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS notifications (
    id            SERIAL PRIMARY KEY,
    user_id       INTEGER      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type          VARCHAR(50)  NOT NULL,
    channel       VARCHAR(50)  NOT NULL,
    status        VARCHAR(50)  NOT NULL,
    priority      VARCHAR(50)  NOT NULL,
    title         VARCHAR(200) NOT NULL,
    message       TEXT         NOT NULL,
    data          JSON         NULL,
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    scheduled_at  TIMESTAMPTZ  NULL,
    sent_at       TIMESTAMPTZ  NULL,
    read_at       TIMESTAMPTZ  NULL,
    error_message TEXT         NULL,
    retry_count   INTEGER      NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_notifications_user_id ON notifications (user_id);
CREATE INDEX IF NOT EXISTS ix_notifications_status ON notifications (status);
