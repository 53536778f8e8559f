/*
 * test_plog.c — unit tests for the partition log: append/read round trips
 * across segment rolls (every offset, every read size), reopen, torn and
 * corrupt tails cut to the prefix of whole batches, damaged or missing
 * index files rebuilt byte for byte, damage before the last segment,
 * offset_for_time against a brute-force model, retention by bytes and by
 * time, group commit (many appends per fdatasync), the interval flusher,
 * slices that outlive their segment and their plog, and kill -9 during
 * appends (every offset reported durable survives), preallocated
 * segment files (grown ahead, cut on roll and close, zero tails after a
 * crash removed without being called damage), and the recovery-point
 * checkpoint (written at close, periodically and after recovery; it
 * decides which segments recovery scans in full; a damaged one, or one
 * beyond the end of the log, is not trusted).
 *
 * Each test gets a mkdtemp directory; log lines go to a tmpfile so tests
 * can check that recovery reported what it dropped. The test keeps a model
 * of every batch it appended (its bytes after the plog patched them), and
 * reads are checked against it byte for byte. Loops run on the test's
 * thread with a guard timer, so a durable callback that never comes fails
 * the test instead of hanging it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "eventlog/plog.h"
#include "kafka/batch.h"
#include "weft/buf.h"
#include "weft/crc32c.h"
#include "weft/log.h"
#include "weft/loop.h"

/* fdatasync as libc's unless a test makes it fail: this definition in the
 * test program is the one plog.o (from libweft.a) links to, so a disk
 * error can be injected where it happens, on the flusher thread. */
static atomic_int g_fail_fdatasync;

int fdatasync(int fd)
{
    if (atomic_load(&g_fail_fdatasync)) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}

#define GUARD_MS 5000
#define DAY_MS (24LL * 3600 * 1000)
#define MAX_MODEL 4096

/* ------------------------------------------------------------------ */
/* model of what was appended */

typedef struct mbatch {
    int64_t base, last, max_ts;
    size_t size;
    uint8_t *bytes; /* as stored (patched) */
} mbatch;

typedef struct tctx {
    char root[64];
    char dir[96];
    FILE *log;
    weft_loop *loop;
    plog *l;
    plog_opts o;
    mbatch m[MAX_MODEL];
    size_t nm;
    /* durable callback */
    int64_t target, last_durable;
    int durable_calls;
    bool monotonic;
    weft_timer guard;
    bool guard_fired;
    uint32_t rng;
} tctx;

static uint32_t rnd(tctx *c)
{
    uint32_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return c->rng = x;
}

static int unlink_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    tctx *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    strcpy(c->root, "/tmp/weft-plog-XXXXXX");
    if (!mkdtemp(c->root) || weft_loop_new(&c->loop) != 0)
        return -1;
    snprintf(c->dir, sizeof c->dir, "%s/topic-0", c->root);
    if (!(c->log = tmpfile()))
        return -1;
    weft_log_set_level(WEFT_LOG_INFO);
    weft_log_set_fd(fileno(c->log));
    plog_opts_default(&c->o);
    c->monotonic = true;
    c->last_durable = -1;
    c->rng = 2463534242u;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    tctx *c = *state;
    plog_close(c->l);
    weft_loop_free(c->loop);
    for (size_t i = 0; i < c->nm; i++)
        free(c->m[i].bytes);
    weft_log_set_fd(2);
    nftw(c->root, unlink_cb, 8, FTW_DEPTH | FTW_PHYS);
    fclose(c->log);
    free(c);
    return 0;
}

static bool logged(tctx *c, const char *needle)
{
    fflush(c->log);
    long n = ftell(c->log);
    char *s = calloc(1, (size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(pread(fileno(c->log), s, (size_t)n, 0), n);
    bool found = strstr(s, needle) != NULL;
    free(s);
    return found;
}

static void durable_cb(plog *l, int64_t end, void *ud)
{
    tctx *c = ud;
    assert_ptr_equal(l, c->l);
    if (end <= c->last_durable)
        c->monotonic = false;
    c->last_durable = end;
    c->durable_calls++;
    if (end >= c->target)
        weft_loop_stop(weft_loop_current());
}

static void guard_cb(weft_loop *loop, weft_timer *t)
{
    tctx *c = t->data;
    c->guard_fired = true;
    weft_loop_stop(loop);
}

/* Run the loop until the durable callback reports target (or the guard). */
static void run_until_durable(tctx *c, int64_t target)
{
    c->target = target;
    if (plog_durable_offset(c->l) >= target)
        return;
    c->guard_fired = false;
    weft_timer_init(&c->guard, guard_cb, c);
    weft_timer_start(c->loop, &c->guard, GUARD_MS);
    assert_int_equal(weft_loop_run(c->loop), 0);
    weft_timer_stop(c->loop, &c->guard);
    assert_false(c->guard_fired);
    assert_int_equal(plog_durable_offset(c->l), target);
}

static void open_log(tctx *c)
{
    assert_null(c->l);
    assert_int_equal(plog_open(c->loop, c->dir, &c->o, durable_cb, c, &c->l), 0);
    c->last_durable = -1;
}

static void close_log(tctx *c)
{
    plog_close(c->l);
    c->l = NULL;
}

/* Build a batch of nrec records (timestamps ts, ts+1, ...), append it and
 * add it to the model. */
static int64_t append_ts(tctx *c, int nrec, int64_t ts)
{
    kf_record_in recs[8];
    char vals[8][300];
    assert_true(nrec >= 1 && nrec <= 8);
    for (int i = 0; i < nrec; i++) {
        size_t len = 8 + rnd(c) % 200;
        memset(vals[i], 'a' + (int)(c->nm % 26), len);
        snprintf(vals[i], 16, "b%zu.%d", c->nm, i);
        recs[i] = (kf_record_in){.value = {vals[i], len}, .timestamp = ts + i};
    }
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(kf_batch_build(&b, recs, (size_t)nrec), 0);
    size_t n = weft_buf_used(&b);
    uint8_t *p = (uint8_t *)weft_buf_rptr(&b);
    int64_t base = -1;
    assert_int_equal(plog_append(c->l, p, n, 7, &base), 0);
    assert_true(c->nm < MAX_MODEL);
    mbatch *m = &c->m[c->nm++];
    m->base = base;
    m->last = base + nrec - 1;
    m->max_ts = ts + nrec - 1;
    m->size = n;
    m->bytes = malloc(n);
    assert_non_null(m->bytes);
    memcpy(m->bytes, p, n);
    weft_buf_release(&b);
    if (c->nm > 1)
        assert_int_equal(base, c->m[c->nm - 2].last + 1);
    assert_int_equal(plog_end_offset(c->l), m->last + 1);
    return base;
}

static int64_t append_one(tctx *c)
{
    return append_ts(c, 1 + (int)(rnd(c) % 4), 1000 + (int64_t)c->nm);
}

static void append_many(tctx *c, int n)
{
    for (int i = 0; i < n; i++)
        append_one(c);
}

/* Open with these segment and index sizes (0: default) and append n. */
static void open_filled(tctx *c, uint64_t segment_bytes, uint32_t interval, int n)
{
    c->o.segment_bytes = segment_bytes;
    if (interval)
        c->o.index_interval_bytes = interval;
    open_log(c);
    append_many(c, n);
}

/* The model batch holding offset. */
static size_t model_at(const tctx *c, int64_t off)
{
    for (size_t i = 0; i < c->nm; i++)
        if (c->m[i].base <= off && off <= c->m[i].last)
            return i;
    fail_msg("offset %lld not in the model", (long long)off);
    return 0;
}

/* Read a slice and check it is whole model batches from index i on. */
static size_t check_slice(const tctx *c, const plog_slice *s, size_t i)
{
    uint8_t *buf = malloc(s->len ? s->len : 1);
    assert_non_null(buf);
    assert_int_equal(pread(s->fd, buf, s->len, s->pos), (ssize_t)s->len);
    size_t at = 0, k = i;
    while (at < s->len) {
        assert_true(k < c->nm);
        assert_true(c->m[k].size <= s->len - at);
        assert_memory_equal(buf + at, c->m[k].bytes, c->m[k].size);
        kf_batch b;
        assert_int_equal(kf_batch_parse(buf + at, s->len - at, &b), (int64_t)c->m[k].size);
        assert_true(kf_batch_crc_ok(buf + at, &b));
        at += c->m[k].size;
        k++;
    }
    free(buf);
    return k - i;
}

/* Every offset, read with max_bytes 1 (one batch) and with a random size. */
static void check_all(tctx *c, int64_t from)
{
    plog *l = c->l;
    int64_t end = plog_end_offset(l);
    assert_int_equal(end, c->nm ? c->m[c->nm - 1].last + 1 : 0);
    for (int64_t off = from; off < end; off++) {
        size_t i = model_at(c, off);
        plog_slice s;
        assert_int_equal(plog_read(l, off, 1, &s), 0);
        assert_int_equal(s.first_offset, c->m[i].base);
        assert_int_equal(s.len, c->m[i].size);
        assert_int_equal(check_slice(c, &s, i), 1);
        plog_slice_release(&s);

        size_t max = 1 + rnd(c) % 3000;
        assert_int_equal(plog_read(l, off, max, &s), 0);
        assert_int_equal(s.first_offset, c->m[i].base);
        size_t k = check_slice(c, &s, i);
        assert_true(k >= 1);
        assert_true(s.len <= max || k == 1);
        plog_slice_release(&s);
    }
    plog_slice s;
    assert_int_equal(plog_read(l, end, 100, &s), 0);
    assert_int_equal(s.len, 0);
    plog_slice_release(&s);
    assert_int_equal(plog_read(l, end + 1, 100, &s), WEFT_ENOTFOUND);
    if (plog_start_offset(l) > 0)
        assert_int_equal(plog_read(l, plog_start_offset(l) - 1, 100, &s), WEFT_ENOTFOUND);
}

/* Segment files, ascending base offsets. */
static size_t list_bases(const tctx *c, int64_t *out, size_t max)
{
    DIR *d = opendir(c->dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len == 24 && strcmp(e->d_name + 20, ".log") == 0 && n < max)
            out[n++] = strtoll(e->d_name, NULL, 10);
    }
    closedir(d);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
            int64_t t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return n;
}

/* open_filled, close, and list the segments (at most 64). */
static size_t fill_and_close(tctx *c, uint64_t segment_bytes, uint32_t interval, int n,
                             int64_t *bases)
{
    open_filled(c, segment_bytes, interval, n);
    close_log(c);
    return list_bases(c, bases, 64);
}

/* fill_and_close with 3000-byte segments, 400-byte index steps, n batches;
 * at least min segments. */
static size_t fill_segs(tctx *c, int n, size_t min, int64_t *bases)
{
    size_t nb = fill_and_close(c, 3000, 400, n, bases);
    assert_true(nb >= min);
    return nb;
}

static const char *seg_path(const tctx *c, int64_t base, const char *ext)
{
    static char buf[4][160];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, sizeof buf[0], "%s/%020lld.%s", c->dir, (long long)base, ext);
    return p;
}

