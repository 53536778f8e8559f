/*
 * test_resilience_limit.c — keyed token-bucket rate limiter and the
 * Gradient2 adaptive concurrency limit, on explicit clocks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "weft/resilience.h"
#include "resilience/resilience_int.h"

#define assert_near(a, b, eps)                                                                     \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (!(fabs(a_ - b_) <= (eps))) {                                                           \
            print_error("%s = %.9g, expected %s = %.9g (within %g)\n", #a, a_, #b, b_,             \
                        (double)(eps));                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#define SEC 1000000ull

static bool take(weft_ratelimit *rl, const char *key, uint64_t now, weft_ratelimit_info *info)
{
    return weft_ratelimit_take(rl, weft_str_from(key), now, info);
}

static void assert_info(const weft_ratelimit_info *i, uint32_t limit, uint32_t remaining,
                        uint32_t reset_s, uint32_t retry_after_s)
{
    assert_int_equal(i->limit, limit);
    assert_int_equal(i->remaining, remaining);
    assert_int_equal(i->reset_s, reset_s);
    assert_int_equal(i->retry_after_s, retry_after_s);
}

/* ---- rate limiter ---- */

static void test_ratelimit_new_invalid(void **state)
{
    (void)state;
    assert_null(weft_ratelimit_new(0, 10, 10));
    assert_null(weft_ratelimit_new(-1, 10, 10));
    assert_null(weft_ratelimit_new(NAN, 10, 10));
    assert_null(weft_ratelimit_new(INFINITY, 10, 10));
    assert_null(weft_ratelimit_new(1, 0, 10));
    assert_null(weft_ratelimit_new(1, 10, 0));
    weft_ratelimit_free(NULL);
    weft_ratelimit_info info;
    memset(&info, 0xff, sizeof info);
    assert_false(weft_ratelimit_take(NULL, WEFT_STR("k"), 0, &info));
    assert_int_equal(info.limit, 0);
    weft_ratelimit *rl = weft_ratelimit_new(1, 1, 1);
    assert_non_null(rl);
    assert_false(weft_ratelimit_take(rl, (weft_str){NULL, 5}, 0, NULL));
    assert_int_equal(weft_ratelimit_size(rl), 0);
    weft_ratelimit_free(rl);
}

static void test_ratelimit_burst_then_deny(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(1, 5, 100);
    weft_ratelimit_info info;
    for (uint32_t i = 0; i < 5; i++) {
        assert_true(take(rl, "client", 10 * SEC, &info));
        assert_info(&info, 5, 4 - i, i + 1, 0);
    }
    assert_false(take(rl, "client", 10 * SEC, &info));
    assert_info(&info, 5, 0, 5, 1);
    assert_true(take(rl, "client", 10 * SEC, NULL) == false); /* info is optional */
    weft_ratelimit_free(rl);
}

static void test_ratelimit_refill(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(10, 10, 100);
    weft_ratelimit_info info;
    for (int i = 0; i < 10; i++)
        assert_true(take(rl, "k", 0, NULL));
    assert_false(take(rl, "k", 0, &info));
    assert_info(&info, 10, 0, 1, 1);           /* 0.1 s to a token rounds up to 1 s */
    assert_false(take(rl, "k", 50000, &info)); /* half a token */
    assert_true(take(rl, "k", 100000, &info));
    assert_info(&info, 10, 0, 1, 0);
    /* ten refills of 0.1 token make exactly one whole token */
    for (uint64_t t = 110000; t < 200000; t += 10000)
        assert_false(take(rl, "k", t, NULL));
    assert_true(take(rl, "k", 200000, NULL));
    /* a long pause fills the bucket but never beyond burst */
    int ok = 0;
    while (take(rl, "k", 100 * SEC, NULL))
        ok++;
    assert_int_equal(ok, 10);
    weft_ratelimit_free(rl);
}

static void test_ratelimit_info_exact(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(0.5, 3, 100); /* one token per 2 s */
    weft_ratelimit_info info;
    assert_true(take(rl, "k", 0, &info));
    assert_info(&info, 3, 2, 2, 0);
    assert_true(take(rl, "k", 0, &info));
    assert_true(take(rl, "k", 0, &info));
    assert_info(&info, 3, 0, 6, 0);
    assert_false(take(rl, "k", 0, &info));
    assert_info(&info, 3, 0, 6, 2);
    assert_false(take(rl, "k", 1 * SEC, &info)); /* half a token */
    assert_info(&info, 3, 0, 5, 1);
    assert_true(take(rl, "k", 2 * SEC, &info));
    assert_info(&info, 3, 0, 6, 0);
    assert_false(take(rl, "k", 2 * SEC + 1, &info));
    assert_info(&info, 3, 0, 6, 2);
    /* 5 s later: 2.5 tokens → remaining 1 after a take */
    assert_true(take(rl, "k", 7 * SEC, &info));
    assert_info(&info, 3, 1, 3, 0);
    weft_ratelimit_free(rl);
}

