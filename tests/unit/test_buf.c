/*
 * test_buf.c — unit tests for weft_buf (bounded byte buffer) and weft_arena
 * (bump allocator).
 *
 * Every test checks exact off/len/cap values and byte contents. Under the
 * sanitizer build the arena mallocs every object separately (WEFT_DEBUG_ALLOC)
 * so ASan checks each object's bounds and LSan checks that release frees all.
 * Cases that may corrupt memory on a buggy library run in a forked child so a
 * sanitizer abort becomes one failed test instead of ending the whole binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "weft/buf.h"

static void fill_pattern(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)((i * 31u + seed) & 0xff);
}

/* Run fn in a child process; returns the child's exit status (or 128+signal). */
static int run_in_child(int (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn());
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* ------------------------------------------------------------------ */
/* weft_buf */

static void test_buf_init_is_empty(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 12345);
    assert_null(b.data);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_int_equal(b.max, 12345);
    assert_int_equal(weft_buf_used(&b), 0);
    /* a zero-length append allocates nothing */
    assert_int_equal(weft_buf_append(&b, "", 0), 0);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    weft_buf_release(&b);
}

static void test_buf_append_and_consume(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_append(&b, "hello", 5), 0);
    assert_non_null(b.data);
    assert_int_equal(b.cap, 4096);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 5);
    assert_int_equal(weft_buf_append(&b, " world", 6), 0);
    assert_int_equal(b.len, 11);
    assert_int_equal(weft_buf_used(&b), 11);
    assert_memory_equal(weft_buf_rptr(&b), "hello world", 11);
    assert_int_equal(weft_buf_avail(&b), 4096 - 11);

    weft_buf_consume(&b, 6);
    assert_int_equal(b.off, 6);
    assert_int_equal(b.len, 11);
    assert_int_equal(weft_buf_used(&b), 5);
    assert_memory_equal(weft_buf_rptr(&b), "world", 5);

    /* appending after a partial consume keeps the offset (no memmove) */
    assert_int_equal(weft_buf_append(&b, "!", 1), 0);
    assert_int_equal(b.off, 6);
    assert_int_equal(b.len, 12);
    assert_memory_equal(weft_buf_rptr(&b), "world!", 6);
    weft_buf_release(&b);
    assert_null(b.data);
    assert_int_equal(b.off + b.len + b.cap, 0);
}

static void test_buf_consume_all_resets(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_append(&b, "abcdef", 6), 0);
    char *data = b.data;
    weft_buf_consume(&b, 2);
    assert_int_equal(b.off, 2);
    weft_buf_consume(&b, 4);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(weft_buf_used(&b), 0);
    /* the allocation is kept */
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, 4096);

    /* consuming more than is buffered also resets to 0 */
    assert_int_equal(weft_buf_append(&b, "xyz", 3), 0);
    weft_buf_consume(&b, 100);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);

    /* next append starts at the front */
    assert_int_equal(weft_buf_append(&b, "q", 1), 0);
    assert_ptr_equal(weft_buf_rptr(&b), b.data);
    weft_buf_release(&b);
}

static void test_buf_compact_preserves_bytes(void **state)
{
    (void)state;
    char pat[1000];
    fill_pattern(pat, sizeof pat, 7);
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_append(&b, pat, sizeof pat), 0);

    /* compact with off == 0 is a no-op */
    weft_buf_compact(&b);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 1000);

    weft_buf_consume(&b, 300);
    weft_buf_compact(&b);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 700);
    assert_int_equal(b.cap, 4096);
    assert_memory_equal(b.data, pat + 300, 700);
    weft_buf_release(&b);
}