static off_t size_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Sum of the model's batch sizes in the segment starting at base. */
static uint64_t model_seg_bytes(const tctx *c, int64_t base, int64_t next)
{
    uint64_t n = 0;
    for (size_t i = 0; i < c->nm; i++)
        if (c->m[i].base >= base && (next < 0 || c->m[i].base < next))
            n += c->m[i].size;
    return n;
}

static uint8_t *read_file(const char *path, size_t *n)
{
    *n = (size_t)size_of(path);
    uint8_t *p = malloc(*n + 1);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, p, *n, 0), (ssize_t)*n);
    close(fd);
    return p;
}

static void patch_file(const char *path, off_t at, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, data, n, at), (ssize_t)n);
    close(fd);
}

/* Drop model batches from offset on (they were cut by recovery). */
static void model_cut(tctx *c, int64_t end)
{
    while (c->nm && c->m[c->nm - 1].base >= end)
        free(c->m[--c->nm].bytes);
    assert_true(c->nm == 0 || c->m[c->nm - 1].last + 1 == end);
}

static const char *rp_path(const tctx *c, const char *name)
{
    static char buf[2][160];
    static int k;
    char *p = buf[k++ & 1];
    snprintf(p, sizeof buf[0], "%s/%s", c->dir, name);
    return p;
}

/* Write a recovery-point file byte for byte as the format section at the
 * top of plog.c specifies (an independent encoder, not plog's). */
static void write_rp(const tctx *c, int64_t off)
{
    uint8_t b[20] = {'W', 'R', 'P', 'T', 0, 0, 0, 1};
    for (int i = 0; i < 8; i++)
        b[8 + i] = (uint8_t)((uint64_t)off >> (56 - 8 * i));
    uint32_t crc = weft_crc32c(0, b, 16);
    for (int i = 0; i < 4; i++)
        b[16 + i] = (uint8_t)(crc >> (24 - 8 * i));
    int fd = open(rp_path(c, "recovery-point"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, sizeof b), (ssize_t)sizeof b);
    close(fd);
}

/* The recovery point on disk, its format checked; -1 if there is none. */
static int64_t read_rp(const tctx *c)
{
    const char *path = rp_path(c, "recovery-point");
    if (access(path, F_OK) != 0)
        return -1;
    size_t n;
    uint8_t *b = read_file(path, &n);
    assert_int_equal(n, 20);
    assert_memory_equal(b, "WRPT\0\0\0\1", 8);
    uint32_t crc = (uint32_t)b[16] << 24 | (uint32_t)b[17] << 16 | (uint32_t)b[18] << 8 | b[19];
    assert_int_equal(crc, weft_crc32c(0, b, 16));
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[8 + i];
    free(b);
    return (int64_t)v;
}

/* Zero 16 bytes inside the records of the second batch of the segment at
 * base (a page never written back: its header intact, its body not, well
 * before the segment's last index entry). Returns its model index. */
static size_t zero_second_batch(const tctx *c, int64_t base)
{
    size_t k = model_at(c, base);
    off_t pos = (off_t)c->m[k].size;
    k++;
    assert_true(c->m[k].base < c->m[c->nm - 1].base && c->m[k].size > KF_BATCH_HEADER + 16);
    uint8_t zeros[16] = {0};
    patch_file(seg_path(c, base, "log"), pos + KF_BATCH_HEADER, zeros, sizeof zeros);
    return k;
}

/* Run the loop for ms milliseconds. */
static void run_for(tctx *c, uint64_t ms)
{
    weft_timer_init(&c->guard, guard_cb, c);
    weft_timer_start(c->loop, &c->guard, ms);
    assert_int_equal(weft_loop_run(c->loop), 0);
}

static plog_stats stats(tctx *c)
{
    plog_stats st;
    plog_stats_get(c->l, &st);
    return st;
}

/* ------------------------------------------------------------------ */
/* tests */

