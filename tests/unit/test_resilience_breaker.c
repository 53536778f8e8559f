/*
 * test_resilience_breaker.c — circuit breaker life cycle and Envoy-style
 * passive outlier detection, all on an explicit millisecond clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "weft/resilience.h"

/* ---- breaker ---- */

static void open_breaker(weft_breaker *b, uint64_t now)
{
    for (int i = 0; i < 20; i++)
        weft_breaker_record(b, now, false, 0);
    assert_int_equal(weft_breaker_state(b, now), WEFT_BREAKER_OPEN);
}

static void test_breaker_defaults(void **state)
{
    (void)state;
    weft_breaker_opts o;
    weft_breaker_opts_default(&o);
    assert_int_equal(o.window_ms, 10000);
    assert_int_equal(o.min_requests, 20);
    assert_int_equal(o.error_percent, 50);
    assert_int_equal(o.sleep_ms, 5000);
    assert_int_equal(o.half_open_probes, 1);
    assert_int_equal(o.slow_call_us, 0);
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    assert_int_equal(b.o.min_requests, 20);
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    assert_true(weft_breaker_allow(&b, 0));
    assert_int_equal(b.transitions, 0);
    assert_string_equal(weft_breaker_state_name(WEFT_BREAKER_CLOSED), "closed");
    assert_string_equal(weft_breaker_state_name(WEFT_BREAKER_OPEN), "open");
    assert_string_equal(weft_breaker_state_name(WEFT_BREAKER_HALF_OPEN), "half_open");
    assert_string_equal(weft_breaker_state_name(42), "unknown");
}

static void test_breaker_volume_threshold(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    for (int i = 0; i < 19; i++) {
        assert_true(weft_breaker_allow(&b, 1000));
        weft_breaker_record(&b, 1000, false, 0);
    }
    assert_int_equal(weft_breaker_state(&b, 1000), WEFT_BREAKER_CLOSED);
    weft_breaker_record(&b, 1000, false, 0);
    assert_int_equal(weft_breaker_state(&b, 1000), WEFT_BREAKER_OPEN);
    assert_int_equal(b.transitions, 1);
    assert_int_equal(b.opened_at_ms, 1000);
}

static void test_breaker_error_percent(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    for (int i = 0; i < 11; i++)
        weft_breaker_record(&b, 0, true, 0);
    for (int i = 0; i < 9; i++)
        weft_breaker_record(&b, 0, false, 0);
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED); /* 45 % */
    weft_breaker_record(&b, 0, false, 0);                             /* 10/21 = 47.6 % */
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    weft_breaker_record(&b, 0, false, 0); /* 11/22 = 50 % */
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_OPEN);
}

static void test_breaker_open_blocks_until_sleep(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    open_breaker(&b, 1000);
    for (uint64_t t = 1000; t < 6000; t += 250)
        assert_false(weft_breaker_allow(&b, t));
    assert_false(weft_breaker_allow(&b, 5999));
    /* documented: state() is a pure read and keeps reporting OPEN until allow() */
    assert_int_equal(weft_breaker_state(&b, 7000), WEFT_BREAKER_OPEN);
    assert_int_equal(b.transitions, 1);
    assert_true(weft_breaker_allow(&b, 6000));
    assert_int_equal(weft_breaker_state(&b, 6000), WEFT_BREAKER_HALF_OPEN);
    assert_int_equal(b.transitions, 2);
    assert_false(weft_breaker_allow(&b, 6000)); /* one probe at a time by default */
}