static void test_buf_reserve_doubles_up_to_max(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 65536);
    assert_int_equal(weft_buf_reserve(&b, 1), 0);
    assert_int_equal(b.cap, 4096);
    /* reserve that already fits changes nothing */
    assert_int_equal(weft_buf_reserve(&b, 4096), 0);
    assert_int_equal(b.cap, 4096);

    char *blk = malloc(65536);
    assert_non_null(blk);
    fill_pattern(blk, 65536, 3);
    assert_int_equal(weft_buf_append(&b, blk, 4096), 0);
    assert_int_equal(b.cap, 4096);
    assert_int_equal(weft_buf_reserve(&b, 1), 0);
    assert_int_equal(b.cap, 8192);
    /* used 4096 + 20000 needs 24096: 8192 -> 16384 -> 32768 */
    assert_int_equal(weft_buf_reserve(&b, 20000), 0);
    assert_int_equal(b.cap, 32768);
    assert_int_equal(weft_buf_append(&b, blk + 4096, 32768 - 4096), 0);
    assert_int_equal(b.len, 32768);
    assert_int_equal(weft_buf_reserve(&b, 1), 0);
    assert_int_equal(b.cap, 65536);
    assert_int_equal(weft_buf_append(&b, blk + 32768, 32768), 0);
    assert_int_equal(b.len, 65536);
    assert_int_equal(weft_buf_avail(&b), 0);

    /* at max: one more byte is too big, and nothing changes */
    assert_int_equal(weft_buf_reserve(&b, 1), WEFT_ETOOBIG);
    assert_int_equal(weft_buf_append(&b, "x", 1), WEFT_ETOOBIG);
    assert_int_equal(b.cap, 65536);
    assert_int_equal(b.len, 65536);
    assert_int_equal(b.off, 0);
    assert_memory_equal(b.data, blk, 65536);
    free(blk);
    weft_buf_release(&b);
}

static void test_buf_growth_clamped_to_max(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 10000);
    /* 4096 -> 8192 -> 16384 would overshoot: clamp to max */
    assert_int_equal(weft_buf_reserve(&b, 9000), 0);
    assert_int_equal(b.cap, 10000);
    assert_int_equal(weft_buf_reserve(&b, 10000), 0);
    assert_int_equal(b.cap, 10000);
    assert_int_equal(weft_buf_reserve(&b, 10001), WEFT_ETOOBIG);
    assert_int_equal(b.cap, 10000);
    weft_buf_release(&b);

    /* a max below the initial 4096 allocation */
    weft_buf_init(&b, 100);
    char pat[100];
    fill_pattern(pat, sizeof pat, 1);
    assert_int_equal(weft_buf_append(&b, pat, 10), 0);
    assert_int_equal(b.cap, 100);
    assert_int_equal(weft_buf_append(&b, pat + 10, 90), 0);
    assert_int_equal(b.len, 100);
    assert_int_equal(weft_buf_append(&b, "x", 1), WEFT_ETOOBIG);
    assert_int_equal(b.len, 100);
    assert_memory_equal(b.data, pat, 100);
    weft_buf_release(&b);
}

static void test_buf_reserve_compacts_before_growing(void **state)
{
    (void)state;
    char pat[4096];
    fill_pattern(pat, sizeof pat, 11);
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_append(&b, pat, 4096), 0);
    char *data = b.data;
    weft_buf_consume(&b, 1000);
    /* tail is full but 1000 bytes are free at the front: compact, no growth */
    assert_int_equal(weft_buf_reserve(&b, 500), 0);
    assert_int_equal(b.cap, 4096);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 3096);
    assert_int_equal(weft_buf_avail(&b), 1000);
    assert_memory_equal(b.data, pat + 1000, 3096);

    /* now more than the free space: grow (and compact) */
    weft_buf_consume(&b, 10);
    assert_int_equal(weft_buf_reserve(&b, 2000), 0);
    assert_int_equal(b.cap, 8192);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 3086);
    assert_memory_equal(b.data, pat + 1010, 3086);
    weft_buf_release(&b);
}