static void test_ratelimit_keys_independent(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(1, 2, 100);
    weft_ratelimit_info info;
    assert_true(take(rl, "alice", 0, NULL));
    assert_true(take(rl, "alice", 0, NULL));
    assert_false(take(rl, "alice", 0, NULL));
    assert_true(take(rl, "bob", 0, &info));
    assert_info(&info, 2, 1, 1, 0);
    /* binary keys: embedded NULs and prefixes are distinct keys */
    assert_true(weft_ratelimit_take(rl, WEFT_STR("a\0b"), 0, &info));
    assert_info(&info, 2, 1, 1, 0);
    assert_true(weft_ratelimit_take(rl, WEFT_STR("a\0"), 0, &info));
    assert_info(&info, 2, 1, 1, 0);
    assert_true(weft_ratelimit_take(rl, WEFT_STR("a"), 0, &info));
    assert_info(&info, 2, 1, 1, 0);
    assert_true(weft_ratelimit_take(rl, WEFT_STR(""), 0, &info)); /* the empty key is a key */
    assert_true(weft_ratelimit_take(rl, WEFT_STR(""), 0, &info));
    assert_false(weft_ratelimit_take(rl, WEFT_STR(""), 0, &info));
    assert_int_equal(weft_ratelimit_size(rl), 6);
    weft_ratelimit_free(rl);
}

static void test_ratelimit_lru_bound(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(0.001, 2, 100);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "10.1.%d.%d", i / 256, i % 256);
        assert_true(take(rl, key, 0, NULL));
        assert_true(take(rl, key, 0, NULL));
        assert_false(take(rl, key, 0, NULL));
        assert_true(weft_ratelimit_size(rl) <= 100);
    }
    assert_int_equal(weft_ratelimit_size(rl), 100);
    assert_false(take(rl, "10.1.3.132", 0, NULL)); /* key 900: the oldest kept */
    assert_false(take(rl, "10.1.3.231", 0, NULL)); /* key 999: still remembered */
    weft_ratelimit_info info;
    assert_true(take(rl, "10.1.0.0", 0, &info)); /* forgotten: a full bucket again */
    assert_info(&info, 2, 1, 1000, 0);
    assert_int_equal(weft_ratelimit_size(rl), 100);
    assert_true(take(rl, "10.1.3.133", 0, NULL)); /* key 901 made room for it */
    weft_ratelimit_free(rl);
}

static void test_ratelimit_lru_recency(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(0.001, 1, 10);
    char key[32];
    assert_true(take(rl, "hot", 0, NULL));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "cold-%d", i);
        assert_true(take(rl, key, 0, NULL));
        if (i % 5 == 0)
            assert_false(take(rl, "hot", 0, NULL)); /* touched often: never evicted */
    }
    assert_false(take(rl, "hot", 0, NULL));
    assert_true(take(rl, "cold-0", 0, NULL)); /* evicted long ago */
    weft_ratelimit_free(rl);
}

static void test_ratelimit_recycled_long_keys(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(1, 1, 4);
    char *buf = malloc(3000);
    assert_non_null(buf);
    memset(buf, 'x', 3000);
    for (size_t n = 1; n <= 3000; n += 37) {
        assert_true(weft_ratelimit_take(rl, (weft_str){buf, n}, 0, NULL));
        assert_false(weft_ratelimit_take(rl, (weft_str){buf, n}, 0, NULL));
    }
    /* the last four lengths are remembered, shorter prefixes were recycled */
    assert_false(weft_ratelimit_take(rl, (weft_str){buf, 2998}, 0, NULL));
    assert_true(weft_ratelimit_take(rl, (weft_str){buf, 1}, 0, NULL));
    assert_int_equal(weft_ratelimit_size(rl), 4);
    free(buf);
    weft_ratelimit_free(rl);
}

static void test_ratelimit_clock_backwards(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(1, 1, 10);
    assert_true(take(rl, "k", 10 * SEC, NULL));
    assert_false(take(rl, "k", 5 * SEC, NULL)); /* earlier time: no refill */
    assert_false(take(rl, "k", 10 * SEC + 999999, NULL));
    assert_true(take(rl, "k", 11 * SEC, NULL));
    weft_ratelimit_free(rl);
}