static void test_empty_dir_is_empty_log(void **state)
{
    tctx *c = *state;
    open_log(c);
    assert_int_equal(plog_start_offset(c->l), 0);
    assert_int_equal(plog_end_offset(c->l), 0);
    assert_int_equal(plog_durable_offset(c->l), 0);
    assert_int_equal(plog_size_bytes(c->l), 0);
    assert_int_equal(size_of(seg_path(c, 0, "log")), 0);
    check_all(c, 0);
    assert_int_equal(plog_offset_for_time(c->l, 0), -1);
    /* a second plog on the same directory is refused */
    plog *other = NULL;
    assert_int_equal(plog_open(c->loop, c->dir, &c->o, NULL, NULL, &other), WEFT_EEXIST);
    assert_null(other);
    /* bad options */
    plog_opts bad = c->o;
    bad.segment_bytes = 0;
    assert_int_equal(plog_open(c->loop, c->dir, &bad, NULL, NULL, &other), WEFT_EINVAL);
}

static void test_round_trip_across_rolls(void **state)
{
    tctx *c = *state;
    open_filled(c, 4096, 700, 150);
    plog_stats st = stats(c);
    assert_true(st.segments >= 8);
    assert_int_equal(st.appends, 150);
    int64_t bases[64];
    size_t nb = list_bases(c, bases, 64);
    assert_int_equal(nb, st.segments);
    /* segments hold whole batches, start at a batch, and stay within size
     * (unless a single batch is larger) */
    uint64_t total = 0;
    for (size_t i = 0; i < nb; i++) {
        off_t sz = size_of(seg_path(c, bases[i], "log"));
        assert_int_equal(bases[i], c->m[model_at(c, bases[i])].base);
        assert_true(sz <= 4096);
        if (i + 1 == nb) /* active: preallocated up to the segment size */
            sz = (off_t)model_seg_bytes(c, bases[i], -1);
        else
            assert_int_equal(sz, model_seg_bytes(c, bases[i], bases[i + 1]));
        total += (uint64_t)sz;
    }
    assert_int_equal(total, plog_size_bytes(c->l));
    check_all(c, 0);
    /* a huge max_bytes still stops at the end of the segment */
    plog_slice s;
    assert_int_equal(plog_read(c->l, 0, SIZE_MAX, &s), 0);
    assert_int_equal(s.len, size_of(seg_path(c, 0, "log")));
    plog_slice_release(&s);
    run_until_durable(c, plog_end_offset(c->l));
    assert_true(c->monotonic);
}

static void test_append_rejects_bad_sizes(void **state)
{
    tctx *c = *state;
    c->o.max_batch_bytes = 200;
    open_log(c);
    uint8_t junk[300] = {0};
    int64_t base;
    assert_int_equal(plog_append(c->l, junk, sizeof junk, 0, &base), WEFT_ETOOBIG);
    assert_int_equal(plog_append(c->l, junk, 20, 0, &base), WEFT_EINVAL);
    assert_int_equal(plog_append(c->l, junk, 100, 0, &base), WEFT_EINVAL); /* length field 0 */
    assert_int_equal(plog_end_offset(c->l), 0);
    assert_int_equal(plog_size_bytes(c->l), 0);
}

/* A write cut short by the file size limit (a partial write, then EFBIG)
 * is undone: the append fails, the file is as before, the next append
 * takes the same offset. */
static void test_failed_write_is_undone(void **state)
{
    tctx *c = *state;
    c->o.preallocate_bytes = 0; /* the file must end where the data does */
    open_filled(c, 1 << 20, 0, 5);
    off_t before = size_of(seg_path(c, 0, "log"));
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)before + 40;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    weft_buf b;
    weft_buf_init(&b, 4096);
    char val[300];
    memset(val, 'x', sizeof val);
    kf_record_in rec = {.value = {val, sizeof val}, .timestamp = 1};
    assert_int_equal(kf_batch_build(&b, &rec, 1), 0);
    int64_t base = -1;
    int rc = plog_append(c->l, (uint8_t *)weft_buf_rptr(&b), weft_buf_used(&b), 0, &base);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    weft_buf_release(&b);
    assert_int_equal(rc, WEFT_EIO);
    assert_int_equal(base, -1);
    assert_int_equal(size_of(seg_path(c, 0, "log")), before);
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    assert_int_equal(plog_size_bytes(c->l), (uint64_t)before);
    append_many(c, 3);
    check_all(c, 0);
    run_until_durable(c, plog_end_offset(c->l));
    close_log(c);
    open_log(c);
    assert_int_equal(stats(c).truncated_bytes, 0);
    check_all(c, 0);
}

/* A failed fdatasync: the durable callback is called once more with the
 * old durable end and plog_failed set (so that whoever waits is answered
 * instead of waiting for ever), durable never moves again (even if a later
 * fdatasync succeeds: the kernel may have dropped the failed pages), and
 * appends are refused; a reopen keeps every whole batch. */
static void test_failed_flush_is_reported(void **state)
{
    tctx *c = *state;
    open_filled(c, 1 << 20, 0, 5);
    int64_t durable = plog_end_offset(c->l);
    run_until_durable(c, durable);
    int calls = c->durable_calls;
    assert_int_equal(plog_failed(c->l), 0);
    atomic_store(&g_fail_fdatasync, 1);
    append_many(c, 3);
    c->target = INT64_MAX; /* the callback stops the loop only via the guard */
    weft_timer_init(&c->guard, guard_cb, c);
    weft_timer_start(c->loop, &c->guard, 300);
    assert_int_equal(weft_loop_run(c->loop), 0);
    atomic_store(&g_fail_fdatasync, 0);
    assert_int_equal(c->durable_calls, calls + 1);
    assert_int_equal(c->last_durable, durable);
    assert_int_equal(plog_failed(c->l), WEFT_EIO);
    assert_int_equal(plog_durable_offset(c->l), durable);
    assert_true(logged(c, "fdatasync failed"));
    /* refused from now on, and a later good flush does not move durable */
    weft_buf b;
    weft_buf_init(&b, 4096);
    kf_record_in rec = {.value = {"x", 1}, .timestamp = 1};
    assert_int_equal(kf_batch_build(&b, &rec, 1), 0);
    int64_t base = -1;
    assert_int_equal(plog_append(c->l, (uint8_t *)weft_buf_rptr(&b), weft_buf_used(&b), 0, &base),
                     WEFT_EIO);
    weft_buf_release(&b);
    weft_timer_start(c->loop, &c->guard, 300);
    assert_int_equal(weft_loop_run(c->loop), 0);
    assert_int_equal(plog_durable_offset(c->l), durable);
    assert_int_equal(c->durable_calls, calls + 1);
    close_log(c);
    open_log(c); /* the page cache still has the three batches: all kept */
    assert_int_equal(plog_failed(c->l), 0);
    check_all(c, 0);
}

static void test_reopen_keeps_everything(void **state)
{
    tctx *c = *state;
    open_filled(c, 3000, 500, 60);
    uint64_t size = plog_size_bytes(c->l);
    size_t segs = stats(c).segments;
    close_log(c);
    open_log(c);
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    assert_int_equal(plog_durable_offset(c->l), plog_end_offset(c->l));
    assert_int_equal(plog_size_bytes(c->l), size);
    plog_stats st = stats(c);
    assert_int_equal(st.segments, segs);
    assert_int_equal(st.truncated_bytes, 0);
    assert_int_equal(st.index_rebuilds, 0);
    assert_int_equal(st.segments_dropped, 0);
    check_all(c, 0);
    append_many(c, 30);
    check_all(c, 0);
}

/* Cut random amounts off the last segment, again and again: recovery keeps
 * exactly the whole batches, reports the bytes dropped, and appends go on
 * at the right offset. */
