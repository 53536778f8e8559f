/*
 * journal.c — the registry's snapshot + append-only journal (see journal.h).
 *
 * Design. The registry's state is a snapshot (all records, written whole,
 * replaced atomically) plus a journal of records appended since. Every
 * record is framed with its length and a CRC-32C, so recovery can tell a
 * whole record from a torn one without any other index. Appends only fill
 * a memory buffer; reg_journal_sync() writes it with pwrite() at a tracked
 * offset and fdatasync()s once, so a caller commits any number of records
 * with one disk flush (group commit). A record is durable once the sync that
 * follows its append has returned 0 — that is the "acknowledged prefix"
 * recovery keeps.
 *
 * On-disk format (all integers little-endian)
 * -------------------------------------------
 * Both files, "snapshot" and "journal", are a 16-byte header followed by
 * zero or more record frames:
 *
 *   header, 16 bytes
 *     0..7    magic: "WEFTSNP1" in the snapshot, "WEFTJNL1" in the journal
 *     8..15   u64 generation. In the snapshot: its own generation (the
 *             first snapshot written is 1; "no snapshot" counts as 0). In
 *             the journal: the generation of the snapshot it follows, i.e.
 *             the journal holds the records that apply on top of exactly
 *             that snapshot.
 *
 *   record frame, 8 + N bytes, repeated until the end of the file
 *     0..3    u32 N, payload length, 0 <= N <= 16 MiB (16777216)
 *     4..7    u32 CRC-32C (Castagnoli, reflected polynomial 0x82F63B78,
 *             initial value and final xor 0xFFFFFFFF) computed over bytes
 *             0..3 of this frame (the length, as stored) followed by the N
 *             payload bytes
 *     8..     N payload bytes, opaque to this module
 *
 * The CRC covers the length as well as the payload on purpose: the CRC-32C
 * of an empty string is 0, so a CRC of the payload alone would accept an
 * all-zero frame as a valid empty record, and a zero-filled tail (what a
 * filesystem can leave after a crash that extended the file size but did
 * not write the data) would replay as a run of phantom empty records. With
 * the length included, 8 zero bytes never form a valid frame.
 *
 * Other names in the directory: "snapshot.tmp" and "journal.tmp" are files
 * being written (deleted on open: a leftover is an interrupted write that
 * never became current); "<name>.corrupt-<unix time>[.<n>]" are damaged
 * files (or copies of them) kept for inspection, never read again.
 *
 * Recovery (reg_journal_open)
 * ---------------------------
 * The snapshot is replayed first. A wrong magic or a short header means the
 * file is not ours or is damaged: it is renamed aside to
 * "snapshot.corrupt-<time>" and the state starts from the journal alone. A
 * damaged record inside a snapshot stops snapshot replay there: the
 * snapshot is written whole and renamed into place, so that is media damage,
 * not a crash. Both cases set stats->snapshot_damaged and are logged as
 * errors: the state that was in the lost part is gone, and the journal that
 * follows assumes it. The journal is still replayed (its records are the
 * newest state there is); a damaged snapshot is left in place (it is still
 * what the journal builds on) and one hard link to it is kept as
 * "snapshot.corrupt-<time>" so the next snapshot cannot erase the evidence.
 *
 * Then the journal. Its generation decides whether it applies:
 *   - equal to the snapshot's: replayed.
 *   - older: it is the journal a crash left behind between a snapshot's
 *     rename and the journal reset; every record in it is already in the
 *     newer snapshot, so it is replaced by an empty journal without replay
 *     (replaying it would apply its records twice).
 *   - newer (or the snapshot is missing/unreadable): the snapshot it builds
 *     on is lost — no crash produces this. It is replayed anyway, flagged
 *     as snapshot_damaged and logged as an error.
 * A journal with a wrong magic or short header is renamed aside to
 * "journal.corrupt-<time>" and an empty one is started (warning). A zero
 * length journal is simply re-created.
 *
 * Inside the journal, replay stops at the first frame that is not whole:
 * short header, short payload, length over 16 MiB, or CRC mismatch. The file
 * is cut there (ftruncate + fsync), stats->truncated_bytes says how much
 * went, and appends continue from that point. A torn tail — the only
 * damage a crash causes — holds only records whose sync had not returned,
 * which were never acknowledged. Damage in the middle (a
 * flipped bit on disk) also loses every record after it: once a frame is
 * bad its length cannot be trusted, so nothing says where the next frame
 * starts. When non-zero bytes follow the bad frame (so acknowledged records
 * are being dropped), the whole file is first copied to
 * "journal.corrupt-<time>" and an error is logged.
 *
 * Snapshot (reg_journal_snapshot) and crash safety
 * ------------------------------------------------
 *   1. write "snapshot.tmp": header with generation G+1, then emit()'s
 *      records; fsync it.
 *   2. rename it over "snapshot"; fsync the directory.
 *   3. write "journal.tmp": header with generation G+1; fsync it.
 *   4. rename it over "journal"; fsync the directory.
 * A crash before the rename in 2 leaves old snapshot + old journal (the tmp
 * file is deleted on open). A crash between 2 and 4 leaves the new snapshot
 * with the old journal, whose generation G is now older than the
 * snapshot's: it is ignored, so nothing is applied twice. After 4, new
 * snapshot + empty journal. Records appended but not yet synced when
 * snapshot() is called describe changes the caller has already applied, so
 * emit() includes them: once the rename in 2 succeeds they are dropped from
 * the buffer (so emit() itself must not append). If step 3 or 4 fails, the
 * error is returned and the reset is retried by the next sync or append
 * before any byte goes to the journal: records written to the old journal
 * then would be ignored by the next open.
 *
 * Errors. A failed write keeps what it wrote (the offset advances) and the
 * rest stays buffered, so a later sync continues where it stopped (e.g. after
 * ENOSPC). A failed fdatasync is sticky: Linux may have dropped the dirty
 * pages and marked them clean, so a retried fdatasync could succeed without
 * the data ever reaching the disk. Every later append/sync returns the
 * error; a successful snapshot (which rewrites the whole state) clears it,
 * as does closing and re-opening (recovery then sees what really is on disk).
 *
 * One process at a time: open takes flock(LOCK_EX) on the directory and
 * fails with WEFT_EEXIST when another reg_journal holds it.
 *
 * CRC-32C is weft_crc32c (src/core/crc32c.c), shared with the Kafka log.
 */
