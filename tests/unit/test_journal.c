/*
 * test_journal.c — unit tests for the registry's snapshot + journal:
 * CRC-32C vectors, replay order and contents after reopen, torn tails cut
 * at every byte of the last record, corruption in the middle, damaged
 * headers moved aside, snapshots and a crash between the snapshot's rename
 * and the journal reset (no record applied twice), callback errors, limits.
 *
 * Each test gets its own mkdtemp directory under /tmp, removed afterwards.
 * Log lines go to a tmpfile so tests can check that damage was reported.
 * Crashes are emulated by editing the files between a close and an open:
 * cutting, zero-filling, flipping bytes, or putting back an older file.
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "registry/journal.h"
#include "registry/persist.h"
#include "weft/crc32c.h"
#include "weft/log.h"

#define MIB (1024u * 1024u)

/* ------------------------------------------------------------------ */
/* fixture: a temporary directory and captured log lines */

typedef struct ctx {
    char root[64]; /* mkdtemp directory */
    char dir[96];  /* the journal directory inside it */
    FILE *log;
} ctx;

static int setup(void **state)
{
    ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    snprintf(c->root, sizeof c->root, "/tmp/weft-jnl-XXXXXX");
    if (!mkdtemp(c->root)) {
        free(c);
        return -1;
    }
    snprintf(c->dir, sizeof c->dir, "%s/data", c->root);
    c->log = tmpfile();
    if (!c->log)
        return -1;
    weft_log_set_level(WEFT_LOG_INFO);
    weft_log_set_fd(fileno(c->log));
    *state = c;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    ctx *c = *state;
    weft_log_set_fd(2);
    chmod(c->dir, 0700);
    nftw(c->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    fclose(c->log);
    free(c);
    return 0;
}

static const char *path_in(const ctx *c, const char *name)
{
    static char buf[4][160];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", c->dir, name);
    return p;
}

static bool log_contains(const ctx *c, const char *needle)
{
    int fd = fileno(c->log);
    off_t size = lseek(fd, 0, SEEK_END);
    char *s = malloc((size_t)size + 1);
    assert_non_null(s);
    ssize_t n = pread(fd, s, (size_t)size, 0);
    s[n > 0 ? n : 0] = '\0';
    bool found = strstr(s, needle) != NULL;
    free(s);
    return found;
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char *p = malloc((size_t)st.st_size + 1);
    assert_non_null(p);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, p + got, (size_t)st.st_size - got);
        assert_true(n > 0);
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return p;
}

static void spit(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        assert_true(n > 0);
        done += (size_t)n;
    }
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -1;
    return st.st_size;
}

/* Names in c->dir starting with PREFIX; the first is copied to first. */
static int count_prefixed(const ctx *c, const char *prefix, char *first, size_t first_size)
{
    DIR *d = opendir(c->dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        if (n++ == 0 && first) {
            size_t l = strlen(e->d_name);
            assert_true(l < first_size);
            memcpy(first, e->d_name, l + 1);
        }
    }
    closedir(d);
    return n;
}

static uint64_t header_gen(const char *path)
{
    size_t len;
    unsigned char *p = (unsigned char *)slurp(path, &len);
    assert_true(len >= 16);
    uint64_t g = 0;
    for (int i = 7; i >= 0; i--)
        g = g << 8 | p[8 + i];
    free(p);
    return g;
}

/* ------------------------------------------------------------------ */
/* replayed records */

typedef struct coll {
    char **rec;
    size_t *len;
    size_t n, cap;
    size_t fail_at; /* 1-based record number that fails; 0: never */
    int fail_rc;
} coll;

static int collect(void *ud, const char *rec, size_t len)
{
    coll *k = ud;
    if (k->fail_at && k->n + 1 == k->fail_at)
        return k->fail_rc;
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 64;
        k->rec = realloc(k->rec, k->cap * sizeof *k->rec);
        k->len = realloc(k->len, k->cap * sizeof *k->len);
        assert_non_null(k->rec);
        assert_non_null(k->len);
    }
    k->rec[k->n] = malloc(len + 1);
    assert_non_null(k->rec[k->n]);
    if (len)
        memcpy(k->rec[k->n], rec, len);
    k->rec[k->n][len] = '\0';
    k->len[k->n++] = len;
    return 0;
}

static void coll_clear(coll *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->rec[i]);
    free(k->rec);
    free(k->len);
    memset(k, 0, sizeof *k);
}

static void assert_rec(const coll *k, size_t i, const char *want)
{
    assert_true(i < k->n);
    assert_int_equal(k->len[i], strlen(want));
    assert_string_equal(k->rec[i], want);
}