static void test_torn_tail_random_cuts(void **state)
{
    tctx *c = *state;
    open_filled(c, 6000, 400, 40);
    for (int trial = 0; trial < 25; trial++) {
        close_log(c);
        int64_t bases[64];
        size_t nb = list_bases(c, bases, 64);
        const char *path = seg_path(c, bases[nb - 1], "log");
        off_t sz = size_of(path);
        off_t cut = 1 + (off_t)(rnd(c) % (uint32_t)(c->m[c->nm - 1].size + 150));
        if (cut > sz)
            cut = sz;
        off_t keep = sz - cut;
        assert_int_equal(truncate(path, keep), 0);
        /* what survives: the segment's batches that end by keep */
        size_t k = model_at(c, bases[nb - 1]);
        off_t pos = 0;
        while (k < c->nm && pos + (off_t)c->m[k].size <= keep)
            pos += (off_t)c->m[k++].size;
        assert_true(k < c->nm);
        int64_t end = c->m[k].base;
        open_log(c);
        model_cut(c, end);
        assert_int_equal(plog_end_offset(c->l), end);
        assert_int_equal(size_of(path), pos);
        plog_stats st = stats(c);
        assert_int_equal(st.truncated_bytes, (uint64_t)(keep - pos));
        if (keep > pos)
            assert_true(logged(c, "bytes_dropped="));
        check_all(c, c->m[c->nm > 5 ? c->nm - 5 : 0].base);
        append_many(c, 3);
    }
    close_log(c);
    open_log(c);
    assert_int_equal(stats(c).truncated_bytes, 0);
    check_all(c, 0);
}

static void extend_with_zeros(const char *path, off_t by)
{
    assert_int_equal(truncate(path, size_of(path) + by), 0);
}

/* Preallocation: the active file runs ahead of the data in steps, rolled
 * segments and a closed log are cut to their exact length, and a zero tail
 * (a crash while preallocated) is removed without being called damage,
 * in the last segment and in the one before it; zeros followed by
 * anything else are damage. */
static void test_preallocated_tail(void **state)
{
    tctx *c = *state;
    c->o.preallocate_bytes = 4096;
    open_filled(c, 8192, 0, 200);
    int64_t bases[64];
    size_t nb = list_bases(c, bases, 64);
    assert_true(nb >= 3);
    char active[160], prev[160]; /* seg_path's buffers rotate */
    snprintf(active, sizeof active, "%s", seg_path(c, bases[nb - 1], "log"));
    snprintf(prev, sizeof prev, "%s", seg_path(c, bases[nb - 2], "log"));
    uint64_t data = model_seg_bytes(c, bases[nb - 1], -1);
    off_t fsz = size_of(active);
    assert_true((uint64_t)fsz >= data && (uint64_t)fsz - data < 4096);
    assert_int_equal(fsz % 4096, 0);
    for (size_t i = 0; i + 1 < nb; i++) /* rolled: exact */
        assert_int_equal(size_of(seg_path(c, bases[i], "log")),
                         model_seg_bytes(c, bases[i], bases[i + 1]));
    close_log(c);
    assert_int_equal(size_of(active), data);

    /* a crash image: zeros after the data of the last two segments */
    extend_with_zeros(active, 5000);
    extend_with_zeros(prev, 16 << 10);
    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.truncated_bytes, 0);
    assert_int_equal(st.segments_dropped, 0);
    assert_false(logged(c, "bytes_dropped="));
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    assert_int_equal(size_of(active), data);
    assert_int_equal(size_of(prev), model_seg_bytes(c, bases[nb - 2], bases[nb - 1]));
    check_all(c, 0);
    append_many(c, 5);
    check_all(c, 0);
    close_log(c);

    /* zeros, then a stray byte: damage, cut from the end of the data */
    nb = list_bases(c, bases, 64);
    snprintf(active, sizeof active, "%s", seg_path(c, bases[nb - 1], "log"));
    data = model_seg_bytes(c, bases[nb - 1], -1);
    extend_with_zeros(active, 3000);
    patch_file(active, (off_t)data + 2999, "x", 1);
    open_log(c);
    assert_int_equal(stats(c).truncated_bytes, 3000);
    assert_true(logged(c, "bytes_dropped=3000"));
    check_all(c, 0);
    close_log(c);

    /* off: the file is exactly the data while the log is open */
    c->o.preallocate_bytes = 0;
    open_log(c);
    append_many(c, 3);
    nb = list_bases(c, bases, 64);
    assert_int_equal(size_of(seg_path(c, bases[nb - 1], "log")),
                     model_seg_bytes(c, bases[nb - 1], -1));
}

/* A flipped byte inside a batch of the last segment: that batch fails its
 * CRC and it and everything after it are cut. */
static void test_crc_damage_cuts_from_bad_batch(void **state)
{
    tctx *c = *state;
    open_filled(c, 1 << 20, 0, 30);
    close_log(c);
    /* the last batch, in the middle of its records */
    off_t sz = size_of(seg_path(c, 0, "log"));
    mbatch *m = &c->m[c->nm - 1];
    uint8_t x = m->bytes[m->size / 2] ^ 0x5a;
    patch_file(seg_path(c, 0, "log"), sz - (off_t)m->size + (off_t)m->size / 2, &x, 1);
    open_log(c);
    assert_int_equal(stats(c).truncated_bytes, m->size);
    model_cut(c, m->base);
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    assert_true(logged(c, "crc mismatch"));
    check_all(c, 0);
    append_one(c);
    close_log(c);

    /* a batch in the middle: the rest of the segment goes with it */
    off_t pos = 0;
    for (size_t i = 0; i < 10; i++)
        pos += (off_t)c->m[i].size;
    x = c->m[10].bytes[30] ^ 0xff; /* inside the CRC-covered header */
    patch_file(seg_path(c, 0, "log"), pos + 30, &x, 1);
    open_log(c);
    model_cut(c, c->m[10].base);
    assert_int_equal(plog_end_offset(c->l), c->m[9].last + 1);
    assert_int_equal(size_of(seg_path(c, 0, "log")), pos);
    check_all(c, 0);
    /* a zero-filled tail (size extended, data never written) is what
     * preallocation leaves after a crash: cut, but not counted as damage
     * (test_preallocated_tail) */
    close_log(c);
    assert_int_equal(truncate(seg_path(c, 0, "log"), pos + 4096), 0);
    open_log(c);
    assert_int_equal(plog_end_offset(c->l), c->m[9].last + 1);
    assert_int_equal(stats(c).truncated_bytes, 0);
    assert_int_equal(size_of(seg_path(c, 0, "log")), pos);
    append_one(c);
    check_all(c, 0);
}

/* Deleted, garbage and short index files of finished segments are rebuilt
 * exactly as they were written. */