#include "registry/journal.h"
#include "weft/crc32c.h"
#include "weft/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HDR_SIZE 16u
#define FRAME_SIZE 8u
#define MAX_RECORD (16u << 20)
/* Pending bytes an append may buffer before it writes them out itself
 * (without fdatasync): room for two maximal records. */
#define WBUF_MAX (2u * (FRAME_SIZE + MAX_RECORD))
/* A snapshot writer writes out once this much is buffered. */
#define SNAP_FLUSH (1u << 20)
#define RBUF_CHUNK (64u << 10)
#define RBUF_MAX (FRAME_SIZE + MAX_RECORD + RBUF_CHUNK)

static const char MAGIC_JNL[8] = {'W', 'E', 'F', 'T', 'J', 'N', 'L', '1'};
static const char MAGIC_SNP[8] = {'W', 'E', 'F', 'T', 'S', 'N', 'P', '1'};

/* ------------------------------------------------------------------ */
/* little-endian fields */

static inline uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

static inline void store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void store_le64(unsigned char *p, uint64_t v)
{
    store_le32(p, (uint32_t)v);
    store_le32(p + 4, (uint32_t)(v >> 32));
}

/* CRC of one frame: the stored length bytes, then the payload. */
static uint32_t frame_crc(const unsigned char *len_le, const void *payload, size_t len)
{
    return weft_crc32c(weft_crc32c(0, len_le, 4), payload, len);
}

/* ------------------------------------------------------------------ */
/* errors, names, small file helpers */

static int sys_err(int e)
{
    return e == EIO ? WEFT_EIO : weft_err_from_errno(e);
}

static int log_sys(const char *dir, const char *what, const char *file, int e)
{
    weft_log(WEFT_LOG_ERROR, "journal: i/o error", WEFT_KV_STR("dir", dir), WEFT_KV_STR("op", what),
             WEFT_KV_STR("file", file), WEFT_KV_STR("error", strerror(e)));
    return sys_err(e);
}

static int write_full(int fd, const void *data, size_t n, uint64_t off, size_t *done)
{
    const char *p = data;
    size_t got = 0;
    int rc = 0;
    while (got < n) {
        ssize_t w = pwrite(fd, p + got, n - got, (off_t)(off + got));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = errno;
            break;
        }
        if (w == 0) { /* cannot happen for regular files; do not spin */
            rc = EIO;
            break;
        }
        got += (size_t)w;
    }
    if (done)
        *done = got;
    return rc; /* an errno value */
}

