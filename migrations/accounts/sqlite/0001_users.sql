-- Users (SQLite). Timestamps are RFC 3339 UTC text; booleans are 0/1.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    email           TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    hashed_password TEXT    NOT NULL,
    full_name       TEXT,
    is_active       BOOLEAN NOT NULL DEFAULT 1,
    is_superuser    BOOLEAN NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT
);

-- Uniqueness is the database's job (API.md): case-insensitive on both.
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));
CREATE UNIQUE INDEX users_username_unique ON users (lower(username));