static void test_damaged_indexes_rebuilt(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_and_close(c, 5000, 300, 120, bases);
    assert_true(nb >= 7); /* six finished segments to damage */
    size_t nidx[6], ntim[6];
    uint8_t *idx[6], *tim[6];
    for (size_t i = 0; i < 6; i++) {
        idx[i] = read_file(seg_path(c, bases[i], "index"), &nidx[i]);
        tim[i] = read_file(seg_path(c, bases[i], "timeindex"), &ntim[i]);
        assert_true(nidx[i] >= 16 && nidx[i] % 8 == 0);
        assert_true(ntim[i] >= 12 && ntim[i] % 12 == 0);
    }
    unlink(seg_path(c, bases[0], "index"));
    uint8_t garbage[24];
    memset(garbage, 0xee, sizeof garbage);
    patch_file(seg_path(c, bases[1], "timeindex"), 0, garbage, sizeof garbage);
    assert_int_equal(truncate(seg_path(c, bases[2], "index"), (off_t)nidx[2] - 8), 0);
    assert_int_equal(truncate(seg_path(c, bases[3], "index"), (off_t)nidx[3] - 3), 0);
    /* an entry pointing past the log */
    uint8_t far[8] = {0, 0, 0, 9, 0, 0x7f, 0, 0};
    patch_file(seg_path(c, bases[4], "index"), (off_t)nidx[4] - 8, far, 8);
    unlink(seg_path(c, bases[5], "timeindex"));
    /* an orphan index is deleted */
    int fd = open(seg_path(c, 99999999, "index"), O_CREAT | O_WRONLY, 0644);
    assert_true(fd >= 0);
    close(fd);

    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.index_rebuilds, 6);
    assert_int_equal(st.truncated_bytes, 0);
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    assert_int_equal(access(seg_path(c, 99999999, "index"), F_OK), -1);
    for (size_t i = 0; i < 6; i++) {
        size_t n;
        uint8_t *p = read_file(seg_path(c, bases[i], "index"), &n);
        assert_int_equal(n, nidx[i]);
        assert_memory_equal(p, idx[i], n);
        free(p);
        p = read_file(seg_path(c, bases[i], "timeindex"), &n);
        assert_int_equal(n, ntim[i]);
        assert_memory_equal(p, tim[i], n);
        free(p);
        free(idx[i]);
        free(tim[i]);
    }
    check_all(c, 0);
    close_log(c);
    open_log(c);
    assert_int_equal(stats(c).index_rebuilds, 0);
}

/* A torn segment before the last one (a crash between a roll and the fsync
 * of the finished segment): it is cut, later segments are deleted. */
static void test_damage_before_last_segment(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_and_close(c, 3000, 400, 60, bases);
    assert_true(nb >= 5);
    /* cut 10 bytes off segment 2: its last batch goes, 3.. are deleted */
    const char *path = seg_path(c, bases[2], "log");
    off_t sz = size_of(path);
    assert_int_equal(truncate(path, sz - 10), 0);
    size_t lastk = model_at(c, bases[3] - 1);
    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.segments, 3);
    assert_int_equal(st.segments_dropped, nb - 3);
    assert_int_equal(st.truncated_bytes, c->m[lastk].size - 10);
    assert_true(logged(c, "later segments deleted"));
    model_cut(c, c->m[lastk].base);
    assert_int_equal(plog_end_offset(c->l), c->m[lastk].base);
    assert_int_equal(list_bases(c, bases, 64), 3);
    check_all(c, 0);
    append_many(c, 20);
    check_all(c, 0);
    close_log(c);
    open_log(c);
    check_all(c, 0);
}

/* A crash between a roll and the fsync of the finished segment can leave
 * any page of what was appended to it since the last flush unwritten
 * (zeros), not only its end: a batch whose body is zeros but whose header
 * is intact, after the last index entry or before it. The segment before
 * the last is checked batch by batch (CRC) like the last one: cut at the
 * first bad batch, later segments dropped, instead of being served. */
static void test_torn_segment_before_last(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_segs(c, 60, 3, bases);
    /* the clean close wrote a recovery point at the end, which would
     * exempt these segments from the scan: a directory without one (an
     * old one, or a damaged file) gets the last two scanned in full */
    assert_int_equal(unlink(rp_path(c, "recovery-point")), 0);
    /* the last batch of the segment before the last: its final bytes */
    size_t k = model_at(c, bases[nb - 1] - 1);
    const char *path = seg_path(c, bases[nb - 2], "log");
    uint8_t zeros[16] = {0};
    patch_file(path, size_of(path) - (off_t)sizeof zeros, zeros, sizeof zeros);
    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.segments, nb - 1);
    assert_int_equal(st.segments_dropped, 1);
    assert_int_equal(st.truncated_bytes, c->m[k].size);
    assert_true(logged(c, "crc mismatch"));
    model_cut(c, c->m[k].base);
    assert_int_equal(plog_end_offset(c->l), c->m[k].base);
    check_all(c, 0);

    /* the first batch of the (new) segment before the last, far before
     * its last index entry */
    append_many(c, 20);
    close_log(c);
    assert_int_equal(unlink(rp_path(c, "recovery-point")), 0);
    nb = list_bases(c, bases, 64);
    assert_true(nb >= 3);
    k = model_at(c, bases[nb - 2]);
    assert_true(c->m[k].size > 61 + sizeof zeros);
    patch_file(seg_path(c, bases[nb - 2], "log"), 61, zeros, sizeof zeros);
    open_log(c);
    st = stats(c);
    assert_int_equal(st.segments, nb - 1);
    model_cut(c, c->m[k].base);
    assert_int_equal(plog_end_offset(c->l), bases[nb - 2]);
    check_all(c, 0);
    append_many(c, 5);
    close_log(c);
    open_log(c);
    check_all(c, 0);
}

/* With a recovery point in an early segment, every segment from the one
 * holding it on is scanned batch by batch, not only the last two: a zeroed
 * batch body in the middle of an older segment (fsync: interval, several
 * rolls between two flushes, then a power failure) is found, the segment
 * cut there and the later ones dropped. Afterwards the recovery point is
 * the new end. */
static void test_recovery_point_bounds_full_scan(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_segs(c, 100, 6, bases); /* segment 3: not one of the last two */
    write_rp(c, bases[2] + 1);
    size_t k = zero_second_batch(c, bases[3]);
    uint64_t dropped = model_seg_bytes(c, c->m[k].base, bases[4]);
    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.segments, 4);
    assert_int_equal(st.segments_dropped, nb - 4);
    assert_int_equal(st.truncated_bytes, dropped);
    assert_int_equal(st.full_scans, 3); /* 2 and 3, then 3 again as the last */
    assert_true(logged(c, "crc mismatch"));
    model_cut(c, c->m[k].base);
    assert_int_equal(plog_end_offset(c->l), c->m[k].base);
    assert_int_equal(read_rp(c), c->m[k].base);
    check_all(c, 0);
    append_many(c, 10);
    check_all(c, 0);
}

/* The trade-off (as in Kafka): a segment wholly below the recovery point
 * was fsynced before the checkpoint was written, so it only gets the
 * cheap structural check; damage in its middle (here in the segment
 * before the last, which used to be scanned in full) is not looked for.
 * A clean close writes the recovery point at the end, so the next open
 * scans only the last segment. */
static void test_damage_below_recovery_point_not_scanned(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_segs(c, 60, 3, bases);
    assert_int_equal(read_rp(c), c->m[c->nm - 1].last + 1);
    size_t k = zero_second_batch(c, bases[nb - 2]);
    open_log(c);
    plog_stats st = stats(c);
    assert_int_equal(st.full_scans, 1);
    assert_int_equal(st.segments, nb);
    assert_int_equal(st.truncated_bytes, 0);
    assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
    /* the damaged batch is served as it is on disk */
    plog_slice sl;
    assert_int_equal(plog_read(c->l, c->m[k].base, 1, &sl), 0);
    assert_int_equal(sl.len, c->m[k].size);
    uint8_t *buf = malloc(sl.len);
    assert_int_equal(pread(sl.fd, buf, sl.len, sl.pos), (ssize_t)sl.len);
    kf_batch b;
    assert_int_equal(kf_batch_parse(buf, sl.len, &b), (int64_t)sl.len);
    assert_false(kf_batch_crc_ok(buf, &b));
    free(buf);
    plog_slice_release(&sl);
}