static void test_ratelimit_many_keys_table_growth(void **state)
{
    (void)state;
    weft_ratelimit *rl = weft_ratelimit_new(1, 3, 5000);
    char key[32];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 5000; i++) {
            snprintf(key, sizeof key, "user:%d", i);
            assert_true(take(rl, key, 0, NULL));
        }
    assert_int_equal(weft_ratelimit_size(rl), 5000);
    for (int i = 0; i < 5000; i += 97) {
        snprintf(key, sizeof key, "user:%d", i);
        assert_false(take(rl, key, 0, NULL)); /* each found again after rehashing */
    }
    weft_ratelimit_free(rl);
}

/* ---- adaptive concurrency ---- */

static void fill(weft_adaptive *a)
{
    while (weft_adaptive_acquire(a))
        ;
}

static void test_adaptive_defaults_and_sanitize(void **state)
{
    (void)state;
    weft_adaptive_opts o;
    weft_adaptive_opts_default(&o);
    assert_int_equal(o.initial_limit, 20);
    assert_int_equal(o.min_limit, 5);
    assert_int_equal(o.max_limit, 1000);
    assert_near(o.smoothing, 0.2, 0);
    assert_int_equal(o.queue_size, 4);
    assert_int_equal(o.long_window, 600);
    weft_adaptive a;
    weft_adaptive_init(&a, NULL);
    assert_int_equal(weft_adaptive_limit(&a), 20);
    memset(&o, 0, sizeof o);
    weft_adaptive_init(&a, &o);
    assert_int_equal(a.o.min_limit, 5);
    assert_int_equal(a.o.max_limit, 1000);
    assert_int_equal(a.o.long_window, 600);
    assert_near(a.o.smoothing, 0.2, 0);
    assert_int_equal(weft_adaptive_limit(&a), 20);
    o = (weft_adaptive_opts){
        .initial_limit = 500, .min_limit = 50, .max_limit = 10, .smoothing = 3.0};
    weft_adaptive_init(&a, &o);
    assert_int_equal(a.o.max_limit, 50);
    assert_int_equal(weft_adaptive_limit(&a), 50);
    assert_near(a.o.smoothing, 0.2, 0);
    assert_false(weft_adaptive_acquire(NULL));
    weft_adaptive_release(NULL, 1, false);
    weft_adaptive_init(NULL, NULL);
}

static void test_adaptive_acquire_denies_at_limit(void **state)
{
    (void)state;
    weft_adaptive a;
    weft_adaptive_init(&a, NULL);
    for (int i = 0; i < 20; i++)
        assert_true(weft_adaptive_acquire(&a));
    assert_false(weft_adaptive_acquire(&a));
    assert_int_equal(a.inflight, 20);
    weft_adaptive_release(&a, 1000, false);
    assert_true(weft_adaptive_acquire(&a));
    assert_false(weft_adaptive_acquire(&a));
    for (int i = 0; i < 100; i++) /* releases never drive inflight below 0 */
        weft_adaptive_release(&a, 1000, false);
    assert_int_equal(a.inflight, 0);
}

static void test_adaptive_grows_under_steady_rtt(void **state)
{
    (void)state;
    weft_adaptive_opts o;
    weft_adaptive_opts_default(&o);
    o.max_limit = 200;
    weft_adaptive a;
    weft_adaptive_init(&a, &o);
    for (int i = 0; i < 100; i++) {
        fill(&a);
        double before = a.limit;
        weft_adaptive_release(&a, 1000, false);
        assert_near(a.limit, before + 0.8, 1e-9); /* 0.8·L + 0.2·(L + 4) */
    }
    assert_near(a.limit, 100.0, 1e-6);
    for (int i = 0; i < 1000; i++) {
        fill(&a);
        weft_adaptive_release(&a, 1000, false);
        assert_true(a.limit <= 200.0);
    }
    assert_int_equal(weft_adaptive_limit(&a), 200); /* pinned at max */
    assert_int_equal(a.samples, 1100);
}

static void test_adaptive_app_limited_no_growth(void **state)
{
    (void)state;
    weft_adaptive a;
    weft_adaptive_init(&a, NULL);
    for (int i = 0; i < 500; i++) {
        assert_true(weft_adaptive_acquire(&a));
        weft_adaptive_release(&a, 1000, false);
    }
    assert_near(a.limit, 20.0, 0);
    /* app-limited yet latency triples: shrinking is still allowed */
    assert_true(weft_adaptive_acquire(&a));
    weft_adaptive_release(&a, 3000, false);
    assert_true(a.limit < 20.0);
}