static void test_buf_max_counts_unread_bytes_only(void **state)
{
    (void)state;
    char pat[4096];
    fill_pattern(pat, sizeof pat, 5);
    weft_buf b;
    weft_buf_init(&b, 4096);
    assert_int_equal(weft_buf_append(&b, pat, 4096), 0);
    weft_buf_consume(&b, 4000);
    /* 96 unread + 4000 new == max: fits after compaction */
    assert_int_equal(weft_buf_append(&b, pat, 4000), 0);
    assert_int_equal(b.cap, 4096);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 4096);
    assert_memory_equal(b.data, pat + 4000, 96);
    assert_memory_equal(b.data + 96, pat, 4000);
    weft_buf_consume(&b, 1);
    assert_int_equal(weft_buf_append(&b, pat, 2), WEFT_ETOOBIG);
    assert_int_equal(weft_buf_used(&b), 4095);
    weft_buf_release(&b);
}

static void test_buf_reserve_huge_is_too_big(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_append(&b, "0123456789", 10), 0);
    /* used + n wraps around SIZE_MAX: must still be refused, not "reserved" */
    int rc = weft_buf_reserve(&b, SIZE_MAX - 5);
    size_t used = weft_buf_used(&b);
    bool same = used == 10 && memcmp(weft_buf_rptr(&b), "0123456789", 10) == 0;
    weft_buf_release(&b); /* before asserting, so a failure does not leak */
    assert_int_equal(rc, WEFT_ETOOBIG);
    assert_true(same);
}

static void test_buf_commit_and_clear(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    assert_int_equal(weft_buf_reserve(&b, 10), 0);
    memcpy(weft_buf_wptr(&b), "abc", 3);
    weft_buf_commit(&b, 3);
    assert_int_equal(b.len, 3);
    assert_memory_equal(weft_buf_rptr(&b), "abc", 3);
    weft_buf_consume(&b, 1);
    char *data = b.data;
    weft_buf_clear(&b);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, 4096);
    weft_buf_release(&b);
}

static void test_buf_shrink_if_empty(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 1 << 20);
    /* nothing allocated: no-op */
    weft_buf_shrink_if_empty(&b);
    assert_null(b.data);

    assert_int_equal(weft_buf_append(&b, "data", 4), 0);
    weft_buf_shrink_if_empty(&b); /* not empty: kept */
    assert_non_null(b.data);
    assert_int_equal(b.len, 4);
    assert_int_equal(b.cap, 4096);

    weft_buf_consume(&b, 4);
    weft_buf_shrink_if_empty(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 1 << 20);

    /* usable again afterwards */
    assert_int_equal(weft_buf_append(&b, "again", 5), 0);
    assert_int_equal(b.cap, 4096);
    assert_memory_equal(weft_buf_rptr(&b), "again", 5);
    weft_buf_release(&b);
}

static void test_buf_many_small_cycles(void **state)
{
    (void)state;
    /* keep-alive style traffic: append/consume in odd sizes; contents must
     * come out exactly in order and the buffer must never exceed max */
    weft_buf b;
    weft_buf_init(&b, 8192);
    char in[300], out[300];
    unsigned long seq_in = 0, seq_out = 0;
    for (int round = 0; round < 5000; round++) {
        size_t n = (size_t)(round * 7 % 297) + 1;
        for (size_t i = 0; i < n; i++)
            in[i] = (char)(seq_in++ & 0xff);
        assert_int_equal(weft_buf_append(&b, in, n), 0);
        size_t take = weft_buf_used(&b) > 150 ? weft_buf_used(&b) - 100 : 0;
        if (take > sizeof out)
            take = sizeof out;
        memcpy(out, weft_buf_rptr(&b), take);
        for (size_t i = 0; i < take; i++)
            assert_int_equal((unsigned char)out[i], (unsigned char)(seq_out++ & 0xff));
        weft_buf_consume(&b, take);
        assert_true(b.cap <= 8192);
        assert_true(b.off <= b.len && b.len <= b.cap);
    }
    weft_buf_release(&b);
}

/* ------------------------------------------------------------------ */
/* weft_arena */

static void test_arena_init_defaults(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 0, 1000);
    assert_null(a.head);
    assert_int_equal(a.block_size, 4096);
    assert_int_equal(a.max, 1000);
    assert_int_equal(a.total, 0);
    weft_arena_init(&a, 512, 1000);
    assert_int_equal(a.block_size, 512);
    weft_arena_release(&a);
}