/* fsync a file or the directory; an errno value or 0. */
static int fsync_fd(int fd, bool data_only)
{
    int r;
    do {
        r = data_only ? fdatasync(fd) : fsync(fd);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? errno : 0;
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* mkdir, then fsync the parent so the new entry survives a crash. P is
 * writable: it is cut at its last '/' for the parent's name. */
static int mkdir_durable(char *p)
{
    if (mkdir(p, 0755) < 0)
        return errno == EEXIST ? 0 : errno;
    char *slash = strrchr(p, '/');
    const char *parent = ".";
    if (slash == p) {
        parent = "/";
    } else if (slash) {
        *slash = '\0';
        parent = p;
    }
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = fd < 0 ? errno : fsync_fd(fd, false);
    close_fd(fd);
    if (slash && slash != p)
        *slash = '/';
    return e;
}

static int mkdir_p(const char *dir)
{
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p)
        return ENOMEM;
    memcpy(p, dir, n + 1);
    int e = 0;
    for (char *s = p + 1; *s && !e; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        e = mkdir_durable(p);
        *s = '/';
    }
    if (!e)
        e = mkdir_durable(p);
    free(p);
    return e;
}

/* A free name "<base>.corrupt-<unix time>[.<n>]" in dirfd. */
static int aside_name(int dirfd, const char *base, char *out, size_t size)
{
    long long t = (long long)time(NULL);
    for (int i = 0; i < 1000; i++) {
        if (i == 0)
            snprintf(out, size, "%s.corrupt-%lld", base, t);
        else
            snprintf(out, size, "%s.corrupt-%lld.%d", base, t, i);
        struct stat st;
        if (fstatat(dirfd, out, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return errno == ENOENT ? 0 : errno;
    }
    return EEXIST;
}

/* Whether a name starting with PREFIX in dirfd is a link to st's inode
 * (its name copied to out). */
static bool find_link(int dirfd, const char *prefix, const struct stat *st, char *out, size_t size)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return false;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return false;
    }
    bool found = false;
    size_t plen = strlen(prefix);
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        struct stat o;
        size_t n = strlen(e->d_name);
        if (n >= size || strncmp(e->d_name, prefix, plen) != 0)
            continue;
        if (fstatat(dirfd, e->d_name, &o, AT_SYMLINK_NOFOLLOW) == 0 && o.st_ino == st->st_ino &&
            o.st_dev == st->st_dev) {
            memcpy(out, e->d_name, n + 1);
            found = true;
        }
    }
    closedir(d); /* closes fd */
    return found;
}

/* Rename a damaged file aside (and make the rename durable). */
static int move_aside(int dirfd, const char *dir, const char *name, const char *why)
{
    char aside[96];
    int e = aside_name(dirfd, name, aside, sizeof aside);
    if (!e && renameat(dirfd, name, dirfd, aside) < 0)
        e = errno;
    if (!e)
        e = fsync_fd(dirfd, false);
    if (e)
        return log_sys(dir, "move damaged file aside", name, e);
    weft_log(WEFT_LOG_WARN, "journal: damaged file moved aside", WEFT_KV_STR("dir", dir),
             WEFT_KV_STR("file", name), WEFT_KV_STR("moved_to", aside), WEFT_KV_STR("reason", why));
    return 0;
}

/* Copy fd's whole content to a new "<name>.corrupt-<time>" (before the
 * original is cut). */
static int copy_aside(int dirfd, const char *dir, const char *name, int fd, char *buf,
                      size_t bufsize, char *aside, size_t aside_size)
{
    int e = aside_name(dirfd, name, aside, aside_size);
    if (e)
        return log_sys(dir, "name copy of damaged file", name, e);
    int out = openat(dirfd, aside, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0)
        return log_sys(dir, "create copy of damaged file", aside, errno);
    uint64_t off = 0;
    for (;;) {
        ssize_t r = pread(fd, buf, bufsize, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            e = errno;
            break;
        }
        if (r == 0)
            break;
        e = write_full(out, buf, (size_t)r, off, NULL);
        if (e)
            break;
        off += (uint64_t)r;
    }
    if (!e)
        e = fsync_fd(out, false);
    close(out);
    if (!e)
        e = fsync_fd(dirfd, false);
    if (e) {
        unlinkat(dirfd, aside, 0);
        return log_sys(dir, "copy damaged file", aside, e);
    }
    return 0;
}

static void put_header(unsigned char *h, const char magic[8], uint64_t gen)
{
    memcpy(h, magic, 8);
    store_le64(h + 8, gen);
}

