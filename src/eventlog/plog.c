/*
 * plog.c — one partition's log on disk (see plog.h).
 *
 * Design. The log is a list of segments; only the last one (the active
 * segment) is appended to. A batch is patched with its offset and written
 * with write(2) at the end of the active .log, so it is readable at once;
 * every index_interval_bytes a sparse offset-index entry (and, when the
 * segment's largest timestamp grew, a time-index entry) is written next to
 * it. Indexes are not kept in memory: lookups binary-search the index file
 * with pread (the page cache holds it) and then walk batch headers forward,
 * so memory does not grow with the amount of data kept.
 *
 * Durability is a group commit. Appends only ask (under a per-plog mutex)
 * for the log to be made durable up to the current end; one flusher thread
 * per plog takes whatever has been asked, fdatasyncs once, and reports the
 * end it covered. Appends arriving while a flush runs are covered by the
 * next one, so a burst of N appends costs a handful of flushes, not N.
 * Completions come back to the owner loop through a per-plog eventfd
 * watched on that loop (the same mechanism weft_loop_post uses, but one a
 * plog can unregister): weft_loop_post cannot be cancelled and
 * weft_loop_free drops queued posts without running them, so a completion
 * posted just before plog_close would either run on a freed plog or leak.
 * The loop then advances durable_offset and calls the durable callback.
 * An append that finds the flusher asleep also starts the device write of
 * its bytes from the loop, so the I/O overlaps the flusher's wake-up (see
 * on_writeback).
 *
 * Preallocation. The active .log is extended with fallocate(2) ahead of
 * the appends, preallocate_bytes at a time (default 4 MiB, never past
 * segment_bytes unless one batch is larger), and written with pwrite at
 * the logical end. An append into space that is already allocated and
 * inside the file's size needs no size change, and usually no block
 * allocation, so its fdatasync has no metadata to commit: on ext4 a small
 * fsync'd append costs ~170 µs instead of ~250 µs (the same test as `dd
 * oflag=dsync`, 200-byte writes). A segment is cut back to its logical
 * size when it is rolled and when the plog is closed; after a crash the
 * active segment (or, if the crash came between a roll and its flush, the
 * one before) ends in zeros, which recovery removes without calling it
 * damage (see Recovery). A file system without fallocate just turns it
 * off for that plog.
 *
 * Segment lifetime. A segment is reference counted on the owner loop only:
 * the plog holds one reference while it lists the segment, each slice holds
 * one (retention may unlink the files while a sendfile is pending), and a
 * finished segment waiting for its final fsync holds one while it sits in
 * the flusher's queues (the flusher never changes a count; the loop drops
 * those references when the flush is reported). The active segment is
 * synced without a reference: it stays listed until it is rolled, and a
 * rolled segment is queued (with a reference) before any later flush.
 *
 * On-disk format
 * --------------
 * Files in the directory, per segment, named by the segment's base offset
 * (the base offset of its first batch) as 20 decimal digits, zero padded:
 *
 *   00000000000000001234.log
 *     Record batches (magic 2, see kafka/batch.h) back to back, each exactly
 *     as produced except bytes 0-7 (baseOffset, big-endian i64) and 12-15
 *     (partitionLeaderEpoch, big-endian i32), which the broker assigns; the
 *     CRC does not cover them. Offsets are contiguous: each batch's
 *     baseOffset is the previous batch's baseOffset + lastOffsetDelta + 1,
 *     and the first batch's baseOffset is the number in the file name. No
 *     header, no padding. The file may be longer than its batches (up to
 *     preallocate_bytes, while the segment is active or after a crash):
 *     everything after the last batch is then zero bytes.
 *
 *   00000000000000001234.index — sparse offset index, 8-byte entries:
 *     0..3  u32 big-endian: baseOffset of a batch minus the segment's base
 *     4..7  u32 big-endian: byte position of that batch in the .log
 *     The first batch always has an entry (0, 0); after that a batch gets an
 *     entry when it starts index_interval_bytes or more after the batch of
 *     the previous entry. Both fields strictly increase. (Kafka stores the
 *     batch's last offset; storing the base offset lets a lookup check an
 *     entry against the batch it points to.)
 *
 *   00000000000000001234.timeindex — sparse time index, 12-byte entries:
 *     0..7   i64 big-endian: the largest maxTimestamp of the segment's
 *            batches up to and including this batch
 *     8..11  u32 big-endian: that batch's baseOffset minus the segment's base
 *     Written when an offset-index entry is written and the segment's
 *     largest timestamp has grown since the last time entry (so the first
 *     batch always has one), and once more when the segment is finished
 *     (rolled, or its indexes rebuilt) if the largest timestamp grew after
 *     the last entry. Timestamps strictly increase; offsets do not
 *     decrease. A lookup by time takes the last entry below the target and
 *     walks batch headers from there to the first batch whose maxTimestamp
 *     reaches it.
 *
 *   recovery-point — the recovery-point checkpoint, exactly 20 bytes:
 *     0..3    the ASCII bytes "WRPT"
 *     4..7    u32 big-endian: format version, 1
 *     8..15   i64 big-endian: the recovery point, >= 0: every batch below
 *             this offset was fsynced (the durable end when written)
 *     16..19  u32 big-endian: CRC-32C (weft_crc32c, as in record
 *             batches) of bytes 0..15
 *     A file of another size, magic or version, with a bad CRC or a
 *     negative offset is damaged: logged and treated as absent. Written
 *     as recovery-point.tmp (fdatasync), renamed over recovery-point,
 *     then the directory fsynced; open deletes a leftover .tmp. No file:
 *     nothing is known (a directory from before this file existed, or an
 *     empty log that never had data).
 *
 * Segments roll when the next batch would take a non-empty segment past
 * segment_bytes (or its offsets past 2^31 from the base); a batch larger
 * than segment_bytes gets a segment of its own.
 *
 * Recovery point (Kafka's recovery-point-offset-checkpoint). With fsync
 * interval, or when several segments roll between two flushes, an OS
 * crash can leave any page of several rolled segments unwritten, not
 * only in the last two; the checkpoint records an offset below which
 * everything is known to be on disk, and recovery scans in full every
 * segment from the one holding it. It is written (1) at the end of
 * recovery, which has just fdatasynced every segment, if the file does
 * not already hold the end; (2) by plog_close after the final flush
 * (the durable end, = the end unless a flush failed), if it moved; (3)
 * while running, every checkpoint_interval_ms (default 30 s; Kafka's
 * log.flush.offset.checkpoint.interval.ms is 60 s) if the durable end
 * moved: a loop timer only compares two offsets under the mutex and, if
 * needed, asks the flusher thread, which writes the file when it has no
 * flush to do (so a checkpoint delays at most the one flush requested
 * while it runs). Cost: per partition one timer wake-up per interval,
 * and, while data comes in, one 20-byte write, one fdatasync and one
 * directory fsync per interval (2 syncs per 30 s, against one per flush
 * for the data); an idle partition writes nothing, and a clean restart
 * (the file already holds the end) writes nothing at open. The price of
 * a longer interval is only recovery time: after a crash everything
 * appended since the last checkpoint (up to an interval's worth) is
 * scanned, the rest is not.
 *
 * Recovery (plog_open)
 * --------------------
 * The last segment, and with a valid recovery point rp every segment
 * whose range reaches rp (the one holding rp and all after it; a segment
 * ends where the next begins, so one whose successor starts at or below
 * rp ends by rp), is scanned in full (below). Without a valid recovery
 * point (an old directory, a damaged file) the two last segments are: the
 * one before the last may have been rolled but not yet synced, and then
 * any page appended to it since the last flush may be missing, which the
 * cheap check, reading only headers after the last index entry, would not
 * see. Scanning everything instead would cost reading the whole log once
 * per partition on an upgrade, for damage only an OS crash under an older
 * version could have left in older segments; the file is written at the
 * end of every recovery, so this fallback does not come back.
 * Every other segment is checked cheaply: index and time index
 * well formed (sizes, order, first entry, the last offset entry pointing at
 * a batch header with the expected offset), the batch headers after the
 * last index entry parse and continue each other up to exactly the end of
 * the file, and no batch among them should have had an index entry. A
 * segment failing the check is scanned in full and its indexes rebuilt.
 * The last time-index entry must be at least the largest maxTimestamp of
 * the batches after the last offset-index entry (a finished segment's
 * last time entry is its largest timestamp): one that lost its last
 * entries would otherwise pass and underestimate the segment's largest
 * timestamp. The cheap check does not read the middle of a segment:
 * below the recovery point that is the trade-off Kafka makes too (that
 * data was fsynced; damage there is the disk's, not a crash's).
 * A full scan: each batch must parse
 * (kf_batch_parse), pass its CRC (kf_batch_crc_ok) and continue the offsets
 * of the one before; the file is cut (ftruncate + fsync) at the first batch
 * that does not, the number of bytes dropped is logged, and its indexes are
 * rewritten from the scan. If everything from that point to the end of the
 * file is zero bytes, it is preallocated space, not damage: it is cut
 * without a warning and does not count as truncated (a batch never starts
 * with a zero length, so zeros cannot hide one). A crash only tears
 * segments at or after the recovery point (without one: the last, or the
 * one before it if the crash came between a roll and the fsync of the
 * finished segment) — and nothing past the tear was ever reported durable.
 * So when a segment (other than the last) is cut, or does not end exactly
 * at the next segment's base offset, every later segment is deleted and an
 * error is logged: nothing after a hole can be served. If the log then
 * ends below the recovery point (segment files removed or cut by hand, a
 * restored backup, damage below it), the checkpoint does not describe
 * this log: that is logged and the last two segments are recovered again
 * as without one. Finally every .log is fdatasynced and the recovery
 * point set to the end (written as above). Index files without
 * a .log are deleted. An empty directory is an empty log at offset 0.
 *
 * Retention (plog_enforce_retention)
 * ----------------------------------
 * Whole segments go from the oldest: one whose largest timestamp (or, if
 * its batches carry no timestamps, maxTimestamp -1, its .log file's
 * modification time, as in Kafka) is older than retention_ms, or while the log is larger than retention_bytes (so
 * at most that much is kept; Kafka instead keeps at least that much). It
 * stops at the first segment that may stay, at the active segment and at
 * anything not yet durable. Files are unlinked oldest first (a crash part
 * way leaves a shorter prefix gone, or an index without its .log, which
 * open deletes); the directory is fsynced by the next flush. Slices keep
 * the unlinked .log open.
 *
 * Errors. A failed write is undone (the files are cut back to where they
 * were) and the append fails with WEFT_EIO. A failed fdatasync is sticky
 * (Linux may have dropped the dirty pages, so a later fdatasync could
 * succeed without the data): the durable offset stops and appends fail
 * until the plog is reopened. One process at a time: open takes
 * flock(LOCK_EX) on the directory (WEFT_EEXIST if held).
 */