static void test_arena_alignment_16(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 256, 1 << 20);
    unsigned char *ptrs[200];
    size_t sizes[200];
    for (int i = 0; i < 200; i++) {
        sizes[i] = (size_t)(i % 37) + 1;
        ptrs[i] = weft_arena_alloc(&a, sizes[i]);
        assert_non_null(ptrs[i]);
        assert_int_equal((uintptr_t)ptrs[i] % 16, 0);
        memset(ptrs[i], i & 0xff, sizes[i]); /* ASan: the whole object is usable */
    }
    /* no object overlaps another */
    for (int i = 0; i < 200; i++)
        for (size_t k = 0; k < sizes[i]; k++)
            assert_int_equal(ptrs[i][k], i & 0xff);
    /* total counts 16-byte rounded sizes */
    size_t expect = 0;
    for (int i = 0; i < 200; i++)
        expect += (sizes[i] + 15) & ~(size_t)15;
    assert_int_equal(a.total, expect);
    weft_arena_release(&a);
    assert_null(a.head);
    assert_int_equal(a.total, 0);
}

static void test_arena_strdup(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 4096, 1 << 20);
    char *s = weft_arena_strdup(&a, "hello world", 5);
    assert_non_null(s);
    assert_string_equal(s, "hello");
    assert_int_equal(strlen(s), 5);
    assert_int_equal((uintptr_t)s % 16, 0);

    char *e = weft_arena_strdup(&a, "ignored", 0);
    assert_non_null(e);
    assert_string_equal(e, "");

    /* embedded NUL bytes are copied as bytes */
    char *z = weft_arena_strdup(&a, "a\0b", 3);
    assert_non_null(z);
    assert_memory_equal(z, "a\0b\0", 4);

    /* a string of exactly 16 bytes needs 17: 32 with rounding */
    size_t before = a.total;
    char *x = weft_arena_strdup(&a, "0123456789abcdef", 16);
    assert_string_equal(x, "0123456789abcdef");
    assert_int_equal(a.total - before, 32);
    weft_arena_release(&a);
}

static void test_arena_max_cap(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 4096, 64);
    for (int i = 0; i < 3; i++)
        assert_non_null(weft_arena_alloc(&a, 16));
    assert_int_equal(a.total, 48);
    assert_null(weft_arena_alloc(&a, 17)); /* 32 more would exceed 64 */
    assert_int_equal(a.total, 48);
    assert_non_null(weft_arena_alloc(&a, 1)); /* rounds to 16: exactly 64 */
    assert_int_equal(a.total, 64);
    assert_null(weft_arena_alloc(&a, 1));
    assert_null(weft_arena_strdup(&a, "x", 1));
    assert_int_equal(a.total, 64);
    assert_null(weft_arena_alloc(&a, 65));
    weft_arena_release(&a);

    weft_arena_init(&a, 4096, 64);
    assert_null(weft_arena_alloc(&a, 65));
    assert_null(weft_arena_alloc(&a, SIZE_MAX));
    assert_null(weft_arena_alloc(&a, SIZE_MAX - 14)); /* rounds past SIZE_MAX */
    assert_int_equal(a.total, 0);
    weft_arena_release(&a);
}

static int child_arena_huge_after_alloc(void)
{
    weft_arena a;
    weft_arena_init(&a, 4096, 1 << 20);
    if (!weft_arena_alloc(&a, 16))
        return 2;
    /* 16 + (SIZE_MAX - 15) wraps to 0 in a naive "total + need > max" check */
    void *p = weft_arena_alloc(&a, SIZE_MAX - 15);
    int rc = p == NULL ? 0 : 1;
    weft_arena_release(&a);
    return rc;
}

static void test_arena_huge_request_after_alloc_fails(void **state)
{
    (void)state;
    /* forked: a buggy arena corrupts the heap here */
    assert_int_equal(run_in_child(child_arena_huge_after_alloc), 0);
}