/* Create "<name>.tmp" holding just a header, fsync it, rename it over
 * NAME and fsync the directory. Returns the new file's fd (O_RDWR) in *fd. */
static int create_fresh(int dirfd, const char *dir, const char *name, const char *tmp,
                        const char magic[8], uint64_t gen, int *fd_out)
{
    unsigned char h[HDR_SIZE];
    put_header(h, magic, gen);
    const char *op = "create";
    int e;
    int fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return log_sys(dir, op, tmp, errno);
    op = "write header";
    if ((e = write_full(fd, h, sizeof h, 0, NULL)) != 0)
        goto fail_unlink;
    op = "fsync";
    if ((e = fsync_fd(fd, false)) != 0)
        goto fail_unlink;
    op = "rename into place";
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        e = errno;
        goto fail_unlink;
    }
    if ((e = fsync_fd(dirfd, false)) != 0) {
        close(fd);
        return log_sys(dir, "fsync directory", name, e);
    }
    *fd_out = fd;
    return 0;

fail_unlink:
    close(fd);
    unlinkat(dirfd, tmp, 0);
    return log_sys(dir, op, tmp, e);
}

/* ------------------------------------------------------------------ */
/* write buffers */

typedef struct wbuf {
    unsigned char *p;
    size_t len, cap, max;
} wbuf;

static int wbuf_reserve(wbuf *b, size_t n)
{
    if (n > b->max - b->len)
        return WEFT_ETOOBIG;
    if (b->cap - b->len >= n)
        return 0;
    size_t want = b->len + n;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < want)
        cap = cap > b->max / 2 ? b->max : cap * 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return WEFT_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int wbuf_put_record(wbuf *b, const char *rec, size_t len)
{
    int rc = wbuf_reserve(b, FRAME_SIZE + len);
    if (rc)
        return rc;
    unsigned char *f = b->p + b->len;
    store_le32(f, (uint32_t)len);
    store_le32(f + 4, frame_crc(f, rec, len));
    if (len)
        memcpy(f + FRAME_SIZE, rec, len);
    b->len += FRAME_SIZE + len;
    return 0;
}

static void wbuf_consume(wbuf *b, size_t n)
{
    if (n < b->len)
        memmove(b->p, b->p + n, b->len - n);
    b->len -= n < b->len ? n : b->len;
}