#include "eventlog/plog.h"
#include "kafka/batch.h"
#include "weft/crc32c.h"
#include "weft/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define IDX_ENTRY 8u
#define TIM_ENTRY 12u
/* Bytes of a batch header read by lookups: through maxTimestamp (35..42). */
#define HDR_PEEK 43u
#define NAME_DIGITS 20
#define NAME_MAX_LEN 40
#define SCAN_CHUNK (256u << 10)
/* An index file larger than this is not ours (64 MiB segments at a
 * 4 KiB interval need 128 KiB). */
#define IDX_FILE_MAX (256u << 20)
/* The recovery-point checkpoint (see the on-disk format). */
#define CKPT_NAME "recovery-point"
#define CKPT_TMP "recovery-point.tmp"
#define CKPT_SIZE 20u
#define CKPT_VERSION 1u

/* ------------------------------------------------------------------ */
/* small helpers */

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

enum xfer_kind { XFER_WRITE_AT, XFER_READ_AT };

/* Move all n bytes at off, retrying short transfers and EINTR. 0, -1 if a
 * read meets the end of the file, or an errno value. */
static int xfer(int fd, enum xfer_kind kind, void *buf, size_t n, uint64_t off)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t r = kind == XFER_WRITE_AT ? pwrite(fd, p, n, (off_t)off)
                                          : pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        if (r == 0)
            return kind == XFER_READ_AT ? -1 : EIO;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    return xfer(fd, XFER_READ_AT, buf, n, off);
}

static int sync_fd(int fd, bool data_only)
{
    int r;
    do {
        r = data_only ? fdatasync(fd) : fsync(fd);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? errno : 0;
}

static int truncate_fd(int fd, uint64_t size)
{
    while (ftruncate(fd, (off_t)size) < 0)
        if (errno != EINTR)
            return errno;
    return 0;
}

static int64_t file_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) < 0 ? -(int64_t)errno : (int64_t)st.st_size;
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

static int errno_rc(int e)
{
    return e == EIO ? WEFT_EIO : weft_err_from_errno(e);
}

static int log_io(const char *dir, const char *op, int64_t base, int e)
{
    weft_log(WEFT_LOG_ERROR, "plog: i/o error", WEFT_KV_STR("dir", dir), WEFT_KV_STR("op", op),
             WEFT_KV_INT("segment", base), WEFT_KV_STR("error", strerror(e)));
    return errno_rc(e);
}

/* fsync the directory that holds path (cut at its last '/' meanwhile). */
static int sync_parent(char *path)
{
    char *slash = strrchr(path, '/');
    if (slash)
        *slash = '\0';
    const char *parent = !slash ? "." : slash == path ? "/" : path;
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = fd < 0 ? errno : sync_fd(fd, false);
    close_fd(fd);
    if (slash)
        *slash = '/';
    return e;
}

/* Create every missing directory of path, each made durable in its
 * parent. An errno value or 0. */