/* Open c->dir replaying into a fresh *k. */
static int jopen(const ctx *c, coll *k, reg_journal **j, reg_journal_stats *st)
{
    coll_clear(k);
    return reg_journal_open(c->dir, collect, k, j, st);
}

static void append_str(reg_journal *j, const char *s)
{
    assert_int_equal(reg_journal_append(j, s, strlen(s)), 0);
}

/* Deterministic record i: "rec-<i>-" then filler up to a length that varies. */
static size_t make_rec(char *buf, size_t size, unsigned i)
{
    int n = snprintf(buf, size, "rec-%u-", i);
    size_t len = (size_t)n + (i * 7u) % 61u;
    if (len > size)
        len = size;
    for (size_t p = (size_t)n; p < len; p++)
        buf[p] = (char)('a' + (i + p) % 26u);
    return len;
}

/* snapshot emit(): adds the strings in a NULL-terminated list */
typedef struct emit_list {
    const char *const *recs;
    int fail_rc;
} emit_list;

static int emit_strs(void *ud, reg_journal_writer *w)
{
    emit_list *e = ud;
    for (size_t i = 0; e->recs[i]; i++) {
        int rc = reg_journal_snapshot_add(w, e->recs[i], strlen(e->recs[i]));
        if (rc)
            return rc;
    }
    return e->fail_rc;
}

/* ------------------------------------------------------------------ */
/* CRC-32C */

static void test_crc32c_check_vectors(void **state)
{
    (void)state;
    assert_int_equal(weft_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(weft_crc32c_portable(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(weft_crc32c(0, "", 0), 0);
    assert_int_equal(weft_crc32c(0, NULL, 0), 0);
    /* RFC 3720 (iSCSI) appendix B.4 */
    unsigned char b[32];
    memset(b, 0, sizeof b);
    assert_int_equal(weft_crc32c(0, b, 32), 0x8A9136AAu);
    memset(b, 0xff, sizeof b);
    assert_int_equal(weft_crc32c(0, b, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)i;
    assert_int_equal(weft_crc32c(0, b, 32), 0x46DD794Eu);
    assert_int_equal(weft_crc32c_portable(0, b, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)(31 - i);
    assert_int_equal(weft_crc32c(0, b, 32), 0x113FDB5Cu);
}

static void test_crc32c_incremental_and_paths_agree(void **state)
{
    (void)state;
    enum { N = 5000 };
    unsigned char *buf = malloc(N + 8);
    assert_non_null(buf);
    uint32_t x = 12345;
    for (size_t i = 0; i < N + 8; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
    }
    uint32_t whole = weft_crc32c(0, buf, N);
    assert_int_equal(weft_crc32c_portable(0, buf, N), whole);
    for (size_t cut = 0; cut <= N; cut += (cut < 100 ? 1 : 97)) {
        uint32_t a = weft_crc32c(0, buf, cut);
        assert_int_equal(weft_crc32c(a, buf + cut, N - cut), whole);
        uint32_t p = weft_crc32c_portable(0, buf, cut);
        assert_int_equal(weft_crc32c_portable(p, buf + cut, N - cut), whole);
    }
    /* every small length at every alignment, hardware (if any) vs tables */
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 300; len++)
            assert_int_equal(weft_crc32c(7, buf + off, len),
                             weft_crc32c_portable(7, buf + off, len));
    free(buf);
}

/* ------------------------------------------------------------------ */
/* basic replay */

static void test_open_creates_dir_and_journal(void **state)
{
    ctx *c = *state;
    snprintf(c->dir, sizeof c->dir, "%s/a/b/c", c->root);
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_non_null(j);
    assert_int_equal(k.n, 0);
    assert_int_equal(st.snapshot_records, 0);
    assert_int_equal(st.journal_records, 0);
    assert_int_equal(st.truncated_bytes, 0);
    assert_false(st.snapshot_damaged);
    assert_int_equal(reg_journal_size(j), 16);
    reg_journal_close(j);

    size_t len;
    char *h = slurp(path_in(c, "journal"), &len);
    assert_int_equal(len, 16);
    assert_memory_equal(h, "WEFTJNL1", 8);
    assert_int_equal(header_gen(path_in(c, "journal")), 0);
    free(h);
    assert_int_equal(file_size(path_in(c, "snapshot")), -1);
    coll_clear(&k);
}

static void test_append_sync_reopen_in_order(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);

    char *big = malloc(MIB);
    assert_non_null(big);
    for (size_t i = 0; i < MIB; i++)
        big[i] = (char)(i * 31u + 7u);
    append_str(j, "");
    append_str(j, "first");
    assert_int_equal(reg_journal_append(j, big, MIB), 0);
    append_str(j, "");
    append_str(j, "{\"op\":\"register\",\"id\":\"a\"}");
    assert_int_equal(reg_journal_size(j), 16 + 5 * 8 + 5 + MIB + 26);
    assert_int_equal(reg_journal_sync(j), 0);
    assert_int_equal(reg_journal_sync(j), 0); /* nothing pending: a no-op */
    reg_journal_close(j);
    assert_int_equal(file_size(path_in(c, "journal")), 16 + 5 * 8 + 5 + MIB + 26);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 5);
    assert_int_equal(st.journal_records, 5);
    assert_int_equal(st.truncated_bytes, 0);
    assert_rec(&k, 0, "");
    assert_rec(&k, 1, "first");
    assert_int_equal(k.len[2], MIB);
    assert_memory_equal(k.rec[2], big, MIB);
    assert_rec(&k, 3, "");
    assert_rec(&k, 4, "{\"op\":\"register\",\"id\":\"a\"}");

    /* appends continue after the replayed records */
    append_str(j, "after");
    reg_journal_close(j); /* close syncs */
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 6);
    assert_rec(&k, 5, "after");
    reg_journal_close(j);
    coll_clear(&k);
    free(big);
}

static void test_many_records(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    char buf[128];
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    for (unsigned i = 0; i < 10000; i++) {
        size_t n = make_rec(buf, sizeof buf, i);
        assert_int_equal(reg_journal_append(j, buf, n), 0);
        if (i % 1000 == 999)
            assert_int_equal(reg_journal_sync(j), 0);
    }
    reg_journal_close(j);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 10000);
    assert_int_equal(st.journal_records, 10000);
    for (unsigned i = 0; i < 10000; i++) {
        size_t n = make_rec(buf, sizeof buf, i);
        assert_int_equal(k.len[i], n);
        assert_memory_equal(k.rec[i], buf, n);
    }
    reg_journal_close(j);
    coll_clear(&k);
}