static void test_breaker_half_open_probes(void **state)
{
    (void)state;
    weft_breaker_opts o;
    weft_breaker_opts_default(&o);
    o.half_open_probes = 3;
    weft_breaker b;
    weft_breaker_init(&b, &o);
    open_breaker(&b, 0);
    assert_true(weft_breaker_allow(&b, 5000));
    assert_true(weft_breaker_allow(&b, 5000));
    assert_true(weft_breaker_allow(&b, 5000));
    assert_false(weft_breaker_allow(&b, 5000));
    assert_int_equal(b.probes_out, 3);
    weft_breaker_record(&b, 5001, true, 0);
    assert_int_equal(weft_breaker_state(&b, 5001), WEFT_BREAKER_HALF_OPEN);
    assert_true(weft_breaker_allow(&b, 5001)); /* a slot freed */
    assert_false(weft_breaker_allow(&b, 5001));
    weft_breaker_record(&b, 5002, true, 0);
    assert_int_equal(weft_breaker_state(&b, 5002), WEFT_BREAKER_HALF_OPEN);
    weft_breaker_record(&b, 5003, true, 0); /* third success closes */
    assert_int_equal(weft_breaker_state(&b, 5003), WEFT_BREAKER_CLOSED);
    assert_int_equal(b.transitions, 3);
    uint32_t ok = 9, fail = 9;
    weft_breaker_counts(&b, 5003, &ok, &fail);
    assert_int_equal(ok, 0); /* fresh window */
    assert_int_equal(fail, 0);
    /* the probe still out reports late: a normal closed-state record */
    weft_breaker_record(&b, 5004, false, 0);
    weft_breaker_counts(&b, 5004, &ok, &fail);
    assert_int_equal(fail, 1);
    assert_true(weft_breaker_allow(&b, 5004));
}

static void test_breaker_probe_failure_reopens(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    open_breaker(&b, 0);
    assert_true(weft_breaker_allow(&b, 5000));
    weft_breaker_record(&b, 5200, false, 0);
    assert_int_equal(weft_breaker_state(&b, 5200), WEFT_BREAKER_OPEN);
    assert_int_equal(b.opened_at_ms, 5200);
    assert_int_equal(b.transitions, 3);
    assert_false(weft_breaker_allow(&b, 10199));
    assert_true(weft_breaker_allow(&b, 10200));
    weft_breaker_record(&b, 10300, true, 0);
    assert_int_equal(weft_breaker_state(&b, 10300), WEFT_BREAKER_CLOSED);
    assert_int_equal(b.transitions, 5);
}

static void test_breaker_slow_calls(void **state)
{
    (void)state;
    weft_breaker_opts o;
    weft_breaker_opts_default(&o);
    o.slow_call_us = 1000;
    weft_breaker b;
    weft_breaker_init(&b, &o);
    for (int i = 0; i < 40; i++)
        weft_breaker_record(&b, 0, true, 1000); /* exactly at the threshold: fine */
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    for (int i = 0; i < 39; i++)
        weft_breaker_record(&b, 0, true, 1001);
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    weft_breaker_record(&b, 0, true, 5000000); /* 40 slow of 80 */
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_OPEN);
    /* a slow probe is a failed probe */
    assert_true(weft_breaker_allow(&b, 5000));
    weft_breaker_record(&b, 5000, true, 2000);
    assert_int_equal(weft_breaker_state(&b, 5000), WEFT_BREAKER_OPEN);
}

static void test_breaker_window_rolls(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    for (int i = 0; i < 15; i++)
        weft_breaker_record(&b, 500, false, 0);
    uint32_t ok, fail;
    weft_breaker_counts(&b, 9999, &ok, &fail);
    assert_int_equal(fail, 15);
    weft_breaker_counts(&b, 10000, &ok, &fail); /* the first second left the window */
    assert_int_equal(fail, 0);
    for (int i = 0; i < 10; i++)
        weft_breaker_record(&b, 10000, false, 0);
    assert_int_equal(weft_breaker_state(&b, 10000), WEFT_BREAKER_CLOSED);
    /* and failures inside the window add up */
    weft_breaker_init(&b, NULL);
    for (int i = 0; i < 15; i++)
        weft_breaker_record(&b, 500, false, 0);
    for (int i = 0; i < 4; i++)
        weft_breaker_record(&b, 9999, false, 0);
    assert_int_equal(weft_breaker_state(&b, 9999), WEFT_BREAKER_CLOSED);
    weft_breaker_record(&b, 9999, false, 0);
    assert_int_equal(weft_breaker_state(&b, 9999), WEFT_BREAKER_OPEN);
}

static void test_breaker_release_frees_probe(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    weft_breaker_release(&b); /* closed: no-op */
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    open_breaker(&b, 0);
    weft_breaker_release(&b); /* open: no-op */
    assert_true(weft_breaker_allow(&b, 5000));
    assert_false(weft_breaker_allow(&b, 5000));
    weft_breaker_release(&b);
    assert_int_equal(b.probes_out, 0);
    weft_breaker_release(&b); /* never below zero */
    assert_int_equal(b.probes_out, 0);
    assert_true(weft_breaker_allow(&b, 5001));
    assert_int_equal(weft_breaker_state(&b, 5001), WEFT_BREAKER_HALF_OPEN);
}