static int make_dirs(const char *path)
{
    char p[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof p)
        return ENAMETOOLONG;
    memcpy(p, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        p[i] = '\0';
        int e = mkdir(p, 0755) == 0 ? sync_parent(p) : errno == EEXIST ? 0 : errno;
        p[i] = path[i];
        if (e)
            return e;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* batch headers (lookups read only the header, so kf_batch_parse, which
 * wants the whole batch, does not apply) */

typedef struct bhdr {
    int64_t base;   /* baseOffset */
    int64_t last;   /* baseOffset + lastOffsetDelta */
    uint64_t size;  /* batchLength + 12 */
    int64_t max_ts; /* maxTimestamp */
} bhdr;

/* Read the header of the batch at pos; the batch must end by limit.
 * 0, WEFT_EPROTO (malformed or past limit) or an I/O error. */
static int peek_hdr(int fd, uint64_t pos, uint64_t limit, bhdr *h)
{
    uint8_t b[HDR_PEEK];
    if (pos > limit || limit - pos < HDR_PEEK)
        return WEFT_EPROTO;
    int e = pread_all(fd, b, sizeof b, pos);
    if (e)
        return e < 0 ? WEFT_EPROTO : errno_rc(e);
    int32_t len = (int32_t)be32(b + 8);
    int32_t delta = (int32_t)be32(b + 23);
    if (b[16] != 2 || len < KF_BATCH_HEADER - KF_BATCH_LOG_OVERHEAD || delta < 0)
        return WEFT_EPROTO;
    h->base = (int64_t)be64(b);
    h->size = (uint64_t)len + KF_BATCH_LOG_OVERHEAD;
    h->last = h->base + delta;
    h->max_ts = (int64_t)be64(b + 35);
    if (h->base < 0 || h->size > limit - pos)
        return WEFT_EPROTO;
    return 0;
}

/* ------------------------------------------------------------------ */
/* segments */

typedef struct seg {
    int64_t base;          /* offset in the file name */
    int64_t end;           /* offset after the last batch (== base when empty) */
    int64_t last_base;     /* base offset of the last batch; -1 when empty */
    uint64_t size;         /* bytes of whole batches in the .log */
    uint64_t alloc;        /* length of the .log file (> size: preallocated) */
    uint64_t last_idx_pos; /* position of the batch of the last index entry */
    uint32_t idx_n, tim_n; /* entries in .index / .timeindex */
    int64_t max_ts;        /* largest maxTimestamp; INT64_MIN when empty */
    int64_t tim_last;      /* timestamp of the last time entry; INT64_MIN: none */
    int log_fd, idx_fd, tim_fd;
    unsigned refs;
    struct seg *sync_next; /* link in the flusher's queues */
} seg;

static void seg_unref(seg *s)
{
    if (!s || --s->refs)
        return;
    close_fd(s->log_fd);
    close_fd(s->idx_fd);
    close_fd(s->tim_fd);
    free(s);
}

static void seg_name(char *out, int64_t base, const char *ext)
{
    snprintf(out, NAME_MAX_LEN, "%020" PRId64 ".%s", base, ext);
}

static void seg_reset(seg *s)
{
    s->end = s->base;
    s->last_base = -1;
    s->size = s->last_idx_pos = 0;
    s->idx_n = s->tim_n = 0;
    s->max_ts = s->tim_last = INT64_MIN;
}

/* Open (create: make) the three files of the segment at base. */
static int seg_open(int dirfd, const char *dir, int64_t base, bool create, seg **out)
{
    char name[NAME_MAX_LEN];
    seg *s = calloc(1, sizeof *s);
    if (!s)
        return WEFT_ENOMEM;
    s->base = base;
    s->refs = 1;
    s->idx_fd = s->tim_fd = -1;
    seg_reset(s);
    int lflags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
    int iflags = O_RDWR | O_CREAT | O_CLOEXEC | (create ? O_TRUNC : 0);
    seg_name(name, base, "log");
    s->log_fd = openat(dirfd, name, lflags, 0644);
    if (s->log_fd < 0)
        goto fail;
    seg_name(name, base, "index");
    if ((s->idx_fd = openat(dirfd, name, iflags, 0644)) < 0)
        goto fail;
    seg_name(name, base, "timeindex");
    if ((s->tim_fd = openat(dirfd, name, iflags, 0644)) < 0)
        goto fail;
    *out = s;
    return 0;

fail:;
    int rc = log_io(dir, create ? "create segment" : "open segment", base, errno);
    if (create && s->log_fd >= 0) {
        seg_name(name, base, "log");
        unlinkat(dirfd, name, 0);
    }
    seg_unref(s);
    return rc;
}

static void seg_unlink(int dirfd, int64_t base)
{
    static const char *const ext[] = {"log", "index", "timeindex"};
    char name[NAME_MAX_LEN];
    for (size_t i = 0; i < WEFT_ARRAY_LEN(ext); i++) {
        seg_name(name, base, ext[i]);
        unlinkat(dirfd, name, 0);
    }
}

/* Cut the preallocated space off s's .log (a finished or closing
 * segment). An errno value or 0; a segment left long is still correct. */
static int seg_trim(seg *s)
{
    if (s->alloc <= s->size)
        return 0;
    int e = truncate_fd(s->log_fd, s->size);
    if (!e)
        s->alloc = s->size;
    return e;
}

/* Whether bytes [from, to) of fd are all zero (preallocated, never
 * written). 1, 0, or a WEFT_E* error. */
static int zero_tail(int fd, uint64_t from, uint64_t to)
{
    uint64_t buf[1024];
    while (from < to) {
        size_t n = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
        int e = pread_all(fd, buf, n, from);
        if (e)
            return e < 0 ? 0 : errno_rc(e);
        const uint8_t *b = (const uint8_t *)buf;
        for (size_t i = 0; i < n; i++)
            if (b[i])
                return 0;
        from += n;
    }
    return 1;
}

/* Write entry e (esize bytes) after the *count entries of an index file. */
static int entry_put(int fd, uint32_t *count, uint8_t *e, uint32_t esize)
{
    int err = xfer(fd, XFER_WRITE_AT, e, esize, (uint64_t)*count * esize);
    if (!err)
        (*count)++;
    return err;
}

static int idx_put(seg *s, uint32_t rel, uint64_t pos)
{
    uint8_t e[IDX_ENTRY];
    put_be32(e, rel);
    put_be32(e + 4, (uint32_t)pos);
    int err = entry_put(s->idx_fd, &s->idx_n, e, IDX_ENTRY);
    if (!err)
        s->last_idx_pos = pos;
    return err;
}

static int tim_put(seg *s, int64_t ts, uint32_t rel)
{
    uint8_t e[TIM_ENTRY];
    put_be64(e, (uint64_t)ts);
    put_be32(e + 8, rel);
    int err = entry_put(s->tim_fd, &s->tim_n, e, TIM_ENTRY);
    if (!err)
        s->tim_last = ts;
    return err;
}

/* Account for a batch that now sits at s->size in the .log and write its
 * index entries, if it gets any (the one rule for appends and rebuilds).
 * An errno value or 0. */
static int seg_add_batch(seg *s, const bhdr *h, uint32_t interval)
{
    uint64_t pos = s->size;
    uint32_t rel = (uint32_t)(h->base - s->base);
    int e = 0;
    if (h->max_ts > s->max_ts)
        s->max_ts = h->max_ts;
    if (s->idx_n == 0 || pos - s->last_idx_pos >= interval) {
        e = idx_put(s, rel, pos);
        if (!e && s->max_ts > s->tim_last)
            e = tim_put(s, s->max_ts, rel);
    }
    s->last_base = h->base;
    s->end = h->last + 1;
    s->size = pos + h->size;
    return e;
}

/* A segment stops being appended to: its time index gets a last entry
 * with the segment's largest timestamp if the sparse entries missed it. */
static int seg_finish(seg *s)
{
    if (s->max_ts <= s->tim_last)
        return 0;
    return tim_put(s, s->max_ts, (uint32_t)(s->last_base - s->base));
}

/* Binary search an index file of n sorted entries of esize bytes: the
 * last entry whose key (the u32 at koff, or for the time index the i64 at
 * 0) is <= key, copied to out. 1 if found, 0 if none, or a WEFT_E* error. */
static int index_floor(int fd, uint32_t n, uint32_t esize, uint32_t koff, int64_t key, uint8_t *out)
{
    uint32_t lo = 0, hi = n;
    int found = 0;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint8_t e[TIM_ENTRY];
        int err = pread_all(fd, e, esize, (uint64_t)mid * esize);
        if (err)
            return err < 0 ? WEFT_EIO : errno_rc(err);
        int64_t k = esize == TIM_ENTRY ? (int64_t)be64(e) : (int64_t)be32(e + koff);
        if (k <= key) {
            memcpy(out, e, esize);
            found = 1;
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return found;
}

/* Position of the last indexed batch whose relative offset (by_pos: whose
 * position) is <= key; 0 if none. */
static int idx_floor(const seg *s, uint64_t key, bool by_pos, uint64_t *pos)
{
    uint8_t e[IDX_ENTRY];
    int rc = index_floor(s->idx_fd, s->idx_n, IDX_ENTRY, by_pos ? 4 : 0, (int64_t)key, e);
    if (rc < 0)
        return rc;
    *pos = rc ? be32(e + 4) : 0;
    return 0;
}

/* Relative offset of the last time entry with a timestamp < ts; 0 if none. */
static int tim_floor(const seg *s, int64_t ts, uint32_t *rel)
{
    uint8_t e[TIM_ENTRY];
    int rc = ts == INT64_MIN ? 0 : index_floor(s->tim_fd, s->tim_n, TIM_ENTRY, 0, ts - 1, e);
    if (rc < 0)
        return rc;
    *rel = rc ? be32(e + 8) : 0;
    return 0;
}

/* ------------------------------------------------------------------ */
/* the plog */

struct plog {
    weft_loop *loop;
    char *dir;
    int dirfd; /* holds the flock */
    plog_opts o;
    plog_durable_cb cb;
    void *ud;

    seg **segs; /* ascending base offsets; the last is active */
    size_t nsegs, cap;
    int64_t end, durable, requested;
    uint64_t total;
    int failed; /* sticky WEFT_EIO after a failed fdatasync or an undo that failed */
    bool no_writeback; /* sync_file_range unsupported here: don't try again */
    bool fail_told;    /* the durable callback has been called for the failure */
    weft_timer wb_timer; /* due now: starts writeback of [wb_from, wb_to) */
    seg *wb_seg;         /* the active segment that range is in */
    uint64_t wb_from, wb_to;
    uint64_t appends;
    plog_stats rec; /* recovery counters, filled at open */
    weft_timer timer;
    weft_timer ckpt_timer; /* asks the flusher for a checkpoint, see plog_opts */

    /* flusher handoff: fields below are shared with the flusher thread and
     * guarded by mu */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, req_have, req_dir;
    bool flushing; /* the flusher is between taking a request and reporting it */
    int64_t req_end;
    seg *req_active;  /* no reference: see the top of the file */
    seg *req_closed;  /* rolled segments to sync, one reference each */
    int64_t done_end; /* highest end a flush made durable */
    int done_err;     /* errno of the first failed flush; sticky */
    seg *done_closed; /* synced segments whose reference the loop drops */
    bool req_ckpt;    /* write a recovery-point checkpoint when idle */
    int64_t ckpt_end; /* the recovery point on disk (at open, also: implied) */
    uint64_t flushes;
    int evfd; /* flusher -> loop wake-up */
    weft_io evio;
};

static seg *active_seg(const plog *l)
{
    return l->segs[l->nsegs - 1];
}

void plog_opts_default(plog_opts *o)
{
    *o = (plog_opts){
        .segment_bytes = 64u << 20,
        .index_interval_bytes = 4096,
        .retention_ms = 7LL * 24 * 3600 * 1000,
        .retention_bytes = -1,
        .fsync = PLOG_FSYNC_ALWAYS,
        .fsync_interval_ms = 1000,
        .max_batch_bytes = (1u << 20) + 12,
        .preallocate_bytes = 4u << 20,
        .checkpoint_interval_ms = 30000,
    };
}

static bool opts_ok(const plog_opts *o)
{
    return o->segment_bytes > 0 && o->segment_bytes <= INT32_MAX &&
           (o->fsync == PLOG_FSYNC_ALWAYS ||
            (o->fsync == PLOG_FSYNC_INTERVAL && o->fsync_interval_ms > 0)) &&
           o->max_batch_bytes >= KF_BATCH_HEADER && o->max_batch_bytes <= INT32_MAX;
}

static int segs_reserve(plog *l, size_t n)
{
    if (l->cap >= n)
        return 0;
    size_t cap = l->cap ? l->cap * 2 : 8;
    while (cap < n)
        cap *= 2;
    seg **p = realloc(l->segs, cap * sizeof *p);
    if (!p)
        return WEFT_ENOMEM;
    l->segs = p;
    l->cap = cap;
    return 0;
}

/* ---- recovery-point checkpoint ---- */

static const uint8_t ckpt_magic[4] = {'W', 'R', 'P', 'T'};

/* Write the checkpoint file holding end (format at the top of the file):
 * temp file, fdatasync, rename over the old one, fsync the directory. A
 * crash at any point leaves the old file or the new one, each whole and
 * each a true statement (an older recovery point only makes the next
 * recovery scan more). Run by the flusher thread, or by the loop thread
 * at open and close (never both at once). An errno value or 0. */
static int ckpt_write(int dirfd, int64_t end)
{
    uint8_t b[CKPT_SIZE];
    memcpy(b, ckpt_magic, sizeof ckpt_magic);
    put_be32(b + 4, CKPT_VERSION);
    put_be64(b + 8, (uint64_t)end);
    put_be32(b + 16, weft_crc32c(0, b, 16));
    int fd = openat(dirfd, CKPT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    int e = xfer(fd, XFER_WRITE_AT, b, sizeof b, 0);
    if (!e)
        e = sync_fd(fd, true);
    close(fd);
    if (!e && renameat(dirfd, CKPT_TMP, dirfd, CKPT_NAME) < 0)
        e = errno;
    if (!e)
        e = sync_fd(dirfd, false);
    if (e)
        unlinkat(dirfd, CKPT_TMP, 0);
    return e;
}

/* The recovery point in the checkpoint file: 1 with *out, 0 if there is
 * none, -1 if it is damaged or unreadable (logged; treated as none). */
static int ckpt_read(const plog *l, int64_t *out)
{
    uint8_t b[CKPT_SIZE + 1] = {0}; /* a short file is compared as zeros */
    int fd = openat(l->dirfd, CKPT_NAME, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 0;
    const char *why = "cannot read";
    ssize_t n = -1;
    if (fd >= 0) {
        do
            n = pread(fd, b, sizeof b, 0);
        while (n < 0 && errno == EINTR);
        close(fd);
    }
    if (n >= 0) { /* one more byte than the format asked: a longer file is not ours */
        int64_t v = (int64_t)be64(b + 8);
        why = n != CKPT_SIZE || memcmp(b, ckpt_magic, sizeof ckpt_magic) ? "not a checkpoint"
              : be32(b + 4) != CKPT_VERSION                              ? "unknown version"
              : be32(b + 16) != weft_crc32c(0, b, 16)                    ? "checksum mismatch"
              : v < 0                                                    ? "negative offset"
                                                                         : NULL;
        if (!why) {
            *out = v;
            return 1;
        }
    }
    weft_log(WEFT_LOG_WARN, "plog: recovery-point checkpoint ignored; recovering as without one",
             WEFT_KV_STR("dir", l->dir), WEFT_KV_STR("reason", why));
    return -1;
}

/* Flusher side of a checkpoint request: write the highest durable end if
 * it moved past the last one written. Called and returns with mu held. */
static void ckpt_run(plog *l)
{
    int64_t end = l->done_end;
    l->req_ckpt = false;
    if (end <= l->ckpt_end)
        return;
    pthread_mutex_unlock(&l->mu);
    int e = ckpt_write(l->dirfd, end);
    if (e) /* the old checkpoint stays valid: only recovery scans more */
        weft_log(WEFT_LOG_WARN, "plog: cannot write the recovery-point checkpoint",
                 WEFT_KV_STR("dir", l->dir), WEFT_KV_STR("error", strerror(e)));
    pthread_mutex_lock(&l->mu);
    if (!e)
        l->ckpt_end = end;
}

/* ---- flusher thread ---- */

static int sync_closed(const seg *s)
{
    int e = sync_fd(s->log_fd, true);
    if (!e)
        e = sync_fd(s->idx_fd, true);
    if (!e)
        e = sync_fd(s->tim_fd, true);
    return e;
}

/* One group-commit round for the request in l->req_*. Called and returns
 * with mu held. */
static void flush_once(plog *l)
{
    int64_t end = l->req_end;
    seg *closed = l->req_closed, *active = l->req_active;
    bool dir = l->req_dir;
    l->req_have = l->req_dir = false;
    l->req_closed = l->req_active = NULL;
    l->flushing = true;
    pthread_mutex_unlock(&l->mu);

    int e = 0;
    seg *tail = NULL;
    for (seg *s = closed; s; s = s->sync_next) {
        if (!e)
            e = sync_closed(s);
        tail = s;
    }
    if (!e && active)
        e = sync_fd(active->log_fd, true);
    if (!e && dir)
        e = sync_fd(l->dirfd, false);

    pthread_mutex_lock(&l->mu);
    l->flushing = false;
    l->flushes++;
    if (e && !l->done_err)
        l->done_err = e;
    else if (!l->done_err && end > l->done_end)
        l->done_end = end;
    if (tail) {
        tail->sync_next = l->done_closed;
        l->done_closed = closed;
    }
    pthread_mutex_unlock(&l->mu);
    uint64_t one = 1;
    while (write(l->evfd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&l->mu);
}

/* Flushes come first; a checkpoint waits for the flusher to be idle, so
 * its two syncs delay at most the flush asked for while it runs. After
 * stop, plog_close writes the last checkpoint itself. */
static void *flusher_main(void *arg)
{
    plog *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->req_have && !l->req_ckpt && !l->stop)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->req_have)
            flush_once(l);
        else if (l->req_ckpt && !l->stop)
            ckpt_run(l);
        else
            break;
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Hand the flusher everything up to the current end (and anything queued
 * by rolls and retention). Returns true when the flusher had not yet begun
 * a flush (it is asleep or waking up), so that this request's data is in
 * the next fdatasync, false when one is running (or nothing was asked). */
static bool request_flush(plog *l, bool force)
{
    if (!force && l->requested >= l->end)
        return false;
    pthread_mutex_lock(&l->mu);
    l->req_end = l->end;
    l->req_active = active_seg(l);
    l->req_have = true;
    bool waiting = !l->flushing;
    pthread_mutex_unlock(&l->mu);
    /* after the unlock: signalled under the lock, the flusher would wake
     * only to block on the mutex we still hold (two more futex calls and
     * a second wake-up on the fsync latency path) */
    pthread_cond_signal(&l->cv);
    l->requested = l->end;
    return waiting;
}

/* Early writeback. When an append wakes an idle flusher, the loop starts
 * writing the appended bytes to the device itself (sync_file_range
 * SYNC_FILE_RANGE_WRITE, which queues the I/O and does not wait for it), so
 * the data I/O overlaps the flusher's wake-up — on a VM ~50-100 µs when it
 * sleeps on an idle vCPU — and its fdatasync finds the I/O in flight or
 * done and is left with the device cache flush. Submitting costs the loop
 * a device notification (a VM exit), so it runs from a timer due at once:
 * after this loop iteration's callbacks, when the responses they completed
 * (acks=1 ones included) have been written. Appends made while a flush
 * runs get none: the next fdatasync writes them in one go, so under load
 * this adds no I/O and writes no page twice. Advisory: an I/O error shows
 * up in the fdatasync. */
static void on_writeback(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    plog *l = t->data;
    if (!l->wb_seg || l->no_writeback)
        return; /* rolled meanwhile (roll clears it): the old segment's flush has it */
    if (sync_file_range(l->wb_seg->log_fd, (off_t)l->wb_from, (off_t)(l->wb_to - l->wb_from),
                        SYNC_FILE_RANGE_WRITE) < 0 &&
        (errno == ENOSYS || errno == EINVAL || errno == ESPIPE || errno == EOPNOTSUPP))
        l->no_writeback = true;
}

static void want_writeback(plog *l, seg *s, uint64_t from, uint64_t to)
{
    if (l->no_writeback)
        return;
    if (weft_timer_active(&l->wb_timer) && l->wb_seg == s) {
        l->wb_to = to;
        return;
    }
    l->wb_seg = s;
    l->wb_from = from;
    l->wb_to = to;
    if (!weft_timer_active(&l->wb_timer))
        weft_timer_start(l->loop, &l->wb_timer, 0);
}

/* Take the flusher's results (loop thread). Returns whether durable moved. */
static bool collect_flushed(plog *l)
{
    pthread_mutex_lock(&l->mu);
    int64_t end = l->done_end;
    int err = l->done_err;
    seg *done = l->done_closed;
    l->done_closed = NULL;
    pthread_mutex_unlock(&l->mu);
    while (done) {
        seg *next = done->sync_next;
        done->sync_next = NULL;
        seg_unref(done);
        done = next;
    }
    if (err && !l->failed) {
        l->failed = WEFT_EIO;
        weft_log(WEFT_LOG_ERROR, "plog: fdatasync failed; the log refuses appends until reopened",
                 WEFT_KV_STR("dir", l->dir), WEFT_KV_STR("error", strerror(err)),
                 WEFT_KV_INT("durable_offset", end > l->durable ? end : l->durable));
    }
    if (end <= l->durable)
        return false;
    l->durable = end;
    return true;
}

static void on_flushed(weft_loop *loop, weft_io *io, unsigned events)
{
    plog *l = io->data;
    uint64_t v;
    while (read(l->evfd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    bool moved = collect_flushed(l), failed = l->failed && !l->fail_told;
    if (failed)
        l->fail_told = true; /* once: waiters past durable learn it will not come */
    if ((moved || failed) && l->cb)
        l->cb(l, l->durable, l->ud); /* last: the callback may close the plog */
}

static void on_interval(weft_loop *loop, weft_timer *t)
{
    plog *l = t->data;
    request_flush(l, false);
    weft_timer_start(loop, t, l->o.fsync_interval_ms);
}

/* Every checkpoint_interval_ms: if the durable end moved past the recovery
 * point on disk, the flusher writes it when it is next idle. The loop does
 * no file I/O for it; a log that takes no appends costs one timer. */
static void on_ckpt_timer(weft_loop *loop, weft_timer *t)
{
    plog *l = t->data;
    pthread_mutex_lock(&l->mu);
    bool ask = l->done_end > l->ckpt_end && !l->req_ckpt;
    if (ask)
        l->req_ckpt = true;
    pthread_mutex_unlock(&l->mu);
    if (ask)
        pthread_cond_signal(&l->cv);
    weft_timer_start(loop, t, l->o.checkpoint_interval_ms);
}

static int start_flusher(plog *l)
{
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->evfd < 0)
        return log_io(l->dir, "eventfd", -1, errno);
    weft_io_init(&l->evio, l->evfd, on_flushed, l);
    int rc = weft_io_start(l->loop, &l->evio, WEFT_IO_READ);
    if (rc < 0)
        return rc;
    int e = pthread_create(&l->thread, NULL, flusher_main, l);
    if (e) {
        weft_io_stop(l->loop, &l->evio);
        return log_io(l->dir, "start flusher thread", -1, e);
    }
    l->thread_started = true;
    weft_timer_init(&l->wb_timer, on_writeback, l);
    if (l->o.fsync == PLOG_FSYNC_INTERVAL) {
        weft_timer_init(&l->timer, on_interval, l);
        weft_timer_start(l->loop, &l->timer, l->o.fsync_interval_ms);
    }
    weft_timer_init(&l->ckpt_timer, on_ckpt_timer, l);
    if (l->o.checkpoint_interval_ms)
        weft_timer_start(l->loop, &l->ckpt_timer, l->o.checkpoint_interval_ms);
    return 0;
}

/* ---- recovery ---- */

/* A window on a file for the sequential full scan. */
typedef struct rdr {
    int fd;
    uint64_t off; /* file position of p[0] */
    uint8_t *p;
    size_t len, cap;
} rdr;

/* Make [pos, pos + n) available: 0 with *out, 1 if the file is shorter,
 * or a WEFT_E* error. */
static int rd_get(rdr *r, uint64_t pos, size_t n, const uint8_t **out)
{
    if (pos >= r->off && pos - r->off <= r->len && r->len - (pos - r->off) >= n) {
        *out = r->p + (pos - r->off);
        return 0;
    }
    size_t want = n > SCAN_CHUNK ? n : SCAN_CHUNK;
    if (r->cap < want) {
        uint8_t *p = realloc(r->p, want);
        if (!p)
            return WEFT_ENOMEM;
        r->p = p;
        r->cap = want;
    }
    r->off = pos;
    r->len = 0;
    while (r->len < n) {
        ssize_t got = pread(r->fd, r->p + r->len, r->cap - r->len, (off_t)(pos + r->len));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno_rc(errno);
        if (got == 0)
            return 1;
        r->len += (size_t)got;
    }
    *out = r->p;
    return 0;
}

/* Scan the whole .log of s (fsize bytes) batch by batch: header, CRC and
 * offset continuity. Rewrites both indexes from what it finds and leaves s
 * describing the valid prefix. *damage names the first problem (NULL: the
 * file is whole). 0 or a WEFT_E* error. */
static int seg_scan(plog *l, seg *s, uint64_t fsize, rdr *r, const char **damage)
{
    int e = truncate_fd(s->idx_fd, 0);
    if (!e)
        e = truncate_fd(s->tim_fd, 0);
    if (e)
        return log_io(l->dir, "truncate index", s->base, e);
    seg_reset(s);
    *damage = NULL;
    r->fd = s->log_fd;
    r->off = r->len = 0;
    while (s->size < fsize) {
        const uint8_t *p;
        uint64_t left = fsize - s->size;
        if (left < KF_BATCH_HEADER) {
            *damage = "torn batch header";
            break;
        }
        int rc = rd_get(r, s->size, KF_BATCH_LOG_OVERHEAD, &p);
        if (rc < 0)
            return rc;
        int64_t blen = rc ? 0 : (int32_t)be32(p + 8) + (int64_t)KF_BATCH_LOG_OVERHEAD;
        if (blen < KF_BATCH_HEADER) {
            *damage = "bad batch length";
            break;
        }
        if ((uint64_t)blen > left) {
            *damage = "torn batch";
            break;
        }
        if ((rc = rd_get(r, s->size, (size_t)blen, &p)) < 0)
            return rc;
        if (rc) {
            *damage = "torn batch";
            break;
        }
        kf_batch b;
        if (kf_batch_parse(p, (size_t)blen, &b) != blen) {
            *damage = "malformed batch header";
            break;
        }
        if (!kf_batch_crc_ok(p, &b)) {
            *damage = "crc mismatch";
            break;
        }
        if (b.base_offset != s->end || b.last_offset_delta < 0 ||
            b.base_offset + b.last_offset_delta - s->base > INT32_MAX) {
            *damage = "offsets do not continue";
            break;
        }
        if (s->size > UINT32_MAX) {
            *damage = "segment over 4 GiB";
            break;
        }
        bhdr h = {.base = b.base_offset,
                  .last = b.base_offset + b.last_offset_delta,
                  .size = (uint64_t)blen,
                  .max_ts = b.max_timestamp};
        if ((e = seg_add_batch(s, &h, l->o.index_interval_bytes)) != 0)
            return log_io(l->dir, "write index", s->base, e);
    }
    return 0;
}

/* Cut s's .log after its valid prefix (s->size), durably. */
static int seg_cut(plog *l, seg *s, uint64_t fsize, const char *damage)
{
    weft_log(WEFT_LOG_WARN, "plog: torn or corrupt tail truncated", WEFT_KV_STR("dir", l->dir),
             WEFT_KV_INT("segment", s->base), WEFT_KV_STR("reason", damage),
             WEFT_KV_UINT("position", s->size), WEFT_KV_UINT("bytes_dropped", fsize - s->size),
             WEFT_KV_INT("next_offset", s->end));
    int e = truncate_fd(s->log_fd, s->size);
    if (!e)
        e = sync_fd(s->log_fd, false);
    if (e)
        return log_io(l->dir, "truncate", s->base, e);
    l->rec.truncated_bytes += fsize - s->size;
    return 0;
}

/* Whether index entry cur may follow prev (esize says which index). */
static bool entry_follows(uint32_t esize, const uint8_t *prev, const uint8_t *cur)
{
    if (esize == IDX_ENTRY)
        return be32(cur) > be32(prev) && be32(cur + 4) > be32(prev + 4);
    return (int64_t)be64(cur) > (int64_t)be64(prev) && be32(cur + 8) >= be32(prev + 8);
}

/* Read a whole index file (n entries of esize bytes) into *buf and check
 * its order: the first entry is the segment's first batch, keys strictly
 * increase. 0, 1 if damaged (*why), or a WEFT_E* error. */
static int load_index(int fd, uint32_t esize, uint8_t **buf, uint32_t *n, const char **why)
{
    bool idx = esize == IDX_ENTRY;
    int64_t sz = file_size(fd);
    *why = idx ? "offset index missing or malformed" : "time index missing or malformed";
    if (sz < 0)
        return errno_rc((int)-sz);
    if (sz == 0 || sz % esize || sz > IDX_FILE_MAX)
        return 1;
    uint8_t *p = malloc((size_t)sz);
    if (!p)
        return WEFT_ENOMEM;
    int e = pread_all(fd, p, (size_t)sz, 0);
    if (e) {
        free(p);
        return e < 0 ? 1 : errno_rc(e);
    }
    *n = (uint32_t)(sz / esize);
    bool ok = idx ? be32(p) == 0 && be32(p + 4) == 0 : be32(p + 8) == 0;
    for (uint32_t i = 1; ok && i < *n; i++)
        ok = entry_follows(esize, p + (size_t)(i - 1) * esize, p + (size_t)i * esize);
    if (!ok) {
        *why = idx ? "offset index out of order" : "time index out of order";
        free(p);
        return 1;
    }
    *buf = p;
    return 0;
}

/* Check the offset index of a finished segment and walk the batches after
 * its last entry. Fills s (except the time fields). 0, 1 (damaged: *why)
 * or a WEFT_E* error. */
static int check_offsets(plog *l, seg *s, uint64_t fsize, const char **why, int64_t *tail_max)
{
    uint8_t *e = NULL;
    uint32_t n = 0;
    int rc = load_index(s->idx_fd, IDX_ENTRY, &e, &n, why);
    if (rc)
        return rc;
    uint32_t last_rel = be32(e + (size_t)(n - 1) * IDX_ENTRY);
    uint64_t pos = be32(e + (size_t)(n - 1) * IDX_ENTRY + 4);
    bhdr h;
    *why = "offset index points past the log";
    if ((rc = peek_hdr(s->log_fd, pos, fsize, &h)) != 0 || h.base != s->base + last_rel)
        goto damaged;
    s->idx_n = n;
    s->last_idx_pos = pos;
    s->end = h.base;
    *tail_max = INT64_MIN;
    while (pos < fsize) {
        if ((rc = peek_hdr(s->log_fd, pos, fsize, &h)) != 0) {
            *why = "torn batch after the last index entry";
            goto damaged;
        }
        if (h.base != s->end) {
            *why = "offsets do not continue";
            goto damaged;
        }
        if (pos != s->last_idx_pos && pos - s->last_idx_pos >= l->o.index_interval_bytes) {
            *why = "offset index shorter than the log";
            goto damaged;
        }
        if (h.max_ts > *tail_max)
            *tail_max = h.max_ts;
        s->last_base = h.base;
        s->end = h.last + 1;
        pos += h.size;
    }
    s->size = fsize;
    rc = 0;
    goto out;
damaged: /* an I/O error stays one; anything else is damage */
    if (rc == 0 || rc == WEFT_EPROTO)
        rc = 1;
out:
    free(e);
    return rc;
}

/* Check the time index of a finished segment (after check_offsets). */
static int check_times(seg *s, int64_t tail_max, const char **why)
{
    uint8_t *e = NULL;
    uint32_t n = 0;
    int rc = load_index(s->tim_fd, TIM_ENTRY, &e, &n, why);
    if (rc)
        return rc;
    rc = 1;
    const uint8_t *last = e + (size_t)(n - 1) * TIM_ENTRY;
    if ((int64_t)be32(last + 8) > s->last_base - s->base) {
        *why = "time index points past the log";
        goto out;
    }
    /* A finished segment's last time entry holds its largest timestamp
     * (seg_finish). One below a batch after the last offset entry (read by
     * check_offsets anyway) means entries were lost; the batches between
     * the lost entries and the last offset entry are not read here, so
     * taking the larger of the two would still underestimate the segment's
     * largest timestamp: retention by time could delete it early and a
     * lookup by time skip it. Rebuild instead. */
    if ((int64_t)be64(last) < tail_max) {
        *why = "time index shorter than the log";
        goto out;
    }
    s->tim_n = n;
    s->tim_last = s->max_ts = (int64_t)be64(last);
    rc = 0;
out:
    free(e);
    return rc;
}

/* Recover one segment: cheap index check for finished segments, full scan
 * (cutting a bad tail) for the last one, when the check fails, or when
 * full is set (full_from): a segment at or above the recovery point may
 * have been rolled and not yet synced when the OS went down, and then any
 * page appended to it since the last flush can be missing (zeros), also
 * before its last index entry or inside a batch whose header survived,
 * which the cheap check does not look at. */
static int seg_recover(plog *l, seg *s, bool last, bool full, rdr *r)
{
    int64_t fsize = file_size(s->log_fd);
    if (fsize < 0)
        return log_io(l->dir, "stat", s->base, (int)-fsize);
    const char *why = NULL;
    if (!last) {
        int64_t tail_max = INT64_MIN;
        int rc = fsize == 0 ? 1 : check_offsets(l, s, (uint64_t)fsize, &why, &tail_max);
        if (rc == 0)
            rc = check_times(s, tail_max, &why);
        if (rc < 0)
            return rc;
        if (rc == 0 && !full)
            return 0;
        if (rc != 0) {
            weft_log(WEFT_LOG_WARN, "plog: rebuilding segment indexes",
                     WEFT_KV_STR("dir", l->dir), WEFT_KV_INT("segment", s->base),
                     WEFT_KV_STR("reason", why ? why : "empty finished segment"));
            l->rec.index_rebuilds++;
        }
    }
    const char *damage;
    l->rec.full_scans++;
    int rc = seg_scan(l, s, (uint64_t)fsize, r, &damage);
    if (!rc && damage) {
        rc = zero_tail(s->log_fd, s->size, (uint64_t)fsize);
        if (rc == 1) { /* preallocated, never written: not damage */
            int e = truncate_fd(s->log_fd, s->size);
            rc = e ? log_io(l->dir, "truncate", s->base, e) : 0;
        } else if (rc == 0) {
            rc = seg_cut(l, s, (uint64_t)fsize, damage);
        }
    }
    s->alloc = s->size;
    if (!rc && !last && (rc = seg_finish(s)) != 0)
        rc = log_io(l->dir, "write time index", s->base, rc);
    return rc;
}

/* Delete the segments after the first keep (damage ends the log there). */
static void drop_after(plog *l, size_t keep, const char *why)
{
    seg *s = l->segs[keep - 1];
    weft_log(WEFT_LOG_ERROR, "plog: log damaged before its last segment; later segments deleted",
             WEFT_KV_STR("dir", l->dir), WEFT_KV_STR("reason", why),
             WEFT_KV_INT("segment", s->base), WEFT_KV_INT("log_ends_at", s->end),
             WEFT_KV_INT("next_segment", l->segs[keep]->base),
             WEFT_KV_UINT("segments_deleted", l->nsegs - keep));
    for (size_t i = keep; i < l->nsegs; i++) {
        seg_unlink(l->dirfd, l->segs[i]->base);
        seg_unref(l->segs[i]);
        l->rec.segments_dropped++;
    }
    l->nsegs = keep;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Parse "<20 digits>.<ext>": the base offset, or -1. */
static int64_t name_base(const char *name, const char *ext)
{
    for (int i = 0; i < NAME_DIGITS; i++)
        if (name[i] < '0' || name[i] > '9')
            return -1;
    if (name[NAME_DIGITS] != '.' || strcmp(name + NAME_DIGITS + 1, ext) != 0)
        return -1;
    char digits[NAME_DIGITS + 1];
    memcpy(digits, name, NAME_DIGITS);
    digits[NAME_DIGITS] = '\0';
    errno = 0;
    unsigned long long v = strtoull(digits, NULL, 10);
    return errno || v > INT64_MAX ? -1 : (int64_t)v;
}

static bool have_base(const int64_t *v, size_t n, int64_t base)
{
    return n && bsearch(&base, v, n, sizeof *v, cmp_i64) != NULL;
}

/* The sorted base offsets of the .log files; index files without a .log
 * are deleted. */
static int list_segments(plog *l, int64_t **out, size_t *nout)
{
    int fd = openat(l->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return log_io(l->dir, "list directory", -1, errno);
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return log_io(l->dir, "list directory", -1, errno);
    }
    int64_t *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t b = name_base(de->d_name, "log");
        if (b < 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            int64_t *p = realloc(v, cap * sizeof *p);
            if (!p) {
                rc = WEFT_ENOMEM;
                goto out;
            }
            v = p;
        }
        v[n++] = b;
    }
    if (n)
        qsort(v, n, sizeof *v, cmp_i64);
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        int64_t b = name_base(de->d_name, "index");
        if (b < 0)
            b = name_base(de->d_name, "timeindex");
        if (b >= 0 && !have_base(v, n, b)) {
            weft_log(WEFT_LOG_WARN, "plog: deleting index without a log",
                     WEFT_KV_STR("dir", l->dir), WEFT_KV_STR("file", de->d_name));
            unlinkat(l->dirfd, de->d_name, 0);
        }
    }
out:
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *nout = n;
    return 0;
}

/* Index of the first segment recovery scans in full. With a recovery point
 * rp: the segment holding it, i.e. the first whose successor starts above
 * rp (everything below rp was fsynced, so a segment that ends by rp needs
 * only the cheap check). Without one (an old directory, a damaged or
 * ignored checkpoint): the segment before the last, which a crash between
 * a roll and its flush can leave unsynced. The last is always scanned. */
static size_t full_from(const plog *l, bool have_rp, int64_t rp)
{
    size_t n = l->nsegs, i = 0;
    if (!have_rp)
        return n >= 2 ? n - 2 : 0;
    while (i + 1 < n && l->segs[i + 1]->base <= rp)
        i++;
    return i;
}

/* Recover segments from index first on, those from index full on in full;
 * the first hole ends the log there. */
static int recover_segs(plog *l, size_t first, size_t full, rdr *r)
{
    for (size_t i = first; i + 1 < l->nsegs; i++) {
        seg *s = l->segs[i];
        int rc = seg_recover(l, s, false, i >= full, r);
        if (rc)
            return rc;
        if (s->end != l->segs[i + 1]->base) {
            drop_after(l, i + 1,
                       s->end < l->segs[i + 1]->base ? "segment ends short of the next"
                                                     : "segments overlap");
            break; /* it is the active segment now: scanned in full below */
        }
    }
    return seg_recover(l, active_seg(l), true, true, r);
}

/* After recovery everything is on disk, so the recovery point is the end:
 * write it unless the file already says so (the usual clean restart: no
 * I/O), or there is neither a file nor data. A recovery point left above
 * the end would, once appends reuse those offsets, exempt never-synced
 * data from the next recovery's scan, so if it cannot be rewritten it is
 * removed, and if that fails too the open fails. *dir_synced tells
 * whether the directory was fsynced on the way. */
static int ckpt_settle(plog *l, int have_rp, int64_t rp, bool *dir_synced)
{
    *dir_synced = false;
    l->ckpt_end = l->end;
    if (have_rp > 0 ? rp == l->end : have_rp == 0 && l->end == 0)
        return 0;
    int e = ckpt_write(l->dirfd, l->end);
    if (!e) {
        *dir_synced = true;
        return 0;
    }
    log_io(l->dir, "write recovery-point checkpoint", -1, e);
    l->ckpt_end = -1; /* none on disk: the periodic writer retries */
    if (unlinkat(l->dirfd, CKPT_NAME, 0) < 0 && errno != ENOENT)
        return log_io(l->dir, "remove recovery-point checkpoint", -1, errno);
    return 0;
}

static int recover(plog *l)
{
    int64_t *bases = NULL;
    size_t n = 0;
    rdr r = {.fd = -1};
    unlinkat(l->dirfd, CKPT_TMP, 0); /* a checkpoint write a crash cut short */
    int64_t rp = -1;
    int have_rp = ckpt_read(l, &rp);
    int rc = list_segments(l, &bases, &n);
    if (rc)
        return rc;
    size_t full = 0;
    if (n == 0) {
        rc = segs_reserve(l, 1);
        if (!rc)
            rc = seg_open(l->dirfd, l->dir, 0, true, &l->segs[0]);
        if (rc)
            goto out;
        l->nsegs = 1;
    } else {
        if ((rc = segs_reserve(l, n)) != 0)
            goto out;
        for (size_t i = 0; i < n; i++) {
            if ((rc = seg_open(l->dirfd, l->dir, bases[i], false, &l->segs[i])) != 0)
                goto out;
            l->nsegs++;
        }
        full = full_from(l, have_rp > 0, rp);
        if ((rc = recover_segs(l, 0, full, &r)) != 0)
            goto out;
    }
    if (have_rp > 0 && active_seg(l)->end < rp) {
        /* Segment files removed or cut by hand, a restored backup, or
         * damage below the recovery point: the checkpoint does not
         * describe this log, so what it exempted from the full scan is
         * recovered again as if there were none. */
        weft_log(WEFT_LOG_WARN,
                 "plog: recovery point beyond the end of the log; recovering as without one",
                 WEFT_KV_STR("dir", l->dir), WEFT_KV_INT("recovery_point", rp),
                 WEFT_KV_INT("end_offset", active_seg(l)->end));
        size_t dflt = full_from(l, false, 0);
        if (dflt < full)
            rc = recover_segs(l, dflt, dflt, &r);
    }
out:
    free(r.p);
    free(bases);
    if (rc)
        return rc;
    /* What a crashed process wrote may still be only in the page cache:
     * make it durable before calling it so (cheap for clean files). */
    for (size_t i = 0; i < l->nsegs; i++) {
        int e = sync_fd(l->segs[i]->log_fd, true);
        if (e)
            return log_io(l->dir, "fdatasync", l->segs[i]->base, e);
        l->total += l->segs[i]->size;
    }
    l->end = l->durable = l->requested = active_seg(l)->end;
    bool dir_synced;
    if ((rc = ckpt_settle(l, have_rp, rp, &dir_synced)) != 0 || dir_synced)
        return rc;
    int e = sync_fd(l->dirfd, false);
    return e ? log_io(l->dir, "fsync directory", -1, e) : 0;
}

static void plog_free(plog *l)
{
    for (size_t i = 0; i < l->nsegs; i++)
        seg_unref(l->segs[i]);
    free(l->segs);
    close_fd(l->evfd);
    close_fd(l->dirfd);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l->dir);
    free(l);
}

int plog_open(weft_loop *loop, const char *dir, const plog_opts *o, plog_durable_cb cb, void *ud,
              plog **out)
{
    plog_opts def;
    if (!o) {
        plog_opts_default(&def);
        o = &def;
    }
    if (!loop || !dir || !*dir || !out || !opts_ok(o))
        return WEFT_EINVAL;
    plog *l = calloc(1, sizeof *l);
    if (!l)
        return WEFT_ENOMEM;
    l->loop = loop;
    l->o = *o;
    l->cb = cb;
    l->ud = ud;
    l->dirfd = l->evfd = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    int rc = WEFT_ENOMEM;
    size_t n = strlen(dir);
    if (!(l->dir = malloc(n + 1)))
        goto fail;
    memcpy(l->dir, dir, n + 1);
    int e = make_dirs(dir);
    if (e) {
        rc = log_io(dir, "create directory", -1, e);
        goto fail;
    }
    if ((l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = log_io(dir, "open directory", -1, errno);
        goto fail;
    }
    if (flock(l->dirfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            weft_log(WEFT_LOG_ERROR, "plog: directory is in use by another plog",
                     WEFT_KV_STR("dir", dir));
            rc = WEFT_EEXIST;
        } else {
            rc = log_io(dir, "lock directory", -1, errno);
        }
        goto fail;
    }
    if ((rc = recover(l)) != 0)
        goto fail;
    if ((rc = start_flusher(l)) != 0)
        goto fail;
    weft_log(WEFT_LOG_INFO, "plog: opened", WEFT_KV_STR("dir", dir),
             WEFT_KV_UINT("segments", l->nsegs), WEFT_KV_INT("start_offset", l->segs[0]->base),
             WEFT_KV_INT("end_offset", l->end), WEFT_KV_UINT("bytes", l->total),
             WEFT_KV_UINT("truncated_bytes", l->rec.truncated_bytes),
             WEFT_KV_UINT("indexes_rebuilt", l->rec.index_rebuilds),
             WEFT_KV_UINT("segments_dropped", l->rec.segments_dropped));
    *out = l;
    return 0;

fail:
    plog_free(l);
    return rc;
}

void plog_close(plog *l)
{
    if (!l)
        return;
    if (weft_timer_active(&l->timer))
        weft_timer_stop(l->loop, &l->timer);
    if (weft_timer_active(&l->wb_timer))
        weft_timer_stop(l->loop, &l->wb_timer);
    if (weft_timer_active(&l->ckpt_timer))
        weft_timer_stop(l->loop, &l->ckpt_timer);
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->req_end = l->end;
        l->req_active = active_seg(l);
        l->req_have = true;
        l->stop = true;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        weft_io_stop(l->loop, &l->evio);
        collect_flushed(l);
    }
    int e = seg_trim(active_seg(l)); /* a clean log has no zero tail */
    if (e)
        log_io(l->dir, "truncate preallocated space", active_seg(l)->base, e);
    /* The flusher has stopped: ckpt_end is ours. After a clean final
     * flush durable == end and the next open scans only the last
     * segment; a log that took no appends since open writes nothing. */
    if (l->thread_started && l->durable > l->ckpt_end && (e = ckpt_write(l->dirfd, l->durable)))
        log_io(l->dir, "write recovery-point checkpoint", -1, e);
    if (l->durable < l->end)
        weft_log(WEFT_LOG_ERROR, "plog: closed with appends not on disk",
                 WEFT_KV_STR("dir", l->dir), WEFT_KV_INT("durable_offset", l->durable),
                 WEFT_KV_INT("end_offset", l->end));
    plog_free(l);
}

/* ---- accessors ---- */

int64_t plog_start_offset(const plog *l)
{
    return l->segs[0]->base;
}

int64_t plog_active_base(const plog *l)
{
    return l->segs[l->nsegs - 1]->base;
}
size_t plog_segments(const plog *l)
{
    return l->nsegs;
}

int64_t plog_segment_base(const plog *l, size_t i)
{
    return l->segs[i]->base;
}

int plog_failed(const plog *l)
{
    return l->failed;
}

int64_t plog_end_offset(const plog *l)
{
    return l->end;
}
int64_t plog_durable_offset(const plog *l)
{
    return l->durable;
}
uint64_t plog_size_bytes(const plog *l)
{
    return l->total;
}

void plog_stats_get(plog *l, plog_stats *out)
{
    *out = l->rec;
    out->appends = l->appends;
    out->segments = l->nsegs;
    pthread_mutex_lock(&l->mu);
    out->flushes = l->flushes;
    pthread_mutex_unlock(&l->mu);
}

/* ---- append ---- */

/* Finish the active segment and start a new one at l->end. */
static int roll(plog *l)
{
    seg *old = active_seg(l), *s;
    int rc = segs_reserve(l, l->nsegs + 1);
    if (rc)
        return rc;
    int e = seg_finish(old);
    if (e)
        return log_io(l->dir, "write time index", old->base, e);
    if ((e = seg_trim(old)) != 0) /* recovery would cut the zeros: go on */
        log_io(l->dir, "truncate preallocated space", old->base, e);
    if ((rc = seg_open(l->dirfd, l->dir, l->end, true, &s)) != 0)
        return rc;
    old->refs++;
    pthread_mutex_lock(&l->mu);
    old->sync_next = l->req_closed;
    l->req_closed = old;
    l->req_dir = true;
    pthread_mutex_unlock(&l->mu);
    l->segs[l->nsegs++] = s;
    l->wb_seg = NULL; /* a pending early writeback was for the old segment */
    return 0;
}

/* Extend the active segment's file so that the append of n bytes at
 * s->size lands in allocated space (see Preallocation at the top). A
 * failure is not an error: the write that follows extends the file
 * itself, and reports ENOSPC if that is what it was. */
static void preallocate(plog *l, seg *s, size_t n)
{
    uint64_t step = l->o.preallocate_bytes, need = s->size + n;
    if (!step)
        return;
    uint64_t to = (need + step - 1) / step * step;
    if (to > l->o.segment_bytes)
        to = need > l->o.segment_bytes ? need : l->o.segment_bytes;
    int r;
    do
        r = fallocate(s->log_fd, 0, (off_t)s->alloc, (off_t)(to - s->alloc));
    while (r < 0 && errno == EINTR);
    if (r == 0) {
        s->alloc = to;
    } else if (errno == EOPNOTSUPP || errno == ENOSYS) {
        l->o.preallocate_bytes = 0;
        weft_log(WEFT_LOG_INFO, "plog: file system cannot preallocate; appends extend the file",
                 WEFT_KV_STR("dir", l->dir));
    }
}

/* Put s back as it was before a failed append (sizes in *was). */
static int undo_append(plog *l, seg *s, const seg *was)
{
    int e = truncate_fd(s->log_fd, was->size);
    s->alloc = was->size;
    if (!e)
        e = truncate_fd(s->idx_fd, (uint64_t)was->idx_n * IDX_ENTRY);
    if (!e)
        e = truncate_fd(s->tim_fd, (uint64_t)was->tim_n * TIM_ENTRY);
    s->end = was->end;
    s->last_base = was->last_base;
    s->size = was->size;
    s->last_idx_pos = was->last_idx_pos;
    s->idx_n = was->idx_n;
    s->tim_n = was->tim_n;
    s->max_ts = was->max_ts;
    s->tim_last = was->tim_last;
    if (e) {
        l->failed = WEFT_EIO;
        log_io(l->dir, "undo a failed append (the log refuses appends until reopened)", s->base, e);
    }
    return WEFT_EIO;
}

int plog_append(plog *l, uint8_t *p, size_t n, int32_t leader_epoch, int64_t *base_offset)
{
    if (l->failed)
        return l->failed;
    if (n > l->o.max_batch_bytes)
        return WEFT_ETOOBIG;
    if (n < KF_BATCH_HEADER)
        return WEFT_EINVAL;
    int32_t delta = (int32_t)be32(p + 23);
    if ((int64_t)be32(p + 8) + KF_BATCH_LOG_OVERHEAD != (int64_t)n || p[16] != 2 || delta < 0)
        return WEFT_EINVAL;
    seg *s = active_seg(l);
    if (s->size > 0 && (s->size + n > l->o.segment_bytes || l->end + delta - s->base > INT32_MAX)) {
        int rc = roll(l);
        if (rc)
            return rc;
        s = active_seg(l);
    }
    kf_batch_patch(p, l->end, leader_epoch);
    seg was = *s;
    if (s->size + n > s->alloc)
        preallocate(l, s, n);
    int e = xfer(s->log_fd, XFER_WRITE_AT, p, n, s->size);
    if (e) {
        log_io(l->dir, "write", s->base, e);
        return undo_append(l, s, &was);
    }
    if (s->size + n > s->alloc)
        s->alloc = s->size + n;
    bhdr h = {.base = l->end, .last = l->end + delta, .size = n, .max_ts = (int64_t)be64(p + 35)};
    if ((e = seg_add_batch(s, &h, l->o.index_interval_bytes)) != 0) {
        log_io(l->dir, "write index", s->base, e);
        return undo_append(l, s, &was);
    }
    *base_offset = l->end;
    l->end = s->end;
    l->total += n;
    l->appends++;
    if (l->o.fsync == PLOG_FSYNC_ALWAYS && request_flush(l, false))
        want_writeback(l, s, was.size, was.size + n);
    return 0;
}

/* ---- reads ---- */

/* The segment holding offset (start <= offset < end). */
static seg *find_seg(const plog *l, int64_t offset)
{
    size_t lo = 0, hi = l->nsegs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->segs[mid]->base <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return l->segs[lo];
}

/* Walk batch headers from pos (a batch start) to the batch whose offsets
 * reach target (by_ts: whose maxTimestamp reaches it). */
static int walk_to(const seg *s, uint64_t pos, int64_t target, bool by_ts, uint64_t *at, bhdr *h)
{
    while (pos < s->size) {
        int rc = peek_hdr(s->log_fd, pos, s->size, h);
        if (rc)
            return rc == WEFT_EPROTO ? WEFT_EIO : rc;
        if (by_ts ? h->max_ts >= target : h->last >= target) {
            *at = pos;
            return 0;
        }
        pos += h->size;
    }
    return WEFT_ENOTFOUND;
}

int plog_read(plog *l, int64_t offset, size_t max_bytes, plog_slice *out)
{
    *out = (plog_slice){.fd = -1, .first_offset = offset};
    if (offset < plog_start_offset(l) || offset > l->end)
        return WEFT_ENOTFOUND;
    if (offset == l->end)
        return 0;
    seg *s = find_seg(l, offset);
    uint64_t pos, first;
    bhdr h;
    int rc = idx_floor(s, (uint64_t)(offset - s->base), false, &pos);
    if (!rc)
        rc = walk_to(s, pos, offset, false, &first, &h);
    if (rc)
        return rc == WEFT_ENOTFOUND ? WEFT_EIO : rc;
    out->first_offset = h.base;
    uint64_t next = first + h.size;
    uint64_t limit = max_bytes < s->size - first ? first + max_bytes : s->size;
    if (next < limit) {
        /* jump over whole batches with the index, then walk the rest */
        if ((rc = idx_floor(s, limit, true, &pos)) != 0)
            return rc;
        if (pos > next)
            next = pos;
        while (next < limit) {
            if ((rc = peek_hdr(s->log_fd, next, s->size, &h)) != 0)
                return rc == WEFT_EPROTO ? WEFT_EIO : rc;
            if (h.size > limit - next)
                break;
            next += h.size;
        }
    }
    s->refs++;
    out->fd = s->log_fd;
    out->pos = (off_t)first;
    out->len = (size_t)(next - first);
    out->seg = s;
    return 0;
}

void plog_slice_release(plog_slice *s)
{
    if (!s)
        return;
    seg_unref(s->seg);
    s->seg = NULL;
    s->fd = -1;
    s->len = 0;
}

int64_t plog_offset_for_time(plog *l, int64_t ts)
{
    for (size_t i = 0; i < l->nsegs; i++) {
        seg *s = l->segs[i];
        if (s->size == 0 || s->max_ts < ts)
            continue;
        uint32_t rel;
        uint64_t pos, at;
        bhdr h;
        if (tim_floor(s, ts, &rel) == 0 && idx_floor(s, rel, false, &pos) == 0 &&
            walk_to(s, pos, ts, true, &at, &h) == 0)
            return h.base;
    }
    return -1;
}

/* ---- retention ---- */

/* The time retention measures a segment by: its largest timestamp, or, when
 * its batches carry none (maxTimestamp -1: a producer that sets no
 * timestamps, an old client), the .log file's modification time, its last
 * append or the cut at its roll, as Kafka does: without it such a segment
 * would count as expired at once. INT64_MAX (never old) if fstat fails. */
static int64_t seg_retention_ts(const seg *s)
{
    if (s->max_ts >= 0)
        return s->max_ts;
    struct stat st;
    if (fstat(s->log_fd, &st) < 0)
        return INT64_MAX;
    return (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
}

int plog_enforce_retention(plog *l, int64_t now_wall_ms)
{
    size_t k = 0;
    uint64_t total = l->total;
    while (k + 1 < l->nsegs) {
        seg *s = l->segs[k];
        if (s->end > l->durable)
            break;
        bool old = l->o.retention_ms >= 0 && seg_retention_ts(s) < now_wall_ms - l->o.retention_ms;
        /* "keep at most" (plog.h): unlike Kafka, which deletes a segment
         * only while at least retention.bytes would remain */
        bool big = l->o.retention_bytes >= 0 && total > (uint64_t)l->o.retention_bytes;
        if (!old && !big)
            break;
        total -= s->size;
        k++;
    }
    if (!k)
        return 0;
    weft_log(WEFT_LOG_INFO, "plog: retention deleted segments", WEFT_KV_STR("dir", l->dir),
             WEFT_KV_UINT("segments", k), WEFT_KV_UINT("bytes", l->total - total),
             WEFT_KV_INT("start_offset", l->segs[k]->base));
    for (size_t i = 0; i < k; i++) {
        seg_unlink(l->dirfd, l->segs[i]->base);
        seg_unref(l->segs[i]);
    }
    memmove(l->segs, l->segs + k, (l->nsegs - k) * sizeof *l->segs);
    l->nsegs -= k;
    l->total = total;
    pthread_mutex_lock(&l->mu);
    l->req_dir = true; /* make the unlinks durable with the next flush */
    pthread_mutex_unlock(&l->mu);
    request_flush(l, true);
    return (int)k;
}