/* The recovery point is written while the durable end moves (not more
 * often than checkpoint_interval_ms, not again while it stands still) and
 * at close; a log without appends since open writes nothing. */
static void test_recovery_point_written(void **state)
{
    tctx *c = *state;
    c->o.checkpoint_interval_ms = 20;
    open_log(c);
    assert_int_equal(read_rp(c), -1); /* an empty new log: nothing to say */
    append_many(c, 10);
    run_until_durable(c, plog_end_offset(c->l));
    run_for(c, 150);
    assert_int_equal(read_rp(c), plog_end_offset(c->l));
    struct stat a, b;
    assert_int_equal(stat(rp_path(c, "recovery-point"), &a), 0);
    run_for(c, 100); /* durable end unchanged: not rewritten */
    assert_int_equal(stat(rp_path(c, "recovery-point"), &b), 0);
    assert_int_equal(a.st_ino, b.st_ino);
    c->o.checkpoint_interval_ms = 0; /* only at close */
    close_log(c);
    open_log(c);
    append_many(c, 5);
    run_until_durable(c, plog_end_offset(c->l));
    run_for(c, 100);
    assert_int_equal(read_rp(c), c->m[9].last + 1);
    int64_t end = plog_end_offset(c->l);
    close_log(c);
    assert_int_equal(read_rp(c), end);
    assert_int_equal(access(rp_path(c, "recovery-point.tmp"), F_OK), -1);
    assert_int_equal(stat(rp_path(c, "recovery-point"), &a), 0);
    open_log(c);
    assert_int_equal(stats(c).full_scans, 1);
    close_log(c);
    assert_int_equal(stat(rp_path(c, "recovery-point"), &b), 0);
    assert_int_equal(a.st_ino, b.st_ino);
}

/* A damaged recovery-point file (bad checksum, short, another magic or
 * version) is logged and ignored: the last two segments are scanned in
 * full, which finds damage in the one before the last, and a correct
 * file is written. A temp file left by a crash is removed. */
static void test_damaged_recovery_point_ignored(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_segs(c, 60, 3, bases);
    for (int v = 0; v < 4; v++) {
        const char *path = rp_path(c, "recovery-point");
        int64_t end = c->m[c->nm - 1].last + 1;
        assert_int_equal(read_rp(c), end);
        uint8_t x = v == 0 ? 0x40 : 0x7f; /* v 0: offset 0x40..., 2: magic, 3: version */
        if (v == 1)
            assert_int_equal(truncate(path, 12), 0);
        else
            patch_file(path, v == 0 ? 8 : v == 2 ? 0 : 7, &x, 1);
        int fd = open(rp_path(c, "recovery-point.tmp"), O_CREAT | O_WRONLY, 0644);
        assert_true(fd >= 0);
        close(fd);
        size_t k = 0;
        if (v == 0) /* and the damage a crash can leave before the last */
            k = zero_second_batch(c, bases[nb - 2]);
        open_log(c);
        assert_true(logged(c, "recovery-point checkpoint ignored"));
        plog_stats st = stats(c);
        if (v == 0) {
            assert_true(logged(c, "crc mismatch"));
            assert_int_equal(st.segments_dropped, 1);
            model_cut(c, c->m[k].base);
            nb--;
        } else {
            assert_int_equal(st.full_scans, 2);
            assert_int_equal(st.truncated_bytes, 0);
        }
        assert_int_equal(plog_end_offset(c->l), c->m[c->nm - 1].last + 1);
        assert_int_equal(read_rp(c), plog_end_offset(c->l));
        assert_int_equal(access(rp_path(c, "recovery-point.tmp"), F_OK), -1);
        check_all(c, 0);
        close_log(c);
    }
}

/* A recovery point beyond the end of the log (segment files removed by
 * hand) does not describe this log: logged, and recovery falls back to
 * scanning the last two segments in full, then writes the real end. */
static void test_recovery_point_beyond_end(void **state)
{
    tctx *c = *state;
    int64_t bases[64];
    size_t nb = fill_segs(c, 80, 4, bases);
    int64_t rp = c->m[c->nm - 1].last + 1;
    assert_int_equal(read_rp(c), rp);
    /* the last segment removed; damage in what is now before the last */
    assert_int_equal(unlink(seg_path(c, bases[nb - 1], "log")), 0);
    assert_int_equal(unlink(seg_path(c, bases[nb - 1], "index")), 0);
    assert_int_equal(unlink(seg_path(c, bases[nb - 1], "timeindex")), 0);
    model_cut(c, bases[nb - 1]);
    size_t k = zero_second_batch(c, bases[nb - 3]);
    open_log(c);
    assert_true(logged(c, "recovery point beyond the end of the log"));
    assert_true(logged(c, "crc mismatch"));
    plog_stats st = stats(c);
    assert_int_equal(st.segments, nb - 2);
    assert_int_equal(st.segments_dropped, 1);
    model_cut(c, c->m[k].base);
    assert_int_equal(plog_end_offset(c->l), c->m[k].base);
    assert_int_equal(read_rp(c), c->m[k].base);
    check_all(c, 0);
    close_log(c);

    /* an empty directory with a recovery point: an empty log, the file
     * rewritten at 0 */
    int64_t b2[64];
    size_t n2 = list_bases(c, b2, 64);
    for (size_t i = 0; i < n2; i++) {
        unlink(seg_path(c, b2[i], "log"));
        unlink(seg_path(c, b2[i], "index"));
        unlink(seg_path(c, b2[i], "timeindex"));
    }
    model_cut(c, 0);
    open_log(c);
    assert_int_equal(plog_end_offset(c->l), 0);
    assert_int_equal(read_rp(c), 0);
}

static int64_t brute_for_time(const tctx *c, int64_t ts)
{
    for (size_t i = 0; i < c->nm; i++)
        if (c->m[i].max_ts >= ts)
            return c->m[i].base;
    return -1;
}

static void check_times(tctx *c, int64_t lo, int64_t hi)
{
    for (int64_t ts = lo; ts <= hi; ts += 3)
        assert_int_equal(plog_offset_for_time(c->l, ts), brute_for_time(c, ts));
}

static void test_offset_for_time(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 4000;
    c->o.index_interval_bytes = 500;
    open_log(c);
    /* mostly rising timestamps, with some late (smaller) and early (larger)
     * batches mixed in */
    int64_t ts = 10000;
    for (int i = 0; i < 120; i++) {
        int64_t t = ts;
        if (i % 17 == 5)
            t = ts - 400;
        if (i % 23 == 7)
            t = ts + 300;
        append_ts(c, 1 + i % 3, t);
        ts += 10;
    }
    check_times(c, 9000, ts + 400);
    assert_int_equal(plog_offset_for_time(c->l, INT64_MIN), 0);
    assert_int_equal(plog_offset_for_time(c->l, ts + 10000), -1);
    close_log(c);
    open_log(c);
    check_times(c, 9000, ts + 400);
}