static void test_breaker_stragglers_ignored(void **state)
{
    (void)state;
    weft_breaker b;
    weft_breaker_init(&b, NULL);
    open_breaker(&b, 0);
    for (int i = 0; i < 50; i++)
        weft_breaker_record(&b, 100, true, 0); /* admitted before the trip */
    assert_int_equal(weft_breaker_state(&b, 100), WEFT_BREAKER_OPEN);
    assert_int_equal(b.transitions, 1);
    assert_true(weft_breaker_allow(&b, 5000));
    weft_breaker_release(&b);
    weft_breaker_record(&b, 5001, false, 0); /* no probe out: a straggler */
    assert_int_equal(weft_breaker_state(&b, 5001), WEFT_BREAKER_HALF_OPEN);
    assert_int_equal(b.transitions, 2);
}

static void test_breaker_counts_and_opts(void **state)
{
    (void)state;
    weft_breaker_opts o;
    weft_breaker_opts_default(&o);
    o.error_percent = 0; /* means default 50 */
    o.half_open_probes = 0;
    o.window_ms = 0;
    o.min_requests = 4;
    weft_breaker b;
    weft_breaker_init(&b, &o);
    assert_int_equal(b.o.error_percent, 50);
    assert_int_equal(b.o.half_open_probes, 1);
    assert_int_equal(b.o.window_ms, 10000);
    weft_breaker_record(&b, 0, true, 0);
    weft_breaker_record(&b, 0, true, 0);
    weft_breaker_record(&b, 0, true, 0);
    weft_breaker_record(&b, 0, false, 0);
    uint32_t ok = 0, fail = 0;
    weft_breaker_counts(&b, 0, &ok, &fail);
    assert_int_equal(ok, 3);
    assert_int_equal(fail, 1);
    weft_breaker_counts(&b, 0, NULL, NULL);
    o.error_percent = 250; /* capped at 100: only all-failures trips */
    weft_breaker_init(&b, &o);
    assert_int_equal(b.o.error_percent, 100);
    for (int i = 0; i < 3; i++)
        weft_breaker_record(&b, 0, false, 0);
    weft_breaker_record(&b, 0, true, 0);
    weft_breaker_record(&b, 0, false, 0);
    assert_int_equal(weft_breaker_state(&b, 0), WEFT_BREAKER_CLOSED);
    /* NULL is bad input, not a crash */
    assert_false(weft_breaker_allow(NULL, 0));
    weft_breaker_record(NULL, 0, true, 0);
    weft_breaker_release(NULL);
    assert_int_equal(weft_breaker_state(NULL, 0), WEFT_EINVAL);
}

/* ---- outlier ---- */

static void test_outlier_defaults(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    assert_int_equal(o.consecutive_5xx, 5);
    assert_int_equal(o.consecutive_gateway, 5);
    assert_int_equal(o.base_ejection_ms, 30000);
    assert_int_equal(o.max_ejection_ms, 300000);
    assert_int_equal(o.max_ejection_percent, 10);
}

static void test_outlier_consecutive_5xx(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    weft_outlier_host h[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_false(weft_outlier_record(&o, h, 4, 1, WEFT_OUTCOME_5XX, 1000));
    assert_int_equal(h[1].consec_5xx, 4);
    assert_true(weft_outlier_record(&o, h, 4, 1, WEFT_OUTCOME_5XX, 1000));
    assert_int_equal(h[1].ejected_until_ms, 31000);
    assert_int_equal(h[1].times_ejected, 1);
    assert_int_equal(h[1].consec_5xx, 0);
    assert_true(weft_outlier_ejected(&h[1], 30999));
    assert_false(weft_outlier_ejected(&h[1], 31000));
    assert_false(weft_outlier_ejected(&h[0], 1000));
}

static void test_outlier_success_resets(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    weft_outlier_host h[2] = {0};
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 4; i++)
            assert_false(weft_outlier_record(&o, h, 2, 0, WEFT_OUTCOME_5XX, 0));
        assert_false(weft_outlier_record(&o, h, 2, 0, WEFT_OUTCOME_SUCCESS, 0));
        assert_int_equal(h[0].consec_5xx, 0);
        assert_int_equal(h[0].consec_gateway, 0);
    }
    assert_int_equal(h[0].ejected_until_ms, 0);
}