static void wbuf_release(wbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* the journal */

struct reg_journal {
    char *dir;          /* for log lines */
    int dirfd;          /* holds the flock */
    int fd;             /* "journal", O_RDWR */
    uint64_t gen;       /* generation in the journal's header */
    uint64_t size;      /* bytes written to the journal file */
    wbuf buf;           /* framed records not yet written */
    bool dirty;         /* written since the last fdatasync */
    bool reset_pending; /* a snapshot was renamed in; the journal is not yet replaced */
    int failed;         /* sticky error after a failed fdatasync */
};

struct reg_journal_writer {
    reg_journal *j;
    int fd;
    uint64_t size;
    wbuf buf;
    int rc; /* first error; later adds return it */
};

/* Write the buffer at the journal's end. What was written stays written. */
static int journal_write_out(reg_journal *j)
{
    if (!j->buf.len)
        return 0;
    size_t done = 0;
    int e = write_full(j->fd, j->buf.p, j->buf.len, j->size, &done);
    j->size += done;
    if (done)
        j->dirty = true;
    wbuf_consume(&j->buf, done);
    return e ? log_sys(j->dir, "write", "journal", e) : 0;
}

/* Replace the journal with an empty one that follows snapshot j->gen. */
static int journal_reset(reg_journal *j)
{
    int fd;
    int rc = create_fresh(j->dirfd, j->dir, "journal", "journal.tmp", MAGIC_JNL, j->gen, &fd);
    if (rc)
        return rc;
    close_fd(j->fd);
    j->fd = fd;
    j->size = HDR_SIZE;
    j->dirty = false;
    j->reset_pending = false;
    return 0;
}

int reg_journal_append(reg_journal *j, const char *rec, size_t len)
{
    if (!j || (!rec && len))
        return WEFT_EINVAL;
    if (len > MAX_RECORD)
        return WEFT_ETOOBIG;
    if (j->failed)
        return j->failed;
    if (FRAME_SIZE + len > j->buf.max - j->buf.len) {
        /* full: write (not sync) what is pending to make room */
        int rc = j->reset_pending ? journal_reset(j) : 0;
        if (!rc)
            rc = journal_write_out(j);
        if (rc)
            return rc;
    }
    return wbuf_put_record(&j->buf, rec, len);
}

int reg_journal_sync(reg_journal *j)
{
    if (!j)
        return WEFT_EINVAL;
    if (j->failed)
        return j->failed;
    int rc = j->reset_pending ? journal_reset(j) : 0;
    if (!rc)
        rc = journal_write_out(j);
    if (rc)
        return rc;
    if (j->dirty) {
        int e = fsync_fd(j->fd, true);
        if (e) {
            j->failed = log_sys(j->dir, "fdatasync (journal now refuses writes)", "journal", e);
            return j->failed;
        }
        j->dirty = false;
    }
    return 0;
}

uint64_t reg_journal_size(const reg_journal *j)
{
    /* what the file will hold after the next sync */
    if (!j)
        return 0;
    return (j->reset_pending ? HDR_SIZE : j->size) + j->buf.len;
}

int reg_journal_snapshot_add(reg_journal_writer *w, const char *rec, size_t len)
{
    if (!w || (!rec && len))
        return WEFT_EINVAL;
    if (w->rc)
        return w->rc;
    int rc = 0;
    if (len > MAX_RECORD) {
        /* a snapshot without this record would silently lose state */
        w->rc = WEFT_ETOOBIG;
        return w->rc;
    }
    if (w->buf.len >= SNAP_FLUSH || FRAME_SIZE + len > w->buf.max - w->buf.len) {
        size_t done = 0;
        int e = write_full(w->fd, w->buf.p, w->buf.len, w->size, &done);
        w->size += done;
        wbuf_consume(&w->buf, done);
        if (e)
            rc = log_sys(w->j->dir, "write", "snapshot.tmp", e);
    }
    if (!rc)
        rc = wbuf_put_record(&w->buf, rec, len);
    if (rc)
        w->rc = rc;
    return rc;
}

int reg_journal_snapshot(reg_journal *j, int (*emit)(void *ud, reg_journal_writer *w), void *ud)
{
    if (!j || !emit)
        return WEFT_EINVAL;
    uint64_t gen = j->gen + 1;
    reg_journal_writer w = {.j = j, .fd = -1, .buf = {.max = WBUF_MAX}};
    const char *op = "create";
    int rc, e = 0;

    w.fd = openat(j->dirfd, "snapshot.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        rc = log_sys(j->dir, op, "snapshot.tmp", errno);
        goto fail;
    }
    if ((rc = wbuf_reserve(&w.buf, HDR_SIZE)) != 0)
        goto fail_unlink;
    put_header(w.buf.p, MAGIC_SNP, gen);
    w.buf.len = HDR_SIZE;
    rc = emit(ud, &w);
    if (!rc)
        rc = w.rc;
    if (rc)
        goto fail_unlink;
    op = "write";
    if ((e = write_full(w.fd, w.buf.p, w.buf.len, w.size, NULL)) != 0)
        goto fail_sys;
    op = "fsync";
    if ((e = fsync_fd(w.fd, false)) != 0)
        goto fail_sys;
    close(w.fd);
    w.fd = -1;
    op = "rename into place";
    if (renameat(j->dirfd, "snapshot.tmp", j->dirfd, "snapshot") < 0) {
        e = errno;
        goto fail_sys;
    }
    wbuf_release(&w.buf);

    /* The new snapshot is the state from here on, even if the fsync of the
     * directory fails (the rename may or may not be durable; either way the
     * journal must not receive records for the old generation). */
    j->gen = gen;
    j->reset_pending = true;
    j->failed = 0;
    j->buf.len = 0; /* appended records are already in the snapshot */
    if ((e = fsync_fd(j->dirfd, false)) != 0)
        return log_sys(j->dir, "fsync directory", "snapshot", e);
    return journal_reset(j);

fail_sys:
    rc = log_sys(j->dir, op, "snapshot.tmp", e);
fail_unlink:
    close_fd(w.fd);
    unlinkat(j->dirfd, "snapshot.tmp", 0);
fail:
    wbuf_release(&w.buf);
    return rc;
}

/* ------------------------------------------------------------------ */
/* recovery */

typedef int (*replay_fn)(void *ud, const char *rec, size_t len);

typedef struct reader {
    int fd;
    uint64_t off; /* file offset of p[0] */
    char *p;
    size_t pos, len, cap;
} reader;

/* Make NEED bytes readable at p[pos]: 0, 1 at end of file first, or an
 * errno value. */
static int rd_fill(reader *r, size_t need)
{
    if (r->len - r->pos >= need)
        return 0;
    if (r->pos) {
        memmove(r->p, r->p + r->pos, r->len - r->pos);
        r->off += r->pos;
        r->len -= r->pos;
        r->pos = 0;
    }
    if (r->cap < need || r->cap < RBUF_CHUNK) {
        size_t cap = need + RBUF_CHUNK;
        if (cap > RBUF_MAX)
            cap = RBUF_MAX;
        char *p = realloc(r->p, cap);
        if (!p)
            return ENOMEM;
        r->p = p;
        r->cap = cap;
    }
    while (r->len < need) {
        ssize_t n = pread(r->fd, r->p + r->len, r->cap - r->len, (off_t)(r->off + r->len));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return 1;
        r->len += (size_t)n;
    }
    return 0;
}

typedef struct scan {
    uint64_t end;       /* end of the last whole record */
    uint64_t records;   /* records replayed */
    const char *damage; /* NULL: clean end of file */
    uint64_t bad_end;   /* where the bad frame ends, as far as it can be told */
} scan;

/* Replay the frames of FD from HDR_SIZE on. Returns 0 (see s->damage),
 * replay()'s non-zero return, or a WEFT_E* code for a read error. */
static int scan_records(int fd, const char *dir, const char *file, replay_fn replay, void *ud,
                        scan *s, reader *r)
{
    r->fd = fd; /* the buffer is kept from the previous file */
    r->off = HDR_SIZE;
    r->pos = r->len = 0;
    *s = (scan){.end = HDR_SIZE};
    for (;;) {
        int e = rd_fill(r, FRAME_SIZE);
        if (e == 1) {
            if (r->len > r->pos) {
                s->damage = "short frame header";
                s->bad_end = r->off + r->len;
            }
            return 0;
        }
        if (e)
            return log_sys(dir, "read", file, e);
        const unsigned char *f = (const unsigned char *)r->p + r->pos;
        uint32_t len = load_le32(f);
        uint32_t crc = load_le32(f + 4);
        if (len > MAX_RECORD) {
            s->damage = "record length over 16 MiB";
            s->bad_end = s->end + FRAME_SIZE;
            return 0;
        }
        e = rd_fill(r, FRAME_SIZE + len);
        if (e == 1) {
            s->damage = "short record";
            s->bad_end = r->off + r->len;
            return 0;
        }
        if (e)
            return log_sys(dir, "read", file, e);
        f = (const unsigned char *)r->p + r->pos;
        if (frame_crc(f, f + FRAME_SIZE, len) != crc) {
            s->damage = "crc mismatch";
            s->bad_end = s->end + FRAME_SIZE + len;
            return 0;
        }
        int rc = replay(ud, (const char *)f + FRAME_SIZE, len);
        if (rc)
            return rc;
        r->pos += FRAME_SIZE + len;
        s->end += FRAME_SIZE + len;
        s->records++;
    }
}

/* Whether any byte in [from, eof) is non-zero: 1, 0, or -errno. */
static int nonzero_after(int fd, uint64_t from, char *buf, size_t bufsize)
{
    for (;;) {
        ssize_t n = pread(fd, buf, bufsize, (off_t)from);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i])
                return 1;
        from += (uint64_t)n;
    }
}