static void test_retention_by_bytes(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 2000;
    c->o.retention_ms = -1;
    open_log(c);
    append_many(c, 80);
    run_until_durable(c, plog_end_offset(c->l));
    uint64_t size = plog_size_bytes(c->l);
    int64_t bases[64];
    off_t sizes[64];
    size_t nseg = list_bases(c, bases, 64);
    assert_int_equal(nseg, stats(c).segments);
    for (size_t i = 0; i < nseg; i++)
        sizes[i] = size_of(seg_path(c, bases[i], "log"));
    close_log(c);

    /* keep at most half: the oldest whole segments go, no more than needed */
    uint64_t limit = size / 2;
    c->o.retention_bytes = (int64_t)limit;
    open_log(c);
    int n = plog_enforce_retention(c->l, 0);
    assert_true(n > 0);
    assert_true(plog_size_bytes(c->l) <= limit);
    assert_true(plog_size_bytes(c->l) + (uint64_t)sizes[n - 1] > limit);
    int64_t start = bases[n];
    assert_int_equal(list_bases(c, bases, 64), nseg - (size_t)n);
    assert_int_equal(bases[0], start);
    assert_int_equal(plog_start_offset(c->l), start);
    check_all(c, start);
    plog_slice s;
    assert_int_equal(plog_read(c->l, bases[0] - 1, 100, &s), WEFT_ENOTFOUND);
    assert_int_equal(plog_enforce_retention(c->l, 0), 0);

    /* 0 bytes: everything but the active segment */
    close_log(c);
    c->o.retention_bytes = 0;
    open_log(c);
    int64_t end = plog_end_offset(c->l);
    assert_true(plog_enforce_retention(c->l, 0) > 0);
    assert_int_equal(list_bases(c, bases, 64), 1);
    assert_int_equal(stats(c).segments, 1);
    assert_int_equal(plog_end_offset(c->l), end);
    assert_int_equal(plog_start_offset(c->l), bases[0]);
    check_all(c, bases[0]);
    /* the reopened log starts where retention left it */
    close_log(c);
    open_log(c);
    assert_int_equal(plog_start_offset(c->l), bases[0]);
    assert_int_equal(plog_end_offset(c->l), end);
}

static void test_retention_by_time(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 1500;
    c->o.retention_ms = 7 * DAY_MS;
    int64_t now = 1800000000000LL;
    open_log(c);
    for (int i = 0; i < 30; i++)
        append_ts(c, 1, now - 10 * DAY_MS + i); /* too old */
    int64_t young = append_ts(c, 1, now - DAY_MS);
    for (int i = 0; i < 30; i++)
        append_ts(c, 1, now - 10 * DAY_MS + i); /* old, after a young one */
    run_until_durable(c, plog_end_offset(c->l));
    int64_t bases[64];
    size_t nb = list_bases(c, bases, 64);
    size_t k = 0;
    while (k + 1 < nb && bases[k + 1] <= young)
        k++;
    assert_true(k > 0 && k + 1 < nb);
    /* the segments before the young batch's go; it and all after it stay */
    assert_int_equal(plog_enforce_retention(c->l, now), (int)k);
    assert_int_equal(plog_start_offset(c->l), bases[k]);
    check_all(c, plog_start_offset(c->l));
    assert_int_equal(plog_enforce_retention(c->l, now), 0);
    /* later, the young one is old too: all but the active segment go */
    assert_true(plog_enforce_retention(c->l, now + 7 * DAY_MS) > 0);
    assert_int_equal(stats(c).segments, 1);
    /* -1: forever */
    close_log(c);
    c->o.retention_ms = -1;
    open_log(c);
    for (int i = 0; i < 30; i++)
        append_ts(c, 1, 5);
    run_until_durable(c, plog_end_offset(c->l));
    assert_int_equal(plog_enforce_retention(c->l, now), 0);
}

/* A segment whose batches carry no timestamps (maxTimestamp -1) is as old
 * as its .log file's modification time (Kafka's rule), not expired at once. */
static void test_retention_by_mtime_without_timestamps(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 1500;
    c->o.retention_ms = 7 * DAY_MS;
    open_log(c);
    for (int i = 0; i < 40; i++)
        append_ts(c, 1, -1); /* no timestamp: maxTimestamp -1 */
    run_until_durable(c, plog_end_offset(c->l));
    int64_t bases[64];
    size_t nb = list_bases(c, bases, 64);
    assert_true(nb >= 4);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t now = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    /* just written: nothing is old */
    assert_int_equal(plog_enforce_retention(c->l, now), 0);
    assert_int_equal(stats(c).segments, nb);
    /* the first two last modified ten days ago: they go, the rest stays */
    struct timespec old[2] = {{.tv_sec = wall.tv_sec - 10 * 86400},
                              {.tv_sec = wall.tv_sec - 10 * 86400}};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(utimensat(AT_FDCWD, seg_path(c, bases[i], "log"), old, 0), 0);
    assert_int_equal(plog_enforce_retention(c->l, now), 2);
    assert_int_equal(plog_start_offset(c->l), bases[2]);
    check_all(c, bases[2]);
}

/* A time index that lost its last entries passes no longer for whole: the
 * lost entry held the segment's largest timestamp (a young batch before
 * the last offset-index entry, so not among the batches the cheap check
 * reads). It is rebuilt, so a lookup by time finds the young batch and
 * retention by time keeps its segment. */
static void test_short_time_index_rebuilt(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 3000;
    c->o.index_interval_bytes = 300;
    c->o.retention_ms = 7 * DAY_MS;
    int64_t now = 1800000000000LL, young_ts = now - DAY_MS;
    open_log(c);
    int64_t young = -1;
    for (int i = 0; i < 100; i++) {
        /* the second batch of the second segment is young, all else old */
        if (young < 0 && plog_segments(c->l) == 2 && c->m[c->nm - 1].base == plog_active_base(c->l))
            young = append_ts(c, 1, young_ts);
        else
            append_ts(c, 1, now - 10 * DAY_MS + i);
    }
    close_log(c);
    int64_t bases[64];
    size_t nb = list_bases(c, bases, 64);
    assert_true(young > 0 && nb >= 4 && bases[1] < young && young < bases[2]);
    const char *tpath = seg_path(c, bases[1], "timeindex");
    size_t n;
    uint8_t *tim = read_file(tpath, &n);
    assert_true(n >= 24 && n % 12 == 0);
    int64_t last_ts = 0;
    for (int i = 0; i < 8; i++)
        last_ts = last_ts << 8 | tim[n - 12 + (size_t)i];
    assert_int_equal(last_ts, young_ts);
    assert_int_equal(truncate(tpath, (off_t)n - 12), 0);

    open_log(c);
    assert_int_equal(stats(c).index_rebuilds, 1);
    size_t n2;
    uint8_t *tim2 = read_file(tpath, &n2);
    assert_int_equal(n2, n);
    assert_memory_equal(tim2, tim, n);
    free(tim);
    free(tim2);
    assert_int_equal(plog_offset_for_time(c->l, young_ts), young);
    assert_int_equal(plog_offset_for_time(c->l, young_ts), brute_for_time(c, young_ts));
    assert_int_equal(plog_enforce_retention(c->l, now), 1);
    assert_int_equal(plog_start_offset(c->l), bases[1]);
}

/* Retention never deletes what is not yet durable. */
static void test_retention_waits_for_durable(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 1500;
    c->o.retention_bytes = 0;
    c->o.fsync = PLOG_FSYNC_INTERVAL;
    c->o.fsync_interval_ms = 60000;
    open_log(c);
    append_many(c, 30);
    assert_true(stats(c).segments > 2);
    assert_int_equal(plog_durable_offset(c->l), 0);
    assert_int_equal(plog_enforce_retention(c->l, 0), 0);
}

/* 1000 appends in a burst share few fdatasyncs, and all become durable.
 * The batches are built first so the burst is nothing but plog_append. */