static void test_size_counts_framing(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    assert_int_equal(jopen(c, &k, &j, NULL), 0);
    assert_int_equal(reg_journal_size(j), 16);
    append_str(j, "abc");
    assert_int_equal(reg_journal_size(j), 16 + 8 + 3);
    assert_int_equal(reg_journal_sync(j), 0);
    assert_int_equal(reg_journal_size(j), 16 + 8 + 3);
    append_str(j, "");
    assert_int_equal(reg_journal_size(j), 16 + 8 + 3 + 8);
    reg_journal_close(j);
    coll_clear(&k);
}

/* ------------------------------------------------------------------ */
/* torn and corrupt journals */

/* Five records, then "last record, torn somewhere" (30 bytes). Returns the
 * whole file and the offset where the last record's frame starts. */
static char *five_plus_last(ctx *c, size_t *len, size_t *last_off)
{
    coll k = {0};
    reg_journal *j = NULL;
    assert_int_equal(jopen(c, &k, &j, NULL), 0);
    const char *recs[] = {"r0", "", "r2-some-longer-record", "r3", "r4"};
    for (int i = 0; i < 5; i++)
        append_str(j, recs[i]);
    assert_int_equal(reg_journal_sync(j), 0);
    *last_off = (size_t)reg_journal_size(j);
    append_str(j, "last record, torn somewhere...");
    reg_journal_close(j);
    coll_clear(&k);
    return slurp(path_in(c, "journal"), len);
}

static void test_torn_tail_every_offset(void **state)
{
    ctx *c = *state;
    size_t len, last;
    char *full = five_plus_last(c, &len, &last);
    assert_int_equal(len, last + 8 + 30);

    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    for (size_t cut = last; cut < len; cut++) {
        spit(path_in(c, "journal"), full, cut);
        assert_int_equal(jopen(c, &k, &j, &st), 0);
        assert_int_equal(k.n, 5);
        assert_rec(&k, 0, "r0");
        assert_rec(&k, 1, "");
        assert_rec(&k, 4, "r4");
        assert_int_equal(st.journal_records, 5);
        assert_int_equal(st.truncated_bytes, cut - last);
        assert_int_equal(reg_journal_size(j), last);
        assert_int_equal(file_size(path_in(c, "journal")), (off_t)last);

        append_str(j, "after recovery");
        assert_int_equal(reg_journal_sync(j), 0);
        reg_journal_close(j);
        assert_int_equal(jopen(c, &k, &j, &st), 0);
        assert_int_equal(k.n, 6);
        assert_rec(&k, 5, "after recovery");
        assert_int_equal(st.truncated_bytes, 0);
        reg_journal_close(j);
    }
    assert_true(log_contains(c, "torn tail cut"));
    /* a torn tail loses nothing acknowledged: no copy is kept */
    assert_int_equal(count_prefixed(c, "journal.corrupt", NULL, 0), 0);
    coll_clear(&k);
    free(full);
}