/* Read a 16-byte header: 0 and *gen, 1 if short or wrong magic, or errno. */
static int read_header(int fd, const char magic[8], uint64_t *gen, uint64_t *fsize)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return errno;
    *fsize = (uint64_t)st.st_size;
    unsigned char h[HDR_SIZE];
    size_t got = 0;
    while (got < sizeof h) {
        ssize_t n = pread(fd, h + got, sizeof h - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return 1;
        got += (size_t)n;
    }
    if (memcmp(h, magic, 8) != 0)
        return 1;
    *gen = load_le64(h + 8);
    return 0;
}

typedef struct recovery {
    reg_journal *j;
    reg_journal_stats *stats;
    replay_fn replay;
    void *ud;
    reader r;
    bool snap_ok;      /* the snapshot's header was readable */
    uint64_t snap_gen; /* its generation (0 with no snapshot) */
} recovery;

static int recover_snapshot(recovery *rv)
{
    reg_journal *j = rv->j;
    uint64_t fsize = 0;
    int rc = 0;
    int fd = openat(j->dirfd, "snapshot", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            return log_sys(j->dir, "open", "snapshot", errno);
        rv->snap_ok = true; /* no snapshot: generation 0 */
        return 0;
    }
    int e = read_header(fd, MAGIC_SNP, &rv->snap_gen, &fsize);
    if (e > 1) {
        rc = log_sys(j->dir, "read", "snapshot", e);
        goto out;
    }
    if (e == 1) {
        close(fd);
        fd = -1;
        rv->stats->snapshot_damaged = true;
        weft_log(WEFT_LOG_ERROR, "journal: snapshot unreadable (bad header); its state is lost",
                 WEFT_KV_STR("dir", j->dir), WEFT_KV_UINT("bytes", fsize));
        rc = move_aside(j->dirfd, j->dir, "snapshot", "bad header");
        goto out;
    }
    rv->snap_ok = true;
    scan s;
    rc = scan_records(fd, j->dir, "snapshot", rv->replay, rv->ud, &s, &rv->r);
    rv->stats->snapshot_records = s.records;
    if (rc || !s.damage)
        goto out;
    rv->stats->snapshot_damaged = true;
    char aside[96];
    struct stat st;
    if (fstat(fd, &st) < 0) {
        e = errno;
    } else if (find_link(j->dirfd, "snapshot.corrupt-", &st, aside, sizeof aside)) {
        e = 0; /* kept by an earlier open */
    } else {
        e = aside_name(j->dirfd, "snapshot", aside, sizeof aside);
        if (!e && linkat(j->dirfd, "snapshot", j->dirfd, aside, 0) < 0)
            e = errno;
        if (!e)
            e = fsync_fd(j->dirfd, false);
    }
    weft_log(WEFT_LOG_ERROR, "journal: snapshot damaged; records after the damage are lost",
             WEFT_KV_STR("dir", j->dir), WEFT_KV_STR("reason", s.damage),
             WEFT_KV_UINT("offset", s.end), WEFT_KV_UINT("bytes_lost", fsize - s.end),
             WEFT_KV_UINT("records_kept", s.records),
             WEFT_KV_STR("copy", e ? "(could not link a copy)" : aside));
out:
    close_fd(fd);
    return rc;
}

