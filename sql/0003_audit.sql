-- 0003_audit: audit retention (AUDIT-002): `orch audit rotate` moves events older than the
-- retention period (at least 90 days) into monthly archive files under .state/archive/events/.
-- The procedure, its crash behaviour and how to verify the archives are in
-- docs/operations/AUDIT_RETENTION.md; the code is kernel/observe/archive.py.
--
-- * event_archive: one row per archive file written by a rotation (append-only): which events
--   went where, how many, and the checksums to verify the file with.
-- * event_rotation_marker: present only inside the rotation's delete transaction.
-- * event_append_only_delete is recreated: an event can now be deleted, but only while the
--   rotation marker exists, only up to the marker's last_seq, and only when an event_archive
--   row of that rotation covers its seq. Everything else is refused as before.
--
-- Like 0001, everything here stays parseable by SQLite 3.40 (no expressions in RAISE()).

CREATE TABLE event_archive (
    archive_id          INTEGER PRIMARY KEY,
    rotation_seq        INTEGER NOT NULL,   -- seq of the audit_rotated event of this rotation
    file                TEXT NOT NULL       -- file name in .state/archive/events/
                        CHECK (file GLOB 'events-[0-9][0-9][0-9][0-9]-[0-9][0-9].sqlite'),
    month               TEXT NOT NULL CHECK (month GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]'),
    first_seq           INTEGER NOT NULL,   -- the events this rotation moved into the file
    last_seq            INTEGER NOT NULL,
    events              INTEGER NOT NULL CHECK (events >= 1),
    batch_sha256        TEXT NOT NULL,      -- content checksum of those events
    through_seq         INTEGER NOT NULL,   -- every event up to this seq has left the live table
    file_events         INTEGER NOT NULL,   -- events in the file with seq <= through_seq
    file_content_sha256 TEXT NOT NULL,      -- content checksum of those events
    file_sha256         TEXT NOT NULL,      -- sha256 of the file's bytes (`sha256sum FILE`)
    file_bytes          INTEGER NOT NULL,
    rotated_at          TEXT NOT NULL,
    CONSTRAINT event_archive_seq_range CHECK (
        first_seq >= 1 AND first_seq <= last_seq AND last_seq <= through_seq
        AND events <= last_seq - first_seq + 1 AND file_events >= events)
) STRICT;

CREATE INDEX event_archive_by_rotation ON event_archive (rotation_seq, first_seq, last_seq);
CREATE INDEX event_archive_by_file ON event_archive (file, archive_id);

CREATE TRIGGER event_archive_append_only_update BEFORE UPDATE ON event_archive
BEGIN
    SELECT RAISE(ABORT, 'event_archive is append-only: a rotation record cannot be changed');
END;

CREATE TRIGGER event_archive_append_only_delete BEFORE DELETE ON event_archive
BEGIN
    SELECT RAISE(ABORT, 'event_archive is append-only: a rotation record cannot be deleted');
END;

-- One row, only inside the delete transaction of `orch audit rotate` (inserted and deleted in
-- the same transaction, so it is never seen at rest; a row at rest was written by hand).
CREATE TABLE event_rotation_marker (
    marker_id    INTEGER PRIMARY KEY CHECK (marker_id = 1),
    rotation_seq INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL CHECK (last_seq < rotation_seq),
    started_at   TEXT NOT NULL
) STRICT;

DROP TRIGGER event_append_only_delete;

CREATE TRIGGER event_append_only_delete BEFORE DELETE ON event
WHEN NOT EXISTS (
    SELECT 1 FROM event_rotation_marker m
      JOIN event_archive a ON a.rotation_seq = m.rotation_seq
     WHERE OLD.seq <= m.last_seq AND OLD.seq BETWEEN a.first_seq AND a.last_seq)
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: an event cannot be deleted (old events are archived with orch audit rotate)');
END;