static void test_arena_reset_and_reuse(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 128, 256);
    for (int i = 0; i < 16; i++)
        assert_non_null(weft_arena_alloc(&a, 16));
    assert_int_equal(a.total, 256);
    assert_null(weft_arena_alloc(&a, 1));

    weft_arena_reset(&a);
    assert_int_equal(a.total, 0);
    /* after reset the full budget is available again */
    char *p[16];
    for (int i = 0; i < 16; i++) {
        p[i] = weft_arena_alloc(&a, 16);
        assert_non_null(p[i]);
        memset(p[i], 'a' + i, 16);
    }
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++)
            assert_int_equal(p[i][k], 'a' + i);
    assert_int_equal(a.total, 256);
    weft_arena_reset(&a);
    weft_arena_reset(&a); /* twice is fine */
    assert_int_equal(a.total, 0);
    /* reset on a never-used arena is fine */
    weft_arena b;
    weft_arena_init(&b, 128, 256);
    weft_arena_reset(&b);
    assert_null(b.head);
    weft_arena_release(&b);
    weft_arena_release(&a);
}

static void test_arena_allocations_larger_than_block(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 64, 1 << 20);
    unsigned char *p[50];
    for (int i = 0; i < 50; i++) {
        size_t n = 1000 + (size_t)i;
        p[i] = weft_arena_alloc(&a, n);
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 16, 0);
        memset(p[i], i, n);
        /* interleave small ones that fit a block */
        char *s = weft_arena_strdup(&a, "small", 5);
        assert_string_equal(s, "small");
    }
    size_t expect = 0;
    for (int i = 0; i < 50; i++)
        expect += ((1000 + (size_t)i + 15) & ~(size_t)15) + 16;
    assert_int_equal(a.total, expect);
    for (int i = 0; i < 50; i++)
        for (size_t k = 0; k < 1000 + (size_t)i; k++)
            assert_int_equal(p[i][k], i);
    weft_arena_reset(&a);
    assert_int_equal(a.total, 0);
    /* a reset arena still serves large and small objects */
    unsigned char *big = weft_arena_alloc(&a, 5000);
    assert_non_null(big);
    memset(big, 0x5a, 5000);
    weft_arena_release(&a);
}

static void test_arena_release_then_reuse(void **state)
{
    (void)state;
    weft_arena a;
    weft_arena_init(&a, 1024, 1 << 20);
    for (int i = 0; i < 100; i++)
        assert_non_null(weft_arena_alloc(&a, (size_t)i * 10 + 1));
    weft_arena_release(&a);
    assert_null(a.head);
    assert_int_equal(a.total, 0);
    assert_int_equal(a.block_size, 1024);
    /* the arena stays usable after release; LSan checks both releases */
    char *s = weft_arena_strdup(&a, "after release", 13);
    assert_string_equal(s, "after release");
    weft_arena_release(&a);
    weft_arena_release(&a); /* idempotent */
    assert_null(a.head);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_init_is_empty),
        cmocka_unit_test(test_buf_append_and_consume),
        cmocka_unit_test(test_buf_consume_all_resets),
        cmocka_unit_test(test_buf_compact_preserves_bytes),
        cmocka_unit_test(test_buf_reserve_doubles_up_to_max),
        cmocka_unit_test(test_buf_growth_clamped_to_max),
        cmocka_unit_test(test_buf_reserve_compacts_before_growing),
        cmocka_unit_test(test_buf_max_counts_unread_bytes_only),
        cmocka_unit_test(test_buf_reserve_huge_is_too_big),
        cmocka_unit_test(test_buf_commit_and_clear),
        cmocka_unit_test(test_buf_shrink_if_empty),
        cmocka_unit_test(test_buf_many_small_cycles),
        cmocka_unit_test(test_arena_init_defaults),
        cmocka_unit_test(test_arena_alignment_16),
        cmocka_unit_test(test_arena_strdup),
        cmocka_unit_test(test_arena_max_cap),
        cmocka_unit_test(test_arena_huge_request_after_alloc_fails),
        cmocka_unit_test(test_arena_reset_and_reuse),
        cmocka_unit_test(test_arena_allocations_larger_than_block),
        cmocka_unit_test(test_arena_release_then_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