/* Cut a damaged journal tail at s->end, keeping a copy first if records
 * (non-zero bytes) follow the bad frame. */
static int cut_tail(recovery *rv, const scan *s, uint64_t fsize)
{
    reg_journal *j = rv->j;
    uint64_t cut = fsize - s->end;
    int more = 0;
    /* the read buffer serves as scratch: scanning left it >= RBUF_CHUNK */
    if (s->bad_end < fsize) {
        more = nonzero_after(j->fd, s->bad_end, rv->r.p, RBUF_CHUNK);
        if (more < 0)
            return log_sys(j->dir, "read", "journal", -more);
    }
    if (more) {
        char aside[96];
        int rc = copy_aside(j->dirfd, j->dir, "journal", j->fd, rv->r.p, RBUF_CHUNK, aside,
                            sizeof aside);
        if (rc)
            return rc;
        weft_log(WEFT_LOG_ERROR, "journal: damaged in the middle; the records after it are lost",
                 WEFT_KV_STR("dir", j->dir), WEFT_KV_STR("reason", s->damage),
                 WEFT_KV_UINT("offset", s->end), WEFT_KV_UINT("bytes_cut", cut),
                 WEFT_KV_STR("copy", aside));
    } else {
        weft_log(WEFT_LOG_WARN, "journal: torn tail cut", WEFT_KV_STR("dir", j->dir),
                 WEFT_KV_STR("reason", s->damage), WEFT_KV_UINT("offset", s->end),
                 WEFT_KV_UINT("bytes_cut", cut));
    }
    int e = 0;
    while (ftruncate(j->fd, (off_t)s->end) < 0) {
        if (errno != EINTR) {
            e = errno;
            break;
        }
    }
    if (!e)
        e = fsync_fd(j->fd, false);
    if (e)
        return log_sys(j->dir, "truncate", "journal", e);
    rv->stats->truncated_bytes = cut;
    return 0;
}