static void test_adaptive_shrinks_when_rtt_rises(void **state)
{
    (void)state;
    weft_adaptive a;
    weft_adaptive_init(&a, NULL);
    for (int i = 0; i < 100; i++) {
        fill(&a);
        weft_adaptive_release(&a, 1000, false);
    }
    double l0 = a.limit;
    assert_near(l0, 100.0, 1e-6);
    for (int i = 0; i < 20; i++) {
        fill(&a);
        double before = a.limit;
        weft_adaptive_release(&a, 3000, false); /* queueing: 3x the no-load RTT */
        assert_true(a.limit < before);
    }
    assert_true(a.limit < 0.5 * l0);
    /* the first step is exactly 0.8·L + 0.2·(L·g + 4), g = 1.5·long/short */
    weft_adaptive b;
    weft_adaptive_init(&b, NULL);
    fill(&b);
    weft_adaptive_release(&b, 1000, false); /* long = 1000, limit 20.8 */
    fill(&b);
    weft_adaptive_release(&b, 3000, false);
    double lng = 1000 + 2000 * 2.0 / 601.0;
    double g = 1.5 * lng / 3000;
    assert_near(b.long_rtt, lng, 1e-9);
    assert_near(b.limit, 0.8 * 20.8 + 0.2 * (20.8 * g + 4), 1e-9);
}

static void test_adaptive_bounds(void **state)
{
    (void)state;
    weft_adaptive_opts o;
    weft_adaptive_opts_default(&o);
    o.min_limit = 10;
    o.max_limit = 50;
    weft_adaptive a;
    weft_adaptive_init(&a, &o);
    for (int i = 0; i < 300; i++) {
        fill(&a);
        weft_adaptive_release(&a, 1000, true); /* drops: gradient 0.5 */
        assert_true(a.limit >= 10.0);
    }
    assert_near(a.limit, 10.0, 0); /* fixed point 8 is below min: clamped */
    for (int i = 0; i < 300; i++) {
        fill(&a);
        weft_adaptive_release(&a, 1000, false);
        assert_true(a.limit <= 50.0);
    }
    assert_near(a.limit, 50.0, 0);
    /* no headroom: drops drive the limit all the way to min */
    o.queue_size = 0;
    o.min_limit = 5;
    weft_adaptive_init(&a, &o);
    for (int i = 0; i < 300; i++) {
        fill(&a);
        weft_adaptive_release(&a, 0, true); /* RTT 0 counts as 1 µs */
    }
    assert_int_equal(weft_adaptive_limit(&a), 5);
}

static void test_adaptive_long_rtt_drift_recovery(void **state)
{
    (void)state;
    weft_adaptive a;
    weft_adaptive_init(&a, NULL);
    for (int i = 0; i < 5; i++)
        weft_adaptive_release(&a, 10000, false);
    assert_near(a.long_rtt, 10000.0, 1e-9);
    weft_adaptive_release(&a, 1000, false);
    double want = (10000 + (1000 - 10000) * 2.0 / 601.0) * 0.95;
    assert_near(a.long_rtt, want, 1e-9);
    assert_near(a.short_rtt, 1000.0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ratelimit_new_invalid),
        cmocka_unit_test(test_ratelimit_burst_then_deny),
        cmocka_unit_test(test_ratelimit_refill),
        cmocka_unit_test(test_ratelimit_info_exact),
        cmocka_unit_test(test_ratelimit_keys_independent),
        cmocka_unit_test(test_ratelimit_lru_bound),
        cmocka_unit_test(test_ratelimit_lru_recency),
        cmocka_unit_test(test_ratelimit_recycled_long_keys),
        cmocka_unit_test(test_ratelimit_clock_backwards),
        cmocka_unit_test(test_ratelimit_many_keys_table_growth),
        cmocka_unit_test(test_adaptive_defaults_and_sanitize),
        cmocka_unit_test(test_adaptive_acquire_denies_at_limit),
        cmocka_unit_test(test_adaptive_grows_under_steady_rtt),
        cmocka_unit_test(test_adaptive_app_limited_no_growth),
        cmocka_unit_test(test_adaptive_shrinks_when_rtt_rises),
        cmocka_unit_test(test_adaptive_bounds),
        cmocka_unit_test(test_adaptive_long_rtt_drift_recovery),
    };
    return cmocka_run_group_tests_name("resilience_limit", tests, NULL, NULL);
}
