/*
 * journal.h — the registry's durable state: a snapshot plus an append-only
 * journal of records, in a data directory.
 *
 * Records are opaque byte strings to this module (the registry writes JSON
 * lines). Each is framed with its length and a CRC-32C so a torn or
 * corrupted tail — a crash in the middle of a write — is detected on open
 * and cut off at the last whole record; the files never stop the registry
 * from starting. Durability is explicit: append() buffers, sync() writes and
 * fdatasync()s, so callers group many appends into one sync (group commit).
 *
 * Files in DIR: "snapshot" (the full state as records, replaced atomically
 * by write-to-temp + fsync + rename + fsync(dir)), "journal" (records since
 * that snapshot). The exact byte layout is specified at the top of
 * journal.c.
 *
 * Ownership: a reg_journal owns its fds and buffer. Threading: one thread.
 */
#ifndef WEFT_REGISTRY_JOURNAL_H
#define WEFT_REGISTRY_JOURNAL_H

#include "weft/weft.h"

typedef struct reg_journal reg_journal;
typedef struct reg_journal_writer reg_journal_writer;

typedef struct reg_journal_stats {
    uint64_t snapshot_records; /* records replayed from the snapshot */
    uint64_t journal_records;  /* records replayed from the journal */
    uint64_t truncated_bytes;  /* torn/corrupt tail cut from the journal on open */
    bool snapshot_damaged;     /* the snapshot had a bad record: replay stopped there */
} reg_journal_stats;

/* Open (creating DIR and the files if needed) and replay: replay(ud, rec,
 * len) is called for every valid record, snapshot first, then journal, in
 * order. A non-zero return from replay aborts the open with that code.
 * Returns 0 and *out, or a WEFT_E* code (I/O errors name the file in the
 * log). */
int reg_journal_open(const char *dir, int (*replay)(void *ud, const char *rec, size_t len),
                     void *ud, reg_journal **out, reg_journal_stats *stats);
/* Buffer one record (len <= 16 MiB). */
int reg_journal_append(reg_journal *j, const char *rec, size_t len);
/* Write buffered records and fdatasync the journal. */
int reg_journal_sync(reg_journal *j);
/* Bytes in the journal file (to decide when to snapshot). */
uint64_t reg_journal_size(const reg_journal *j);
/* Replace the snapshot with the records emit() adds through
 * reg_journal_snapshot_add(), then start an empty journal. Crash-safe: at
 * every instant either the old snapshot + old journal or the new snapshot
 * (+ empty journal) is on disk. */
int reg_journal_snapshot(reg_journal *j, int (*emit)(void *ud, reg_journal_writer *w), void *ud);
int reg_journal_snapshot_add(reg_journal_writer *w, const char *rec, size_t len);
/* Sync and close. */
void reg_journal_close(reg_journal *j);

/* weft_crc32c, the frames' checksum, lives in weft/crc32c.h. */
#include "weft/crc32c.h"

#endif