static void test_outlier_ejection_time_grows_and_caps(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    weft_outlier_host h[1] = {0};
    uint64_t now = 0;
    const uint64_t want[] = {30000,  60000,  90000,  120000, 150000, 180000,
                             210000, 240000, 270000, 300000, 300000, 300000};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        bool ej = false;
        for (int i = 0; i < 5; i++)
            ej = weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_5XX, now);
        assert_true(ej);
        assert_int_equal(h[0].ejected_until_ms - now, want[k]);
        assert_int_equal(h[0].times_ejected, k + 1);
        now = h[0].ejected_until_ms;
        assert_int_equal(weft_outlier_tick(h, 1, now), 1);
    }
    /* max 0 means max(300 s, base) */
    o.max_ejection_ms = 0;
    o.base_ejection_ms = 400000;
    weft_outlier_host g[1] = {0};
    for (int i = 0; i < 5; i++)
        weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_5XX, 0);
    assert_int_equal(g[0].ejected_until_ms, 400000);
}

static void test_outlier_max_percent(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    weft_outlier_host h[10] = {0};
    for (int i = 0; i < 5; i++)
        weft_outlier_record(&o, h, 10, 0, WEFT_OUTCOME_5XX, 0);
    assert_true(weft_outlier_ejected(&h[0], 0));
    for (int i = 0; i < 4; i++)
        assert_false(weft_outlier_record(&o, h, 10, 3, WEFT_OUTCOME_5XX, 0));
    assert_false(weft_outlier_record(&o, h, 10, 3, WEFT_OUTCOME_5XX, 0)); /* 10 %: one at a time */
    assert_false(weft_outlier_ejected(&h[3], 0));
    assert_int_equal(h[3].consec_5xx, 5); /* the streak is kept */
    assert_int_equal(weft_outlier_tick(h, 10, 30000), 1);
    assert_true(weft_outlier_record(&o, h, 10, 3, WEFT_OUTCOME_5XX, 30000));
    assert_int_equal(h[3].ejected_until_ms, 60000);

    /* 20 hosts at 10 %: two may be out */
    weft_outlier_host g[20] = {0};
    int ejected = 0;
    for (size_t k = 0; k < 5; k++)
        for (int i = 0; i < 5; i++)
            ejected += weft_outlier_record(&o, g, 20, k, WEFT_OUTCOME_GATEWAY, 0);
    assert_int_equal(ejected, 2);
    /* 3 hosts at 10 % → floor 0, but at least one may always be ejected */
    weft_outlier_host t[3] = {0};
    for (int i = 0; i < 5; i++)
        weft_outlier_record(&o, t, 3, 2, WEFT_OUTCOME_5XX, 0);
    assert_true(weft_outlier_ejected(&t[2], 0));
    o.max_ejection_percent = 100;
    ejected = 0;
    weft_outlier_host u[3] = {0};
    for (size_t k = 0; k < 3; k++)
        for (int i = 0; i < 5; i++)
            ejected += weft_outlier_record(&o, u, 3, k, WEFT_OUTCOME_5XX, 0);
    assert_int_equal(ejected, 3);
}

static void test_outlier_tick(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    o.max_ejection_percent = 100;
    weft_outlier_host h[4] = {0};
    for (int i = 0; i < 5; i++) {
        weft_outlier_record(&o, h, 4, 0, WEFT_OUTCOME_5XX, 0);
        weft_outlier_record(&o, h, 4, 2, WEFT_OUTCOME_5XX, 10000);
    }
    assert_int_equal(weft_outlier_tick(h, 4, 29999), 0);
    assert_false(weft_outlier_ejected(&h[0], 30000)); /* already back, tick or not */
    assert_int_equal(weft_outlier_tick(h, 4, 30000), 1);
    assert_int_equal(h[0].ejected_until_ms, 0);
    assert_int_equal(h[2].ejected_until_ms, 40000);
    assert_int_equal(weft_outlier_tick(h, 4, 30000), 0);
    assert_int_equal(weft_outlier_tick(h, 4, UINT64_MAX), 1);
    assert_int_equal(weft_outlier_tick(NULL, 4, 0), 0);
}