static int recover_journal(recovery *rv)
{
    reg_journal *j = rv->j;
    uint64_t gen = 0, fsize = 0;
    /* with no readable snapshot header, any journal generation is accepted */
    uint64_t fresh_gen = rv->snap_ok ? rv->snap_gen : 0;
    scan s;
    int rc, e;

    j->fd = openat(j->dirfd, "journal", O_RDWR | O_CLOEXEC);
    if (j->fd < 0 && errno != ENOENT)
        return log_sys(j->dir, "open", "journal", errno);
    if (j->fd < 0)
        goto fresh;
    e = read_header(j->fd, MAGIC_JNL, &gen, &fsize);
    if (e > 1)
        return log_sys(j->dir, "read", "journal", e);
    if (e == 1 && fsize == 0)
        goto fresh; /* created but never written: nothing to lose */
    if (e == 1) {
        close(j->fd);
        j->fd = -1;
        rc = move_aside(j->dirfd, j->dir, "journal", "bad header");
        if (rc)
            return rc;
        goto fresh;
    }
    if (rv->snap_ok && gen < rv->snap_gen) {
        weft_log(WEFT_LOG_WARN,
                 "journal: older than the snapshot (crash during a snapshot); "
                 "its records are in the snapshot, not replayed",
                 WEFT_KV_STR("dir", j->dir), WEFT_KV_UINT("journal_generation", gen),
                 WEFT_KV_UINT("snapshot_generation", rv->snap_gen));
        goto fresh;
    }
    if (!rv->snap_ok || gen > rv->snap_gen) {
        rv->stats->snapshot_damaged = true;
        weft_log(WEFT_LOG_ERROR,
                 "journal: the snapshot it follows is missing; replaying the journal alone",
                 WEFT_KV_STR("dir", j->dir), WEFT_KV_UINT("journal_generation", gen),
                 WEFT_KV_UINT("snapshot_generation", rv->snap_ok ? rv->snap_gen : 0),
                 WEFT_KV_BOOL("snapshot_readable", rv->snap_ok));
    }
    rc = scan_records(j->fd, j->dir, "journal", rv->replay, rv->ud, &s, &rv->r);
    if (rc)
        return rc;
    rv->stats->journal_records = s.records;
    if (s.damage && (rc = cut_tail(rv, &s, fsize)) != 0)
        return rc;
    j->gen = gen;
    j->size = s.end;
    return 0;

fresh:
    close_fd(j->fd);
    j->fd = -1;
    j->gen = fresh_gen;
    j->size = HDR_SIZE;
    return create_fresh(j->dirfd, j->dir, "journal", "journal.tmp", MAGIC_JNL, fresh_gen, &j->fd);
}

static void journal_free(reg_journal *j)
{
    close_fd(j->fd);
    close_fd(j->dirfd);
    wbuf_release(&j->buf);
    free(j->dir);
    free(j);
}

int reg_journal_open(const char *dir, int (*replay)(void *ud, const char *rec, size_t len),
                     void *ud, reg_journal **out, reg_journal_stats *stats)
{
    reg_journal_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    if (!dir || !*dir || !replay || !out)
        return WEFT_EINVAL;

    int rc;
    recovery rec = {.stats = stats, .replay = replay, .ud = ud};
    reg_journal *j = calloc(1, sizeof *j);
    if (!j)
        return WEFT_ENOMEM;
    j->fd = j->dirfd = -1;
    j->buf.max = WBUF_MAX;
    rec.j = j;
    size_t n = strlen(dir);
    if (!(j->dir = malloc(n + 1))) {
        rc = WEFT_ENOMEM;
        goto fail;
    }
    memcpy(j->dir, dir, n + 1);

    int e = mkdir_p(dir);
    if (e) {
        rc = log_sys(dir, "create directory", dir, e);
        goto fail;
    }
    j->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        rc = log_sys(dir, "open directory", dir, errno);
        goto fail;
    }
    if (flock(j->dirfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            weft_log(WEFT_LOG_ERROR, "journal: directory is in use by another journal",
                     WEFT_KV_STR("dir", dir));
            rc = WEFT_EEXIST;
        } else {
            rc = log_sys(dir, "lock directory", dir, errno);
        }
        goto fail;
    }
    /* interrupted writes that never became current */
    unlinkat(j->dirfd, "snapshot.tmp", 0);
    unlinkat(j->dirfd, "journal.tmp", 0);

    if ((rc = recover_snapshot(&rec)) != 0)
        goto fail;
    if ((rc = recover_journal(&rec)) != 0)
        goto fail;
    free(rec.r.p);
    *out = j;
    return 0;

fail:
    free(rec.r.p);
    journal_free(j);
    return rc;
}

void reg_journal_close(reg_journal *j)
{
    if (!j)
        return;
    int rc = reg_journal_sync(j);
    if (rc)
        weft_log(WEFT_LOG_ERROR, "journal: sync on close failed; unsynced records are lost",
                 WEFT_KV_STR("dir", j->dir), WEFT_KV_STR("error", weft_strerror(rc)));
    journal_free(j);
}