static void test_group_commit(void **state)
{
    tctx *c = *state;
    enum { N = 1000 };
    c->o.segment_bytes = 256 << 10;
    open_log(c);
    weft_buf b[N];
    char val[64];
    memset(val, 'g', sizeof val);
    for (int i = 0; i < N; i++) {
        kf_record_in rec = {.value = {val, sizeof val}, .timestamp = 1000 + i};
        weft_buf_init(&b[i], 4096);
        assert_int_equal(kf_batch_build(&b[i], &rec, 1), 0);
    }
    for (int i = 0; i < N; i++) {
        int64_t base;
        assert_int_equal(
            plog_append(c->l, (uint8_t *)weft_buf_rptr(&b[i]), weft_buf_used(&b[i]), 0, &base), 0);
        assert_int_equal(base, i);
    }
    for (int i = 0; i < N; i++)
        weft_buf_release(&b[i]);
    int64_t end = plog_end_offset(c->l);
    assert_int_equal(end, N);
    run_until_durable(c, end);
    plog_stats st = stats(c);
    assert_int_equal(st.appends, N);
    print_message("group commit: %llu appends, %llu flushes, %d callbacks, %zu segments\n",
                  (unsigned long long)st.appends, (unsigned long long)st.flushes, c->durable_calls,
                  st.segments);
    assert_true(st.flushes >= 1);
    assert_true(st.flushes * 10 <= st.appends);
    assert_true(c->monotonic);
    assert_int_equal(c->last_durable, end);
    /* a second burst continues */
    append_many(c, 100);
    run_until_durable(c, plog_end_offset(c->l));
}

static void test_interval_flush(void **state)
{
    tctx *c = *state;
    c->o.fsync = PLOG_FSYNC_INTERVAL;
    c->o.fsync_interval_ms = 30;
    open_filled(c, 3000, 0, 100);
    assert_int_equal(plog_durable_offset(c->l), 0);
    run_until_durable(c, plog_end_offset(c->l));
    assert_true(stats(c).flushes <= 3);
    /* close flushes what the timer has not */
    append_one(c);
    int64_t end = plog_end_offset(c->l);
    close_log(c);
    open_log(c);
    assert_int_equal(plog_end_offset(c->l), end);
}

/* A slice keeps its segment readable after retention unlinks it, and after
 * the plog is closed. */
static void test_slice_survives_retention_and_close(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 2000;
    c->o.retention_bytes = 0;
    open_log(c);
    append_many(c, 40);
    run_until_durable(c, plog_end_offset(c->l));
    plog_slice a, b;
    assert_int_equal(plog_read(c->l, 0, SIZE_MAX, &a), 0);
    assert_true(a.len > 0);
    assert_int_equal(plog_read(c->l, c->m[c->nm - 1].base, SIZE_MAX, &b), 0);
    assert_true(plog_enforce_retention(c->l, 0) > 0);
    assert_int_equal(access(seg_path(c, 0, "log"), F_OK), -1);
    assert_int_equal(access(seg_path(c, 0, "index"), F_OK), -1);
    assert_int_equal(check_slice(c, &a, 0) > 0, 1);
    plog_slice_release(&a);
    plog_slice_release(&a); /* twice is harmless */
    close_log(c);
    check_slice(c, &b, c->nm - 1);
    plog_slice_release(&b);
}

/* A child appends as fast as it can and reports every durable offset on a
 * pipe; it is killed with SIGKILL. The reopened log holds at least every
 * offset reported durable, all of it valid. */
typedef struct child {
    int fd;
    tctx *c;
} child;

static void child_durable(plog *l, int64_t end, void *ud)
{
    child *ch = ud;
    (void)l;
    if (write(ch->fd, &end, sizeof end) != sizeof end)
        _exit(3);
}

/* No cmocka asserts in the child: it exits with a code instead. */
static void child_append(weft_loop *loop, weft_timer *t)
{
    child *ch = t->data;
    char val[100];
    memset(val, 'k', sizeof val);
    kf_record_in rec = {.value = {val, sizeof val}, .timestamp = 1};
    weft_buf b;
    weft_buf_init(&b, 1 << 16);
    for (int i = 0; i < 20; i++) {
        weft_buf_clear(&b);
        int64_t base;
        if (kf_batch_build(&b, &rec, 1) != 0 ||
            plog_append(ch->c->l, (uint8_t *)weft_buf_rptr(&b), weft_buf_used(&b), 1, &base) != 0)
            _exit(4);
    }
    weft_buf_release(&b);
    weft_timer_start(loop, t, 1);
}

/* Fork a child that opens the log and appends until killed; *rd gets the
 * read end of its durable-offset pipe. */
static pid_t start_appender(tctx *c, int *rd)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid > 0) {
        close(p[1]);
        *rd = p[0];
        return pid;
    }
    close(p[0]);
    child ch = {.fd = p[1], .c = c};
    if (weft_loop_new(&c->loop) != 0 ||
        plog_open(c->loop, c->dir, &c->o, child_durable, &ch, &c->l) != 0)
        _exit(2);
    weft_timer t;
    weft_timer_init(&t, child_append, &ch);
    weft_timer_start(c->loop, &t, 0);
    weft_loop_run(c->loop);
    _exit(0);
}

static void test_kill9_keeps_durable_prefix(void **state)
{
    tctx *c = *state;
    c->o.segment_bytes = 64 << 10;
    int rd;
    pid_t pid = start_appender(c, &rd);
    int64_t durable = 0, v;
    int reports = 0;
    while (reports < 10 && read(rd, &v, sizeof v) == sizeof v) {
        assert_true(v > durable);
        durable = v;
        reports++;
    }
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    while (read(rd, &v, sizeof v) == sizeof v)
        durable = v > durable ? v : durable;
    close(rd);
    assert_int_equal(reports, 10);

    open_log(c);
    int64_t end = plog_end_offset(c->l);
    print_message("kill -9: durable %lld, recovered end %lld\n", (long long)durable,
                  (long long)end);
    assert_true(end >= durable);
    /* everything readable is whole, valid, contiguous */
    int64_t off = 0;
    while (off < end) {
        plog_slice s;
        assert_int_equal(plog_read(c->l, off, 1 << 20, &s), 0);
        uint8_t *buf = malloc(s.len);
        assert_int_equal(pread(s.fd, buf, s.len, s.pos), (ssize_t)s.len);
        size_t at = 0;
        while (at < s.len) {
            kf_batch b;
            int64_t n = kf_batch_parse(buf + at, s.len - at, &b);
            assert_true(n > 0);
            assert_true(kf_batch_crc_ok(buf + at, &b));
            assert_int_equal(b.base_offset, off);
            off = b.base_offset + b.last_offset_delta + 1;
            at += (size_t)n;
        }
        free(buf);
        plog_slice_release(&s);
    }
    assert_int_equal(off, end);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_empty_dir_is_empty_log),
        T(test_round_trip_across_rolls),
        T(test_append_rejects_bad_sizes),
        T(test_failed_write_is_undone),
        T(test_failed_flush_is_reported),
        T(test_reopen_keeps_everything),
        T(test_torn_tail_random_cuts),
        T(test_preallocated_tail),
        T(test_crc_damage_cuts_from_bad_batch),
        T(test_damaged_indexes_rebuilt),
        T(test_damage_before_last_segment),
        T(test_torn_segment_before_last),
        T(test_recovery_point_bounds_full_scan),
        T(test_damage_below_recovery_point_not_scanned),
        T(test_recovery_point_written),
        T(test_damaged_recovery_point_ignored),
        T(test_recovery_point_beyond_end),
        T(test_offset_for_time),
        T(test_retention_by_bytes),
        T(test_retention_by_time),
        T(test_retention_by_mtime_without_timestamps),
        T(test_short_time_index_rebuilt),
        T(test_retention_waits_for_durable),
        T(test_group_commit),
        T(test_interval_flush),
        T(test_slice_survives_retention_and_close),
        T(test_kill9_keeps_durable_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