static void test_outlier_gateway_rules(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    o.consecutive_5xx = 0; /* off: only the gateway detector */
    o.consecutive_gateway = 3;
    weft_outlier_host h[1] = {0};
    assert_false(weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_GATEWAY, 0));
    assert_false(weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_CONNECT_FAIL, 0));
    assert_int_equal(h[0].consec_gateway, 2);
    assert_int_equal(h[0].consec_5xx, 2); /* gateway errors feed both streaks */
    assert_false(weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_5XX, 0));
    assert_int_equal(h[0].consec_gateway, 0); /* a plain 5xx breaks the gateway streak */
    assert_int_equal(h[0].consec_5xx, 3);
    for (int i = 0; i < 2; i++)
        assert_false(weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_GATEWAY, 0));
    assert_true(weft_outlier_record(&o, h, 1, 0, WEFT_OUTCOME_CONNECT_FAIL, 0));

    /* 5xx detector alone: gateway errors count toward it too */
    weft_outlier_opts_default(&o);
    o.consecutive_gateway = 0;
    weft_outlier_host g[1] = {0};
    weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_5XX, 0);
    weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_GATEWAY, 0);
    weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_5XX, 0);
    weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_CONNECT_FAIL, 0);
    assert_true(weft_outlier_record(&o, g, 1, 0, WEFT_OUTCOME_GATEWAY, 0));

    /* both off: nothing ever ejects */
    o.consecutive_5xx = 0;
    weft_outlier_host z[1] = {0};
    for (int i = 0; i < 100; i++)
        assert_false(weft_outlier_record(&o, z, 1, 0, WEFT_OUTCOME_GATEWAY, 0));
}

static void test_outlier_ejected_host_not_reejected(void **state)
{
    (void)state;
    weft_outlier_opts o;
    weft_outlier_opts_default(&o);
    weft_outlier_host h[2] = {0};
    for (int i = 0; i < 5; i++)
        weft_outlier_record(&o, h, 2, 0, WEFT_OUTCOME_5XX, 0);
    for (int i = 0; i < 12; i++)
        assert_false(weft_outlier_record(&o, h, 2, 0, WEFT_OUTCOME_5XX, 100));
    assert_int_equal(h[0].consec_5xx, 12); /* recorded */
    assert_int_equal(h[0].times_ejected, 1);
    assert_int_equal(h[0].ejected_until_ms, 30000);
}

static void test_outlier_bad_args(void **state)
{
    (void)state;
    weft_outlier_host h[2] = {0};
    assert_false(weft_outlier_record(NULL, h, 2, 2, WEFT_OUTCOME_5XX, 0));
    assert_false(weft_outlier_record(NULL, NULL, 2, 0, WEFT_OUTCOME_5XX, 0));
    assert_false(weft_outlier_record(NULL, h, 2, 0, 99, 0));
    assert_false(weft_outlier_record(NULL, h, 2, 0, -1, 0));
    assert_int_equal(h[0].consec_5xx, 0);
    /* NULL opts means the defaults */
    bool ej = false;
    for (int i = 0; i < 5; i++)
        ej = weft_outlier_record(NULL, h, 2, 1, WEFT_OUTCOME_5XX, 0);
    assert_true(ej);
    assert_int_equal(h[1].ejected_until_ms, 30000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_defaults),
        cmocka_unit_test(test_breaker_volume_threshold),
        cmocka_unit_test(test_breaker_error_percent),
        cmocka_unit_test(test_breaker_open_blocks_until_sleep),
        cmocka_unit_test(test_breaker_half_open_probes),
        cmocka_unit_test(test_breaker_probe_failure_reopens),
        cmocka_unit_test(test_breaker_slow_calls),
        cmocka_unit_test(test_breaker_window_rolls),
        cmocka_unit_test(test_breaker_release_frees_probe),
        cmocka_unit_test(test_breaker_stragglers_ignored),
        cmocka_unit_test(test_breaker_counts_and_opts),
        cmocka_unit_test(test_outlier_defaults),
        cmocka_unit_test(test_outlier_consecutive_5xx),
        cmocka_unit_test(test_outlier_success_resets),
        cmocka_unit_test(test_outlier_ejection_time_grows_and_caps),
        cmocka_unit_test(test_outlier_max_percent),
        cmocka_unit_test(test_outlier_tick),
        cmocka_unit_test(test_outlier_gateway_rules),
        cmocka_unit_test(test_outlier_ejected_host_not_reejected),
        cmocka_unit_test(test_outlier_bad_args),
    };
    return cmocka_run_group_tests_name("resilience_breaker", tests, NULL, NULL);
}