static void test_zero_filled_tail_is_not_records(void **state)
{
    ctx *c = *state;
    size_t len, last;
    char *full = five_plus_last(c, &len, &last);
    char *z = calloc(1, len + 4096);
    assert_non_null(z);
    memcpy(z, full, len);
    spit(path_in(c, "journal"), z, len + 4096);

    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 6);
    assert_int_equal(st.truncated_bytes, 4096);
    assert_int_equal(count_prefixed(c, "journal.corrupt", NULL, 0), 0);
    reg_journal_close(j);
    coll_clear(&k);
    free(z);
    free(full);
}

static void test_flipped_byte_in_middle_cuts_rest(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    char buf[128];
    uint64_t off[10];
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    for (unsigned i = 0; i < 10; i++) {
        off[i] = reg_journal_size(j);
        size_t n = make_rec(buf, sizeof buf, i);
        assert_int_equal(reg_journal_append(j, buf, n), 0);
    }
    reg_journal_close(j);

    size_t len;
    char *f = slurp(path_in(c, "journal"), &len);
    f[off[5] + 8 + 3] ^= 0x20; /* a payload byte of record 5 */
    spit(path_in(c, "journal"), f, len);

    /* Corruption in the middle loses everything after it: once a frame is
     * bad, its length cannot be trusted to find the next one. */
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 5);
    for (unsigned i = 0; i < 5; i++) {
        size_t n = make_rec(buf, sizeof buf, i);
        assert_memory_equal(k.rec[i], buf, n);
    }
    assert_int_equal(st.truncated_bytes, len - off[5]);
    assert_int_equal(file_size(path_in(c, "journal")), (off_t)off[5]);
    /* records were dropped: the damaged file is kept for inspection */
    char name[64];
    assert_int_equal(count_prefixed(c, "journal.corrupt-", name, sizeof name), 1);
    assert_int_equal(file_size(path_in(c, name)), (off_t)len);
    assert_true(log_contains(c, "damaged in the middle"));

    append_str(j, "new");
    reg_journal_close(j);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 6);
    assert_rec(&k, 5, "new");
    reg_journal_close(j);
    coll_clear(&k);
    free(f);
}

static void test_bad_length_in_middle(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    append_str(j, "one");
    uint64_t second = reg_journal_size(j);
    append_str(j, "two");
    append_str(j, "three");
    reg_journal_close(j);

    size_t len;
    char *f = slurp(path_in(c, "journal"), &len);
    f[second + 3] = 0x7f; /* length becomes > 16 MiB */
    spit(path_in(c, "journal"), f, len);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 1);
    assert_rec(&k, 0, "one");
    assert_int_equal(st.truncated_bytes, len - second);
    reg_journal_close(j);

    /* a length that still fits but is wrong: the CRC covers it too */
    f[second + 3] = 0;
    f[second] = 2; /* "two" claims 2 bytes */
    spit(path_in(c, "journal"), f, len);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 1);
    assert_int_equal(st.truncated_bytes, len - second);
    reg_journal_close(j);
    coll_clear(&k);
    free(f);
}

static void test_garbage_journal_magic_moved_aside(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(mkdir(c->dir, 0755), 0);
    const char junk[] = "NOTAJRNL\0\0\0\0\0\0\0\0some bytes that are not frames";
    spit(path_in(c, "journal"), junk, sizeof junk);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 0);
    assert_int_equal(st.truncated_bytes, 0);
    char name[64];
    assert_int_equal(count_prefixed(c, "journal.corrupt-", name, sizeof name), 1);
    size_t len;
    char *moved = slurp(path_in(c, name), &len);
    assert_int_equal(len, sizeof junk);
    assert_memory_equal(moved, junk, len);
    free(moved);
    assert_true(log_contains(c, "level=warn"));
    assert_true(log_contains(c, "moved aside"));

    append_str(j, "fresh");
    reg_journal_close(j);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 1);
    assert_rec(&k, 0, "fresh");
    reg_journal_close(j);
    coll_clear(&k);
}

