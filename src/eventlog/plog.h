/*
 * plog.h — one partition's log on disk: segments of record batches with a
 * sparse offset index and a time index, recovery after a crash, retention,
 * and group-committed durability.
 *
 * Files in the partition's directory (Kafka's naming): for each segment,
 * 00000000000000000000.log (batches exactly as produced, base offsets
 * patched), .index (sparse: relative offset -> file position) and
 * .timeindex (sparse: max timestamp so far -> relative offset); and one
 * recovery-point file (Kafka's recovery-point-offset-checkpoint, per
 * partition): an offset below which everything is known to be on disk,
 * which bounds what recovery must scan. The byte layout of each file is
 * specified at the top of plog.c.
 *
 * Threading: a plog belongs to the loop that opened it; every call is made
 * on that loop's thread, except that fdatasync runs on a flusher thread
 * owned by the plog. Completions come back to the owner loop through a
 * per-plog eventfd watched on it (like weft_loop_post, but unregistered by
 * plog_close, so no completion can outlive the plog).
 *
 * Ownership: the plog owns its files. A slice holds a reference to its
 * segment so the file stays open (even if retention deletes the segment)
 * until plog_slice_release.
 */
#ifndef WEFT_EVENTLOG_PLOG_H
#define WEFT_EVENTLOG_PLOG_H

#include "weft/loop.h"
#include "weft/weft.h"

#include <sys/types.h>

typedef struct plog plog;

enum plog_fsync { PLOG_FSYNC_ALWAYS = 0, PLOG_FSYNC_INTERVAL };

typedef struct plog_opts {
    uint64_t segment_bytes;        /* roll after this size; default 64 MiB */
    uint32_t index_interval_bytes; /* an index entry every this many bytes; default 4096 */
    int64_t retention_ms;          /* delete segments whose newest record is older
                                      (no timestamps: whose .log was last modified
                                      before); -1 = forever; default 7 days */
    int64_t retention_bytes;       /* keep at most this much; -1 = no limit (default) */
    int fsync;                     /* PLOG_FSYNC_ALWAYS (default) or _INTERVAL */
    uint32_t fsync_interval_ms;    /* for _INTERVAL; default 1000 */
    size_t max_batch_bytes;        /* default 1 MiB + 12 */
    uint64_t preallocate_bytes;    /* extend the active .log by this much ahead
                                      of appends (fallocate); 0 = off;
                                      default 4 MiB */
    uint32_t checkpoint_interval_ms; /* write the recovery point (the durable
                                      end) this often while it moves, from the
                                      flusher thread; also at open and close;
                                      0 = only then; default 30000 */
} plog_opts;
void plog_opts_default(plog_opts *o);

/* Called on the owner loop when everything appended up to (excluding)
 * durable_end is on disk; and once more when a flush fails (plog_failed()
 * is then set): what was appended past durable_end is not known to be on
 * disk and will not be made durable by this plog, so whoever waits for it
 * must be told now rather than wait for ever. */
typedef void (*plog_durable_cb)(plog *l, int64_t durable_end, void *ud);

/* Open (creating the directory if needed) and recover: the batches of every
 * segment from the one holding the recovery point on (without a valid
 * recovery-point file: of the last two segments) are checked (header
 * sanity + CRC) and a torn or corrupt tail is truncated to the last whole
 * batch (segments after a cut one are deleted); older segments get a
 * structural check; a missing or damaged index is rebuilt from the log.
 * Then everything is synced and the recovery point set to the end. Never
 * fails because of a torn tail. Returns 0 or a WEFT_E* error (I/O errors
 * on the directory). The recovery outcome is logged. */
int plog_open(weft_loop *loop, const char *dir, const plog_opts *o, plog_durable_cb cb, void *ud,
              plog **out);
/* Flush what is pending (synchronously), stop the flusher, write the
 * recovery point (the durable end: the end unless a flush failed), close
 * files. The durable callback is not called from here. Slices not yet released
 * stay valid (they keep their segment's file open). */
void plog_close(plog *l);

int64_t plog_start_offset(const plog *l);   /* first offset kept (log start) */
int64_t plog_active_base(const plog *l);    /* base offset of the segment being written */
size_t plog_segments(const plog *l);        /* segments kept, >= 1 */
int64_t plog_segment_base(const plog *l, size_t i); /* of the i-th oldest; i < plog_segments */
int64_t plog_end_offset(const plog *l);     /* next offset to assign (high watermark) */
int64_t plog_durable_offset(const plog *l); /* end offset known to be on disk */
/* 0, or WEFT_EIO once an fdatasync (or an undo after a failed write) has
 * failed: appends are refused from then on, until the log is reopened
 * (restart), whose recovery keeps the whole batches that reached the disk. */
int plog_failed(const plog *l);
uint64_t plog_size_bytes(const plog *l);

/* Append one validated batch (p, n: a whole batch as produced; it is
 * patched in place with its base offset and leader epoch, then written).
 * *base_offset gets the batch's first offset. The data is readable at
 * once; durability is reported through the durable callback (with
 * PLOG_FSYNC_ALWAYS a flush is requested for it; concurrent appends share
 * one flush). Rolls the segment when full. 0 or WEFT_EIO / WEFT_ETOOBIG
 * (n > max_batch_bytes) / WEFT_EINVAL (n is not one batch's size). After a
 * failed fdatasync every append fails with WEFT_EIO until reopened. */
int plog_append(plog *l, uint8_t *p, size_t n, int32_t leader_epoch, int64_t *base_offset);

/* A range of whole batches in one segment file, for sendfile. */
typedef struct plog_slice {
    int fd;
    off_t pos;
    size_t len;           /* 0: nothing at this offset yet */
    int64_t first_offset; /* base offset of the first batch in the range */
    void *seg;            /* reference held; release with plog_slice_release */
} plog_slice;

/* Locate batches from `offset` on: the batch containing offset and the
 * following ones of the same segment, up to max_bytes — but always at
 * least one whole batch if one exists at or after offset. offset ==
 * end_offset gives len 0 (fd -1, nothing to release). Returns 0, or
 * WEFT_ENOTFOUND if offset is below the log start or above the end
 * (OFFSET_OUT_OF_RANGE), or WEFT_EIO if the file cannot be read. */
int plog_read(plog *l, int64_t offset, size_t max_bytes, plog_slice *out);
void plog_slice_release(plog_slice *s);

/* First offset whose batch's max timestamp >= ts (ListOffsets by time), or
 * -1 if none. */
int64_t plog_offset_for_time(plog *l, int64_t ts);

/* Delete whole segments beyond retention (never the active one, never data
 * above the durable offset). Returns the number of segments deleted. */
int plog_enforce_retention(plog *l, int64_t now_wall_ms);

/* Counters, for tests and metrics. */
typedef struct plog_stats {
    uint64_t appends;          /* batches appended since open */
    uint64_t flushes;          /* fdatasync rounds run by the flusher */
    size_t segments;           /* segments now on disk */
    uint64_t truncated_bytes;  /* torn/corrupt tail bytes cut at open */
    uint32_t index_rebuilds;   /* finished segments whose indexes were rebuilt at open */
    uint32_t segments_dropped; /* segments deleted at open after damage before them */
    uint32_t full_scans;       /* segments CRC-scanned batch by batch at open (one
                                  scanned twice counts twice) */
} plog_stats;
void plog_stats_get(plog *l, plog_stats *out);

#endif