static void test_short_journal_header(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(mkdir(c->dir, 0755), 0);
    spit(path_in(c, "journal"), "WEFTJ", 5);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 0);
    assert_int_equal(count_prefixed(c, "journal.corrupt-", NULL, 0), 1);
    reg_journal_close(j);

    /* an empty file is just re-created: nothing to keep */
    spit(path_in(c, "journal"), "", 0);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(count_prefixed(c, "journal.corrupt-", NULL, 0), 1);
    assert_int_equal(file_size(path_in(c, "journal")), 16);
    reg_journal_close(j);
    coll_clear(&k);
}

/* ------------------------------------------------------------------ */
/* snapshots */

static void test_snapshot_replaces_state(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    append_str(j, "A");
    append_str(j, "B");
    assert_int_equal(reg_journal_sync(j), 0);
    append_str(j, "C"); /* not synced: covered by the snapshot */
    const char *const s1[] = {"X", "Y", NULL};
    emit_list e = {.recs = s1};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    assert_int_equal(reg_journal_size(j), 16);
    append_str(j, "D");
    assert_int_equal(reg_journal_sync(j), 0);
    reg_journal_close(j);
    assert_int_equal(header_gen(path_in(c, "snapshot")), 1);
    assert_int_equal(header_gen(path_in(c, "journal")), 1);
    assert_int_equal(file_size(path_in(c, "snapshot.tmp")), -1);
    assert_int_equal(file_size(path_in(c, "journal.tmp")), -1);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 3);
    assert_rec(&k, 0, "X");
    assert_rec(&k, 1, "Y");
    assert_rec(&k, 2, "D");
    assert_int_equal(st.snapshot_records, 2);
    assert_int_equal(st.journal_records, 1);
    assert_false(st.snapshot_damaged);

    /* a second snapshot, including an empty record */
    const char *const s2[] = {"X", "", "D", NULL};
    e.recs = s2;
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    append_str(j, "E");
    reg_journal_close(j);
    assert_int_equal(header_gen(path_in(c, "snapshot")), 2);
    assert_int_equal(header_gen(path_in(c, "journal")), 2);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 4);
    assert_rec(&k, 0, "X");
    assert_rec(&k, 1, "");
    assert_rec(&k, 2, "D");
    assert_rec(&k, 3, "E");
    assert_int_equal(st.snapshot_records, 3);
    assert_int_equal(st.journal_records, 1);
    reg_journal_close(j);
    coll_clear(&k);
}

static void test_crash_between_snapshot_rename_and_journal_reset(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    append_str(j, "A");
    append_str(j, "B");
    reg_journal_close(j);
    size_t old_len;
    char *old_journal = slurp(path_in(c, "journal"), &old_len);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    const char *const s[] = {"A", "B", NULL};
    emit_list e = {.recs = s};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    reg_journal_close(j);

    /* The state a crash after step 2 (snapshot renamed in) and before step 4
     * (journal replaced) leaves: new snapshot, old journal. */
    spit(path_in(c, "journal"), old_journal, old_len);
    spit(path_in(c, "journal.tmp"), "WEFTJNL1", 8); /* step 3 half done */
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 2); /* not A, B, A, B */
    assert_rec(&k, 0, "A");
    assert_rec(&k, 1, "B");
    assert_int_equal(st.snapshot_records, 2);
    assert_int_equal(st.journal_records, 0);
    assert_false(st.snapshot_damaged);
    assert_true(log_contains(c, "older than the snapshot"));
    assert_int_equal(file_size(path_in(c, "journal.tmp")), -1);
    assert_int_equal(header_gen(path_in(c, "journal")), 1);
    append_str(j, "C");
    reg_journal_close(j);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 3);
    assert_rec(&k, 2, "C");
    reg_journal_close(j);
    coll_clear(&k);
    free(old_journal);
}

static void test_crash_before_snapshot_rename(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    append_str(j, "A");
    reg_journal_close(j);
    /* a half-written snapshot.tmp never became current */
    spit(path_in(c, "snapshot.tmp"), "WEFTSNP1\1\0\0\0\0\0\0\0\3\0\0", 19);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 1);
    assert_rec(&k, 0, "A");
    assert_false(st.snapshot_damaged);
    assert_int_equal(file_size(path_in(c, "snapshot.tmp")), -1);
    reg_journal_close(j);
    coll_clear(&k);
}

static void test_garbage_snapshot_magic(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    const char *const s[] = {"S1", "S2", NULL};
    emit_list e = {.recs = s};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    append_str(j, "J1");
    reg_journal_close(j);

    int fd = open(path_in(c, "snapshot"), O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "GARBAGE!", 8, 0), 8);
    close(fd);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_true(st.snapshot_damaged);
    assert_int_equal(st.snapshot_records, 0);
    assert_int_equal(k.n, 1); /* the journal is still replayed */
    assert_rec(&k, 0, "J1");
    assert_int_equal(count_prefixed(c, "snapshot.corrupt-", NULL, 0), 1);
    assert_int_equal(file_size(path_in(c, "snapshot")), -1);
    assert_true(log_contains(c, "level=error"));

    /* a new snapshot restores a consistent pair */
    const char *const s2[] = {"J1", NULL};
    e.recs = s2;
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    reg_journal_close(j);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_false(st.snapshot_damaged);
    assert_int_equal(k.n, 1);
    assert_int_equal(st.snapshot_records, 1);
    reg_journal_close(j);
    coll_clear(&k);
}

static void test_snapshot_damaged_record_stops_snapshot_replay(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    const char *const s[] = {"S1", "S2", "S3", NULL};
    emit_list e = {.recs = s};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    append_str(j, "J1");
    reg_journal_close(j);

    size_t len;
    char *f = slurp(path_in(c, "snapshot"), &len);
    f[16 + 10 + 8 + 1] ^= 1; /* "S2" -> "S3" */
    spit(path_in(c, "snapshot"), f, len);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_true(st.snapshot_damaged);
    assert_int_equal(st.snapshot_records, 1);
    assert_int_equal(st.journal_records, 1);
    assert_int_equal(k.n, 2);
    assert_rec(&k, 0, "S1");
    assert_rec(&k, 1, "J1");
    assert_true(log_contains(c, "snapshot damaged"));
    /* left in place (the journal builds on it) with a copy kept aside */
    assert_int_equal(file_size(path_in(c, "snapshot")), (off_t)len);
    assert_int_equal(count_prefixed(c, "snapshot.corrupt-", NULL, 0), 1);
    reg_journal_close(j);

    /* reopening reports it again but keeps one copy */
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_true(st.snapshot_damaged);
    assert_int_equal(k.n, 2);
    assert_int_equal(count_prefixed(c, "snapshot.corrupt-", NULL, 0), 1);
    reg_journal_close(j);
    coll_clear(&k);
    free(f);
}

static void test_journal_without_its_snapshot(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    const char *const s[] = {"S1", NULL};
    emit_list e = {.recs = s};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    append_str(j, "J1");
    reg_journal_close(j);
    assert_int_equal(unlink(path_in(c, "snapshot")), 0);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_true(st.snapshot_damaged);
    assert_int_equal(k.n, 1);
    assert_rec(&k, 0, "J1");
    assert_true(log_contains(c, "snapshot it follows is missing"));
    /* the next snapshot's generation is past the journal's */
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0);
    reg_journal_close(j);
    assert_int_equal(header_gen(path_in(c, "snapshot")), 2);
    coll_clear(&k);
}

static void test_emit_error_keeps_old_state(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    append_str(j, "A");
    assert_int_equal(reg_journal_sync(j), 0);
    append_str(j, "B"); /* pending: must survive the failed snapshot */
    const char *const s[] = {"X", NULL};
    emit_list e = {.recs = s, .fail_rc = WEFT_ECANCELED};
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), WEFT_ECANCELED);
    assert_int_equal(file_size(path_in(c, "snapshot")), -1);
    assert_int_equal(file_size(path_in(c, "snapshot.tmp")), -1);
    reg_journal_close(j);
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 2);
    assert_rec(&k, 0, "A");
    assert_rec(&k, 1, "B");
    assert_int_equal(st.snapshot_records, 0);

    /* a record over the limit fails the snapshot even if emit() ignores it */
    char *huge = malloc(16 * MIB + 1);
    assert_non_null(huge);
    memset(huge, 'h', 16 * MIB + 1);
    const char *const s2[] = {"X", huge, NULL};
    e.recs = s2;
    e.fail_rc = 0;
    huge[16 * MIB] = '\0';
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), 0); /* exactly 16 MiB: fine */
    append_str(j, "after-ok");
    huge[16 * MIB] = 'h';
    char *huger = malloc(16 * MIB + 2);
    assert_non_null(huger);
    memcpy(huger, huge, 16 * MIB + 1);
    huger[16 * MIB + 1] = '\0';
    const char *const s3[] = {huger, NULL};
    e.recs = s3;
    assert_int_equal(reg_journal_snapshot(j, emit_strs, &e), WEFT_ETOOBIG);
    reg_journal_close(j);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 3);
    assert_rec(&k, 0, "X");
    assert_int_equal(k.len[1], 16 * MIB);
    assert_rec(&k, 2, "after-ok");
    reg_journal_close(j);
    coll_clear(&k);
    free(huge);
    free(huger);
}

/* kill -9 while appending: recovery keeps at least every acknowledged
 * record (synced before the child reported it), in order, and nothing else
 * but whole records that followed them. */
static void test_kill9_keeps_acknowledged_prefix(void **state)
{
    ctx *c = *state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        coll k = {0};
        reg_journal *j;
        if (reg_journal_open(c->dir, collect, &k, &j, NULL) != 0)
            _exit(1);
        char buf[128];
        for (uint32_t i = 0;; i++) {
            size_t n = make_rec(buf, sizeof buf, i);
            if (reg_journal_append(j, buf, n) != 0)
                _exit(1);
            if (i % 7 == 6) {
                if (reg_journal_sync(j) != 0)
                    _exit(1);
                uint32_t acked = i + 1;
                if (write(p[1], &acked, sizeof acked) != sizeof acked)
                    _exit(1);
            }
        }
    }
    close(p[1]);
    uint32_t acked = 0, v;
    while (acked < 3000 && read(p[0], &v, sizeof v) == sizeof v)
        acked = v;
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    while (read(p[0], &v, sizeof v) == sizeof v) /* acks sent before the kill */
        acked = v;
    close(p[0]);
    assert_true(acked >= 3000);

    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_true(k.n >= acked);
    char buf[128];
    for (uint32_t i = 0; i < k.n; i++) {
        size_t n = make_rec(buf, sizeof buf, i);
        assert_int_equal(k.len[i], n);
        assert_memory_equal(k.rec[i], buf, n);
    }
    reg_journal_close(j);
    coll_clear(&k);
}

/* ------------------------------------------------------------------ */
/* errors and limits */

static void test_replay_error_aborts_open(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    for (int i = 0; i < 5; i++)
        append_str(j, "r");
    append_str(j, "torn");
    reg_journal_close(j);
    off_t size = file_size(path_in(c, "journal"));
    assert_int_equal(truncate(path_in(c, "journal"), size - 2), 0);

    coll_clear(&k);
    k.fail_at = 3;
    k.fail_rc = -42;
    j = NULL;
    assert_int_equal(reg_journal_open(c->dir, collect, &k, &j, &st), -42);
    assert_null(j);
    assert_int_equal(k.n, 2);
    /* nothing was changed on disk: the torn tail is still there */
    assert_int_equal(file_size(path_in(c, "journal")), size - 2);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 5);
    assert_int_equal(st.truncated_bytes, 8 + 4 - 2);
    reg_journal_close(j);
    coll k2 = {.fail_at = 1, .fail_rc = 7}; /* a positive code is returned as is */
    assert_int_equal(reg_journal_open(c->dir, collect, &k2, &j, &st), 7);
    coll_clear(&k);
    coll_clear(&k2);
}

static void test_record_limit(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    char *big = malloc(16 * MIB + 1);
    assert_non_null(big);
    for (size_t i = 0; i < 16 * MIB + 1; i++)
        big[i] = (char)(i ^ (i >> 9));
    assert_int_equal(reg_journal_append(j, big, 16 * MIB + 1), WEFT_ETOOBIG);
    assert_int_equal(reg_journal_size(j), 16);
    assert_int_equal(reg_journal_append(j, big, 16 * MIB), 0);
    assert_int_equal(reg_journal_append(j, big, 16 * MIB), 0);
    assert_int_equal(reg_journal_append(j, big, 16 * MIB), 0); /* buffer full: written out */
    append_str(j, "tail");
    assert_int_equal(reg_journal_append(j, NULL, 0), 0);
    assert_int_equal(reg_journal_append(j, NULL, 1), WEFT_EINVAL);
    reg_journal_close(j);

    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(k.n, 5);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(k.len[i], 16 * MIB);
        assert_memory_equal(k.rec[i], big, 16 * MIB);
    }
    assert_rec(&k, 3, "tail");
    assert_rec(&k, 4, "");
    reg_journal_close(j);
    coll_clear(&k);
    free(big);
}

static void test_open_errors(void **state)
{
    ctx *c = *state;
    coll k = {0};
    reg_journal *j = NULL, *j2 = NULL;
    reg_journal_stats st;
    assert_int_equal(reg_journal_open(NULL, collect, &k, &j, &st), WEFT_EINVAL);
    assert_int_equal(reg_journal_open(c->dir, NULL, &k, &j, &st), WEFT_EINVAL);
    assert_int_equal(reg_journal_open("", collect, &k, &j, &st), WEFT_EINVAL);

    /* one journal per directory at a time */
    assert_int_equal(jopen(c, &k, &j, &st), 0);
    assert_int_equal(reg_journal_open(c->dir, collect, &k, &j2, &st), WEFT_EEXIST);
    assert_null(j2);
    reg_journal_close(j);
    assert_int_equal(jopen(c, &k, &j, NULL), 0);
    reg_journal_close(j);

    /* the directory path is a regular file */
    char file[160];
    snprintf(file, sizeof file, "%s/plainfile", c->root);
    spit(file, "x", 1);
    int rc = reg_journal_open(file, collect, &k, &j2, &st);
    assert_true(rc < 0);
    assert_null(j2);
    snprintf(file, sizeof file, "%s/plainfile/sub", c->root);
    rc = reg_journal_open(file, collect, &k, &j2, &st);
    assert_true(rc < 0);
    assert_true(log_contains(c, "journal: i/o error"));
    coll_clear(&k);
}

static void test_readonly_dir_fails_cleanly(void **state)
{
    ctx *c = *state;
    if (geteuid() == 0)
        skip(); /* root ignores permission bits */
    assert_int_equal(mkdir(c->dir, 0555), 0);
    coll k = {0};
    reg_journal *j = NULL;
    reg_journal_stats st;
    int rc = jopen(c, &k, &j, &st);
    assert_true(rc < 0);
    assert_null(j);
    assert_true(log_contains(c, "journal.tmp"));
    coll_clear(&k);
}

/* ------------------------------------------------------------------ */
/* persist.c on top of the journal */

/* Register svc/id with a lease of ttl_ms through a fresh store. */
static void persist_register(reg_store *s, reg_persist *p, const char *id, uint64_t ttl_ms,
                             uint64_t now)
{
    reg_input in;
    memset(&in, 0, sizeof in);
    in.address = "10.0.0.1";
    in.port = 80;
    in.weight = 1;
    in.status = REG_UP;
    in.ttl_ms = ttl_ms;
    assert_true(reg_put(s, "svc", id, &in, now) > 0);
    reg_persist_put(p, reg_find_mut(s, "svc", id), now);
    assert_int_equal(reg_persist_commit(p, now), 0);
}

/* After a restart the lease is restored to (written deadline + TTL/2); the
 * deadline on disk is still the written one, so a heartbeat that moves the
 * lease half a TTL past it must be journaled, or a second crash restores a
 * deadline earlier than the true one and drops a live client. */
static void test_persist_lease_after_restart_is_rewritten(void **state)
{
    ctx *c = *state;
    reg_store *s = reg_store_new(NULL);
    reg_persist *p = NULL;
    assert_int_equal(reg_persist_open(c->dir, s, 0, &p), 0);
    persist_register(s, p, "a", 10000, 0); /* written deadline: wall now + 10 s */
    reg_persist_close(p);
    reg_store_free(s);

    /* restart; the wall clock has barely moved, so mono 0 ~ the write */
    s = reg_store_new(NULL);
    p = NULL;
    assert_int_equal(reg_persist_open(c->dir, s, 0, &p), 0);
    const reg_instance *in = reg_find(s, "svc", "a");
    assert_non_null(in);
    assert_in_range(in->expires_ms, 14000, 15000); /* written deadline + TTL/2 */
    assert_false(reg_persist_dirty(p));
    /* 5.5 s later (still before the written deadline) a heartbeat moves
     * the true deadline to 15.5 s: past what a restart would restore */
    assert_int_equal(reg_heartbeat(s, "svc", "a", 5500), 0);
    reg_persist_lease(p, reg_find_mut(s, "svc", "a"), 5500);
    assert_true(reg_persist_dirty(p));
    reg_persist_close(p);
    reg_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_check_vectors),
        cmocka_unit_test(test_crc32c_incremental_and_paths_agree),
        cmocka_unit_test_setup_teardown(test_open_creates_dir_and_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_sync_reopen_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_counts_framing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_filled_tail_is_not_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte_in_middle_cuts_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_length_in_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_journal_magic_moved_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_journal_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_replaces_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_between_snapshot_rename_and_journal_reset, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_crash_before_snapshot_rename, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_snapshot_magic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_damaged_record_stops_snapshot_replay, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_journal_without_its_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_emit_error_keeps_old_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_keeps_acknowledged_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_error_aborts_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_dir_fails_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persist_lease_after_restart_is_rewritten, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
