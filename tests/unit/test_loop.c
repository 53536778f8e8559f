/*
 * test_loop.c — unit tests for the event loop: timers (heap order, stop,
 * re-arm, callbacks that start/stop timers, a 10,000-timer stress), fd
 * watchers on socketpairs and pipes, cross-thread posts, stop_async and the
 * cached clock.
 *
 * Every test that runs a loop arms a guard timer that stops it, so a broken
 * loop makes the test fail in bounded time instead of hanging. Callbacks
 * record what they see; the assertions run after weft_loop_run returns, on
 * the test's own thread (cmocka cannot report failures from other threads).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "weft/loop.h"

#define GUARD_MS 3000

/* ------------------------------------------------------------------ */
/* helpers */

typedef struct guard {
    weft_timer t;
    bool fired;
} guard;

static void guard_cb(weft_loop *loop, weft_timer *t)
{
    guard *g = t->data;
    g->fired = true;
    weft_loop_stop(loop);
}

static void guard_start(weft_loop *loop, guard *g, uint64_t ms)
{
    g->fired = false;
    weft_timer_init(&g->t, guard_cb, g);
    weft_timer_start(loop, &g->t, ms);
}

static weft_loop *new_loop(void)
{
    weft_loop *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    assert_non_null(loop);
    return loop;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void busy_wait_us(uint64_t us)
{
    uint64_t end = weft_now_us() + us;
    while (weft_now_us() < end) {
    }
}

static uint32_t rng_state = 12345;
static uint32_t rng(void)
{
    /* xorshift32: deterministic across runs */
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

static void make_socketpair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

/* ------------------------------------------------------------------ */
/* basics */

static void test_loop_new_free_basics(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    assert_int_equal(weft_loop_timer_count(loop), 0);
    assert_null(weft_loop_current());
    assert_int_equal(weft_loop_index(loop), 0);
    assert_null(weft_loop_data(loop));
    int x;
    weft_loop_set_data(loop, &x);
    assert_ptr_equal(weft_loop_data(loop), &x);
    /* the clock is initialised at creation */
    uint64_t us = weft_loop_now_us(loop);
    assert_true(us > 0);
    assert_int_equal(weft_loop_now_ms(loop), us / 1000);
    assert_true(us <= weft_now_us());
    int64_t wall = weft_loop_wall_s(loop);
    int64_t now = (int64_t)time(NULL);
    assert_true(wall <= now && wall >= now - 2);
    weft_loop_free(loop);
    weft_loop_free(NULL); /* no-op */
}

/* ------------------------------------------------------------------ */
/* timers */

typedef struct order_ctx {
    int order[64];
    uint64_t fired_at[64];
    int n, want;
} order_ctx;

typedef struct order_timer {
    weft_timer t;
    int id;
    order_ctx *ctx;
} order_timer;

static void order_cb(weft_loop *loop, weft_timer *t)
{
    order_timer *ot = t->data;
    order_ctx *c = ot->ctx;
    if (c->n < 64) {
        c->fired_at[c->n] = weft_loop_now_ms(loop);
        c->order[c->n] = ot->id;
    }
    c->n++;
    if (c->n == c->want)
        weft_loop_stop(loop);
}

static void test_timers_fire_in_deadline_order(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    order_ctx ctx = {.want = 50};
    order_timer ts[50];
    int delays[50];
    for (int i = 0; i < 50; i++)
        delays[i] = i;
    rng_state = 777;
    for (int i = 49; i > 0; i--) {
        int j = (int)(rng() % (uint32_t)(i + 1));
        int tmp = delays[i];
        delays[i] = delays[j];
        delays[j] = tmp;
    }
    uint64_t start = weft_loop_now_ms(loop);
    for (int i = 0; i < 50; i++) {
        ts[i].id = delays[i];
        ts[i].ctx = &ctx;
        weft_timer_init(&ts[i].t, order_cb, &ts[i]);
        weft_timer_start(loop, &ts[i].t, (uint64_t)delays[i]);
        assert_true(weft_timer_active(&ts[i].t));
        assert_int_equal(ts[i].t.deadline_ms, start + (uint64_t)delays[i]);
    }
    assert_int_equal(weft_loop_timer_count(loop), 50);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(ctx.n, 50);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(ctx.order[i], i);
        assert_true(ctx.fired_at[i] >= start + (uint64_t)i); /* never early */
        assert_false(weft_timer_active(&ts[i].t));
    }
    weft_timer_stop(loop, &g.t);
    assert_int_equal(weft_loop_timer_count(loop), 0);
    weft_loop_free(loop);
}

typedef struct count_timer {
    weft_timer t;
    int fired;
    uint64_t at_ms;
    bool stop_loop;
} count_timer;

static void count_cb(weft_loop *loop, weft_timer *t)
{
    count_timer *c = t->data;
    c->fired++;
    c->at_ms = weft_loop_now_ms(loop);
    if (c->stop_loop)
        weft_loop_stop(loop);
}

static void count_timer_init(count_timer *c, bool stop_loop)
{
    memset(c, 0, sizeof *c);
    c->stop_loop = stop_loop;
    weft_timer_init(&c->t, count_cb, c);
}

static void test_timer_stop_before_fire(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    count_timer a, end;
    count_timer_init(&a, false);
    count_timer_init(&end, true);
    weft_timer_start(loop, &a.t, 10);
    weft_timer_start(loop, &end.t, 40);
    assert_int_equal(weft_loop_timer_count(loop), 2);
    weft_timer_stop(loop, &a.t);
    assert_false(weft_timer_active(&a.t));
    assert_int_equal(weft_loop_timer_count(loop), 1);
    weft_timer_stop(loop, &a.t); /* stopping twice is harmless */
    assert_int_equal(weft_loop_timer_count(loop), 1);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(a.fired, 0);
    assert_int_equal(end.fired, 1);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

typedef struct seq_ctx {
    char seq[16];
    int n;
} seq_ctx;

typedef struct seq_timer {
    weft_timer t;
    char name;
    seq_ctx *ctx;
    int fired;
    uint64_t at_ms;
} seq_timer;

static void seq_cb(weft_loop *loop, weft_timer *t)
{
    seq_timer *s = t->data;
    s->fired++;
    s->at_ms = weft_loop_now_ms(loop);
    if (s->ctx->n < 15)
        s->ctx->seq[s->ctx->n++] = s->name;
    if (s->ctx->n == 2)
        weft_loop_stop(loop);
}

static void seq_timer_init(seq_timer *s, char name, seq_ctx *ctx)
{
    memset(s, 0, sizeof *s);
    s->name = name;
    s->ctx = ctx;
    weft_timer_init(&s->t, seq_cb, s);
}

static void test_timer_restart_earlier(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    seq_ctx ctx = {{0}, 0};
    seq_timer a, b;
    seq_timer_init(&a, 'A', &ctx);
    seq_timer_init(&b, 'B', &ctx);
    uint64_t start = weft_loop_now_ms(loop);
    weft_timer_start(loop, &a.t, 500);
    weft_timer_start(loop, &b.t, 60);
    weft_timer_start(loop, &a.t, 10); /* move A before B */
    assert_int_equal(weft_loop_timer_count(loop), 2);
    assert_int_equal(a.t.deadline_ms, start + 10);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_string_equal(ctx.seq, "AB");
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    assert_true(a.at_ms < start + 500);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

static void test_timer_restart_later(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    seq_ctx ctx = {{0}, 0};
    seq_timer a, b;
    seq_timer_init(&a, 'A', &ctx);
    seq_timer_init(&b, 'B', &ctx);
    uint64_t start = weft_loop_now_ms(loop);
    weft_timer_start(loop, &a.t, 5);
    weft_timer_start(loop, &b.t, 30);
    weft_timer_start(loop, &a.t, 80); /* move A after B */
    assert_int_equal(weft_loop_timer_count(loop), 2);
    assert_int_equal(a.t.deadline_ms, start + 80);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_string_equal(ctx.seq, "BA");
    assert_int_equal(a.fired, 1);
    assert_true(a.at_ms >= start + 80);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

/* Each of two timers due in the same wake-up stops the other: exactly one runs. */
typedef struct pair_timer {
    weft_timer t;
    struct pair_timer *other;
    int fired;
} pair_timer;

static void pair_cb(weft_loop *loop, weft_timer *t)
{
    pair_timer *p = t->data;
    p->fired++;
    weft_timer_stop(loop, &p->other->t);
}

static void test_timer_stop_from_other_callback(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    /* A fires at 10 ms and stops B (due at 40 ms) */
    pair_timer a, b;
    a.other = &b;
    b.other = &a;
    a.fired = b.fired = 0;
    weft_timer_init(&a.t, pair_cb, &a);
    weft_timer_init(&b.t, pair_cb, &b);
    weft_timer_start(loop, &a.t, 10);
    weft_timer_start(loop, &b.t, 40);
    count_timer end;
    count_timer_init(&end, true);
    weft_timer_start(loop, &end.t, 80);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 0);
    assert_false(weft_timer_active(&b.t));

    /* both already due when the loop wakes: whichever runs first cancels the other */
    pair_timer c, d;
    c.other = &d;
    d.other = &c;
    c.fired = d.fired = 0;
    weft_timer_init(&c.t, pair_cb, &c);
    weft_timer_init(&d.t, pair_cb, &d);
    weft_timer_start(loop, &c.t, 0);
    weft_timer_start(loop, &d.t, 1);
    count_timer_init(&end, true);
    weft_timer_start(loop, &end.t, 30);
    busy_wait_us(3000);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(c.fired + d.fired, 1);
    assert_int_equal(c.fired, 1); /* earlier deadline first */
    weft_timer_stop(loop, &g.t);
    assert_int_equal(weft_loop_timer_count(loop), 0);
    weft_loop_free(loop);
}

typedef struct spawn_ctx {
    weft_timer a, b;
    int a_fired, b_fired;
    uint64_t a_first_ms, b_ms;
} spawn_ctx;

static void spawn_b_cb(weft_loop *loop, weft_timer *t)
{
    spawn_ctx *s = t->data;
    s->b_fired++;
    s->b_ms = weft_loop_now_ms(loop);
    weft_loop_stop(loop);
}

static void spawn_a_cb(weft_loop *loop, weft_timer *t)
{
    spawn_ctx *s = t->data;
    if (s->a_fired++ == 0) {
        s->a_first_ms = weft_loop_now_ms(loop);
        weft_timer_start(loop, &s->b, 20); /* start another timer */
    }
    if (s->a_fired < 3)
        weft_timer_start(loop, t, 1); /* re-arm itself */
}

static void test_timer_start_from_callback(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    spawn_ctx s;
    memset(&s, 0, sizeof s);
    weft_timer_init(&s.a, spawn_a_cb, &s);
    weft_timer_init(&s.b, spawn_b_cb, &s);
    weft_timer_start(loop, &s.a, 5);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(s.a_fired, 3);
    assert_int_equal(s.b_fired, 1);
    assert_true(s.b_ms >= s.a_first_ms + 20);
    assert_false(weft_timer_active(&s.a));
    assert_false(weft_timer_active(&s.b));
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

typedef struct rearm0 {
    weft_timer t;
    int n;
} rearm0;

static void rearm0_cb(weft_loop *loop, weft_timer *t)
{
    rearm0 *r = t->data;
    if (++r->n < 200)
        weft_timer_start(loop, t, 0);
    else
        weft_loop_stop(loop);
}

static void test_timer_rearm_zero_does_not_starve(void **state)
{
    (void)state;
    /* a timer re-armed for "now" from its own callback runs once per
     * wake-up: it neither spins inside run_timers nor gets lost */
    weft_loop *loop = new_loop();
    rearm0 r = {.n = 0};
    weft_timer_init(&r.t, rearm0_cb, &r);
    weft_timer_start(loop, &r.t, 0);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(r.n, 200);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

#define NSTRESS 10000

typedef struct stress_ctx {
    uint64_t last_deadline;
    int fired, fired_cancelled, out_of_order, double_fire, remaining;
} stress_ctx;

typedef struct stress_timer {
    weft_timer t;
    stress_ctx *ctx;
    bool cancelled;
    int fired;
} stress_timer;

static void stress_cb(weft_loop *loop, weft_timer *t)
{
    stress_timer *s = t->data;
    stress_ctx *c = s->ctx;
    if (s->cancelled)
        c->fired_cancelled++;
    if (s->fired++)
        c->double_fire++;
    if (t->deadline_ms < c->last_deadline)
        c->out_of_order++;
    c->last_deadline = t->deadline_ms;
    c->fired++;
    if (--c->remaining == 0)
        weft_loop_stop(loop);
}

static void test_timers_10000_half_cancelled(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    stress_timer *ts = calloc(NSTRESS, sizeof *ts);
    assert_non_null(ts);
    stress_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    rng_state = 4242;
    for (int i = 0; i < NSTRESS; i++) {
        ts[i].ctx = &ctx;
        weft_timer_init(&ts[i].t, stress_cb, &ts[i]);
        weft_timer_start(loop, &ts[i].t, rng() % 40);
    }
    assert_int_equal(weft_loop_timer_count(loop), NSTRESS);
    /* re-arm a quarter to different delays (moves inside the heap) */
    for (int i = 0; i < NSTRESS; i += 4)
        weft_timer_start(loop, &ts[i].t, rng() % 40);
    assert_int_equal(weft_loop_timer_count(loop), NSTRESS);
    /* cancel a random half */
    int cancelled = 0;
    for (int i = 0; i < NSTRESS; i++) {
        if (rng() & 1) {
            ts[i].cancelled = true;
            weft_timer_stop(loop, &ts[i].t);
            cancelled++;
        }
    }
    /* and cancel some of them again */
    for (int i = 0; i < NSTRESS; i += 7)
        if (ts[i].cancelled)
            weft_timer_stop(loop, &ts[i].t);
    size_t live = (size_t)(NSTRESS - cancelled);
    assert_true(cancelled > NSTRESS / 3 && cancelled < 2 * NSTRESS / 3);
    assert_int_equal(weft_loop_timer_count(loop), live);
    /* every live timer knows a valid heap slot, every cancelled one is inactive */
    for (int i = 0; i < NSTRESS; i++) {
        if (ts[i].cancelled)
            assert_int_equal(ts[i].t.heap_idx, 0);
        else
            assert_in_range(ts[i].t.heap_idx, 1, live);
    }
    ctx.remaining = (int)live;
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(ctx.fired, (int)live);
    assert_int_equal(ctx.fired_cancelled, 0);
    assert_int_equal(ctx.double_fire, 0);
    assert_int_equal(ctx.out_of_order, 0);
    for (int i = 0; i < NSTRESS; i++) {
        assert_int_equal(ts[i].fired, ts[i].cancelled ? 0 : 1);
        assert_false(weft_timer_active(&ts[i].t));
    }
    weft_timer_stop(loop, &g.t);
    assert_int_equal(weft_loop_timer_count(loop), 0);
    weft_loop_free(loop);
    free(ts);
}

static void test_timer_count_and_active(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    weft_timer t[3];
    for (int i = 0; i < 3; i++) {
        weft_timer_init(&t[i], NULL, NULL);
        assert_false(weft_timer_active(&t[i]));
        weft_timer_start(loop, &t[i], 1000 + (uint64_t)i);
        assert_true(weft_timer_active(&t[i]));
    }
    assert_int_equal(weft_loop_timer_count(loop), 3);
    weft_timer_start(loop, &t[1], 5000); /* re-start moves, does not add */
    weft_timer_start(loop, &t[1], 5000); /* same deadline: nothing to do */
    assert_int_equal(weft_loop_timer_count(loop), 3);
    weft_timer_stop(loop, &t[0]);
    assert_int_equal(weft_loop_timer_count(loop), 2);
    weft_timer_stop(loop, &t[2]);
    weft_timer_stop(loop, &t[1]);
    assert_int_equal(weft_loop_timer_count(loop), 0);
    for (int i = 0; i < 3; i++)
        assert_false(weft_timer_active(&t[i]));
    weft_loop_free(loop);
}

static void test_timer_huge_delay_never_fires(void **state)
{
    (void)state;
    /* "practically never": now + UINT64_MAX must not wrap into the past */
    weft_loop *loop = new_loop();
    count_timer never, end;
    count_timer_init(&never, false);
    count_timer_init(&end, true);
    weft_timer_start(loop, &never.t, UINT64_MAX);
    weft_timer_start(loop, &end.t, 30);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    int fired = never.fired;
    bool active = weft_timer_active(&never.t);
    weft_timer_stop(loop, &never.t);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    assert_int_equal(end.fired, 1);
    assert_int_equal(fired, 0);
    assert_true(active);
}

/* ------------------------------------------------------------------ */
/* the cached clock */

typedef struct clock_ctx {
    weft_timer t;
    int n;
    uint64_t us_a, us_b, us_c, ms_b;
    uint64_t ms_seen[5];
    weft_loop *cur;
} clock_ctx;

static void clock_cb(weft_loop *loop, weft_timer *t)
{
    clock_ctx *c = t->data;
    if (c->n == 0) {
        c->cur = weft_loop_current();
        c->us_a = weft_loop_now_us(loop);
        busy_wait_us(3000);
        c->us_b = weft_loop_now_us(loop); /* cached: unchanged */
        c->ms_b = weft_loop_now_ms(loop);
        weft_loop_update_time(loop);
        c->us_c = weft_loop_now_us(loop);
    }
    c->ms_seen[c->n] = weft_loop_now_ms(loop);
    if (++c->n < 5)
        weft_timer_start(loop, t, 2);
    else
        weft_loop_stop(loop);
}

static void test_now_cached_and_monotonic(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    clock_ctx c;
    memset(&c, 0, sizeof c);
    weft_timer_init(&c.t, clock_cb, &c);
    weft_timer_start(loop, &c.t, 1);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_ptr_equal(c.cur, loop);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.us_a, c.us_b);
    assert_int_equal(c.ms_b, c.us_a / 1000);
    assert_true(c.us_c >= c.us_a + 3000);
    for (int i = 1; i < 5; i++)
        assert_true(c.ms_seen[i] >= c.ms_seen[i - 1] + 2);
    /* uncached clock runs ahead of (or equal to) the cached one */
    assert_true(weft_now_us() >= weft_loop_now_us(loop));
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

static void test_loop_current_cleared_after_run(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    clock_ctx c;
    memset(&c, 0, sizeof c);
    c.n = 4; /* record once, then stop */
    weft_timer_init(&c.t, clock_cb, &c);
    weft_timer_start(loop, &c.t, 0);
    assert_null(weft_loop_current());
    assert_int_equal(weft_loop_run(loop), 0);
    weft_loop *after = weft_loop_current();
    weft_loop_free(loop);
    /* header: "The loop running on the calling thread, or NULL" */
    assert_null(after);
    assert_null(weft_loop_current());
}

static void test_loop_runs_again_after_stop(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    count_timer a, b;
    count_timer_init(&a, true);
    count_timer_init(&b, true);
    weft_timer_start(loop, &a.t, 5);
    weft_timer_start(loop, &b.t, 15);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 0);
    assert_int_equal(weft_loop_timer_count(loop), 2); /* b and guard survive */
    assert_int_equal(weft_loop_run(loop), 0);
    assert_int_equal(b.fired, 1);
    assert_false(g.fired);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

/* ------------------------------------------------------------------ */
/* fd watchers */

typedef struct io_rec {
    int calls;
    unsigned ev[8];
    char data[64];
    ssize_t nread;
    bool stop_io, stop_loop, read_it;
    unsigned switch_to; /* if nonzero, change interest to this on first call */
} io_rec;

static void io_rec_cb(weft_loop *loop, weft_io *io, unsigned events)
{
    io_rec *r = io->data;
    if (r->calls < 8)
        r->ev[r->calls] = events;
    r->calls++;
    if (r->read_it && (events & WEFT_IO_READ))
        r->nread = read(io->fd, r->data, sizeof r->data);
    if (r->switch_to && r->calls == 1)
        weft_io_start(loop, io, r->switch_to);
    if (r->stop_io)
        weft_io_stop(loop, io);
    if (r->stop_loop)
        weft_loop_stop(loop);
}

static void test_io_read_readiness(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int sv[2];
    make_socketpair(sv);
    io_rec r;
    memset(&r, 0, sizeof r);
    r.read_it = r.stop_loop = true;
    weft_io io;
    weft_io_init(&io, sv[0], io_rec_cb, &r);
    assert_int_equal(io.events, 0);
    assert_int_equal(io.fd, sv[0]);
    assert_ptr_equal(io.data, &r);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0);
    assert_int_equal(io.events, WEFT_IO_READ);
    assert_int_equal(write(sv[1], "ping", 4), 4);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ev[0], WEFT_IO_READ);
    assert_int_equal(r.nread, 4);
    assert_memory_equal(r.data, "ping", 4);
    weft_io_stop(loop, &io);
    assert_int_equal(io.events, 0);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(sv[0]);
    close(sv[1]);
}

typedef struct writer_timer {
    weft_timer t;
    int fd;
} writer_timer;

static void writer_cb(weft_loop *loop, weft_timer *t)
{
    writer_timer *w = t->data;
    (void)loop;
    if (write(w->fd, "pong", 4) != 4)
        abort();
}

static void test_io_write_readiness_and_interest_change(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int sv[2];
    make_socketpair(sv);
    io_rec r;
    memset(&r, 0, sizeof r);
    r.read_it = true;
    r.switch_to = WEFT_IO_READ; /* after the first WRITE event, wait for input only */
    weft_io io;
    weft_io_init(&io, sv[0], io_rec_cb, &r);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_WRITE), 0);
    assert_int_equal(io.events, WEFT_IO_WRITE);
    writer_timer w;
    w.fd = sv[1];
    weft_timer_init(&w.t, writer_cb, &w);
    weft_timer_start(loop, &w.t, 20);
    count_timer end;
    count_timer_init(&end, true);
    weft_timer_start(loop, &end.t, 60);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    /* exactly one WRITE event (interest changed), then one READ event
     * (data read, so level-triggered READ is not repeated) */
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.ev[0], WEFT_IO_WRITE);
    assert_int_equal(r.ev[1], WEFT_IO_READ);
    assert_int_equal(r.nread, 4);
    assert_memory_equal(r.data, "pong", 4);
    assert_int_equal(io.events, WEFT_IO_READ);

    /* both at once */
    memset(&r, 0, sizeof r);
    r.stop_loop = true;
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ | WEFT_IO_WRITE), 0);
    assert_int_equal(io.events, WEFT_IO_READ | WEFT_IO_WRITE);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ev[0], WEFT_IO_READ | WEFT_IO_WRITE);

    weft_io_stop(loop, &io);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(sv[0]);
    close(sv[1]);
}

static void test_io_start_noop_and_zero(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int sv[2];
    make_socketpair(sv);
    io_rec r;
    memset(&r, 0, sizeof r);
    weft_io io;
    weft_io_init(&io, sv[0], io_rec_cb, &r);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0); /* same set: no-op */
    /* HUP/ERROR are never requested: they are masked off */
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ | WEFT_IO_HUP | WEFT_IO_ERROR), 0);
    assert_int_equal(io.events, WEFT_IO_READ);
    /* 0 unregisters */
    assert_int_equal(weft_io_start(loop, &io, 0), 0);
    assert_int_equal(io.events, 0);
    assert_int_equal(write(sv[1], "zz", 2), 2);
    guard g;
    guard_start(loop, &g, 40);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_true(g.fired);
    assert_int_equal(r.calls, 0);
    /* re-register after unregistering: the pending data is reported */
    r.stop_loop = true;
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0);
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ev[0], WEFT_IO_READ);
    weft_io_stop(loop, &io);
    weft_io_stop(loop, &io); /* twice is harmless */
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(sv[0]);
    close(sv[1]);
}

static void test_io_stop_stops_callbacks(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int sv[2];
    make_socketpair(sv);
    io_rec r;
    memset(&r, 0, sizeof r);
    r.stop_io = true; /* never reads: level-triggered would repeat forever */
    weft_io io;
    weft_io_init(&io, sv[0], io_rec_cb, &r);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0);
    assert_int_equal(write(sv[1], "data", 4), 4);
    guard g;
    guard_start(loop, &g, 50);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_true(g.fired);
    assert_int_equal(r.calls, 1);
    assert_int_equal(io.events, 0);
    weft_loop_free(loop);
    close(sv[0]);
    close(sv[1]);
}

/* Two watchers ready in the same wake-up; the first callback to run stops
 * both. The stopped one must not be called (its owner may have freed it). */
typedef struct mutual_io {
    weft_io io;
    struct mutual_io *other;
    int calls;
} mutual_io;

static void mutual_cb(weft_loop *loop, weft_io *io, unsigned events)
{
    mutual_io *m = io->data;
    (void)events;
    m->calls++;
    weft_io_stop(loop, &m->io);
    weft_io_stop(loop, &m->other->io);
}

static void test_io_stop_other_in_same_batch(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int a[2], b[2];
    make_socketpair(a);
    make_socketpair(b);
    mutual_io ma, mb;
    ma.other = &mb;
    mb.other = &ma;
    ma.calls = mb.calls = 0;
    weft_io_init(&ma.io, a[0], mutual_cb, &ma);
    weft_io_init(&mb.io, b[0], mutual_cb, &mb);
    assert_int_equal(weft_io_start(loop, &ma.io, WEFT_IO_READ), 0);
    assert_int_equal(weft_io_start(loop, &mb.io, WEFT_IO_READ), 0);
    assert_int_equal(write(a[1], "1", 1), 1);
    assert_int_equal(write(b[1], "2", 1), 1);
    guard g;
    guard_start(loop, &g, 50);
    assert_int_equal(weft_loop_run(loop), 0);
    int total = ma.calls + mb.calls;
    weft_loop_free(loop);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    assert_int_equal(total, 1);
}

/* A callback runs the loop again (nested); inside that run another
 * watcher, still pending in the outer wake-up's batch, is stopped. Back in
 * the outer batch its stale event must not reach it: the header promises a
 * stopped watcher is never called again, and its owner may have freed it. */
typedef struct nest_io {
    weft_io io;
    struct nest_ctx *ctx;
    bool stopped;
    int calls, calls_after_stop;
} nest_io;

typedef struct nest_ctx {
    nest_io a, b;
    nest_io *victim;
    weft_timer t;
    int nested_runs;
} nest_ctx;

static void nest_timer_cb(weft_loop *loop, weft_timer *t)
{
    nest_ctx *c = t->data;
    weft_io_stop(loop, &c->victim->io);
    c->victim->stopped = true;
    weft_loop_stop(loop); /* ends the nested run */
}

static void nest_io_cb(weft_loop *loop, weft_io *io, unsigned events)
{
    nest_io *n = io->data;
    nest_ctx *c = n->ctx;
    (void)events;
    if (n->stopped) {
        n->calls_after_stop++;
        return;
    }
    n->calls++;
    if (c->victim)
        return; /* the victim, called legitimately inside the nested run */
    /* first callback of the outer batch: the other watcher is the victim */
    c->victim = n == &c->a ? &c->b : &c->a;
    char ch;
    assert_int_equal(read(io->fd, &ch, 1), 1);
    weft_io_stop(loop, io);
    n->stopped = true;
    weft_timer_init(&c->t, nest_timer_cb, c);
    weft_timer_start(loop, &c->t, 0);
    c->nested_runs++;
    weft_loop_run(loop);
}

static void test_io_stop_in_nested_run_forgets_outer_batch(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int a[2], b[2];
    make_socketpair(a);
    make_socketpair(b);
    nest_ctx c;
    memset(&c, 0, sizeof c);
    c.a.ctx = c.b.ctx = &c;
    weft_io_init(&c.a.io, a[0], nest_io_cb, &c.a);
    weft_io_init(&c.b.io, b[0], nest_io_cb, &c.b);
    assert_int_equal(weft_io_start(loop, &c.a.io, WEFT_IO_READ), 0);
    assert_int_equal(weft_io_start(loop, &c.b.io, WEFT_IO_READ), 0);
    /* both readable before the loop runs: one epoll batch holds both */
    assert_int_equal(write(a[1], "1", 1), 1);
    assert_int_equal(write(b[1], "2", 1), 1);
    guard g;
    guard_start(loop, &g, 200);
    assert_int_equal(weft_loop_run(loop), 0);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    assert_int_equal(c.nested_runs, 1);
    assert_non_null(c.victim);
    assert_int_equal(c.a.calls_after_stop, 0);
    assert_int_equal(c.b.calls_after_stop, 0);
}

static void test_io_eof_socketpair_reports_read_hup(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int sv[2];
    make_socketpair(sv);
    io_rec r;
    memset(&r, 0, sizeof r);
    r.read_it = r.stop_loop = true;
    weft_io io;
    weft_io_init(&io, sv[0], io_rec_cb, &r);
    assert_int_equal(weft_io_start(loop, &io, WEFT_IO_READ), 0);
    close(sv[1]);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ev[0], WEFT_IO_READ | WEFT_IO_HUP);
    assert_int_equal(r.nread, 0); /* EOF */
    weft_io_stop(loop, &io); /* still readable (EOF): stop watching it */

    /* half-close (shutdown of the peer's write side) also reports READ */
    int sv2[2];
    make_socketpair(sv2);
    memset(&r, 0, sizeof r);
    r.read_it = r.stop_loop = true;
    weft_io io2;
    weft_io_init(&io2, sv2[0], io_rec_cb, &r);
    assert_int_equal(weft_io_start(loop, &io2, WEFT_IO_READ), 0);
    assert_int_equal(shutdown(sv2[1], SHUT_WR), 0);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(r.calls, 1);
    assert_true(r.ev[0] & WEFT_IO_READ);
    assert_true(r.ev[0] & WEFT_IO_HUP);
    assert_int_equal(r.nread, 0);

    weft_io_stop(loop, &io2);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(sv[0]);
    close(sv2[0]);
    close(sv2[1]);
}

static void test_io_pipe(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    io_rec rr, wr;
    memset(&rr, 0, sizeof rr);
    memset(&wr, 0, sizeof wr);
    wr.stop_io = wr.stop_loop = true;
    weft_io rio, wio;
    weft_io_init(&rio, p[0], io_rec_cb, &rr);
    weft_io_init(&wio, p[1], io_rec_cb, &wr);
    /* write end is writable at once */
    assert_int_equal(weft_io_start(loop, &wio, WEFT_IO_WRITE), 0);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_int_equal(wr.calls, 1);
    assert_int_equal(wr.ev[0], WEFT_IO_WRITE);
    /* read end becomes readable */
    rr.read_it = rr.stop_loop = true;
    assert_int_equal(weft_io_start(loop, &rio, WEFT_IO_READ), 0);
    assert_int_equal(write(p[1], "abc", 3), 3);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_int_equal(rr.calls, 1);
    assert_int_equal(rr.ev[0], WEFT_IO_READ);
    assert_int_equal(rr.nread, 3);
    /* writer gone: the hang-up is reported, with READ so that a reader
     * finds the end of input by reading (EPOLLHUP alone, no EPOLLIN) */
    close(p[1]);
    rr.stop_io = true;
    rr.nread = -1;
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_int_equal(rr.calls, 2);
    assert_true(rr.ev[1] & WEFT_IO_HUP);
    assert_true(rr.ev[1] & WEFT_IO_READ);
    assert_int_equal(rr.nread, 0);
    assert_int_equal(rio.events, 0);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
    close(p[0]);
}

static void test_io_start_bad_fd(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    io_rec r;
    memset(&r, 0, sizeof r);
    weft_io io;
    weft_io_init(&io, -1, io_rec_cb, &r);
    int rc = weft_io_start(loop, &io, WEFT_IO_READ);
    assert_true(rc < 0);
    assert_int_equal(io.events, 0);

    /* regular files cannot be polled by epoll (EPERM) */
    FILE *f = tmpfile();
    assert_non_null(f);
    weft_io_init(&io, fileno(f), io_rec_cb, &r);
    rc = weft_io_start(loop, &io, WEFT_IO_READ);
    assert_true(rc < 0);
    assert_int_equal(io.events, 0);
    fclose(f);
    weft_loop_free(loop);
}

/* ------------------------------------------------------------------ */
/* cross-thread posts and stop_async */

#define POSTS_PER_THREAD 500

typedef struct post_ctx {
    pthread_t loop_thread;
    weft_loop *loop;
    int received;
    int next_seq[2];
    int order_errors, wrong_thread, wrong_current;
    atomic_int post_failures;
} post_ctx;

typedef struct poster_arg {
    post_ctx *ctx;
    int tid;
} poster_arg;

static void post_record(weft_loop *loop, void *arg)
{
    post_ctx *c = weft_loop_data(loop);
    uintptr_t v = (uintptr_t)arg;
    int tid = (int)(v >> 20);
    int seq = (int)(v & 0xfffff);
    if (!pthread_equal(pthread_self(), c->loop_thread))
        c->wrong_thread++;
    if (weft_loop_current() != c->loop)
        c->wrong_current++;
    if (tid < 0 || tid > 1 || seq != c->next_seq[tid])
        c->order_errors++;
    else
        c->next_seq[tid]++;
    if (++c->received == 2 * POSTS_PER_THREAD)
        weft_loop_stop(loop);
}

static void *poster_main(void *p)
{
    poster_arg *a = p;
    for (int i = 0; i < POSTS_PER_THREAD; i++) {
        uintptr_t v = ((uintptr_t)a->tid << 20) | (uintptr_t)i;
        if (weft_loop_post(a->ctx->loop, post_record, (void *)v) != 0)
            atomic_fetch_add(&a->ctx->post_failures, 1);
        if (i % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static void test_post_from_threads_fifo(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    post_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    atomic_init(&ctx.post_failures, 0);
    ctx.loop = loop;
    ctx.loop_thread = pthread_self();
    weft_loop_set_data(loop, &ctx);
    pthread_t th[2];
    poster_arg args[2] = {{&ctx, 0}, {&ctx, 1}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, poster_main, &args[i]), 0);
    guard g;
    guard_start(loop, &g, 5000);
    int rc = weft_loop_run(loop);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(rc, 0);
    assert_false(g.fired);
    assert_int_equal(atomic_load(&ctx.post_failures), 0);
    assert_int_equal(ctx.received, 2 * POSTS_PER_THREAD);
    assert_int_equal(ctx.order_errors, 0);
    assert_int_equal(ctx.wrong_thread, 0);
    assert_int_equal(ctx.wrong_current, 0);
    assert_int_equal(ctx.next_seq[0], POSTS_PER_THREAD);
    assert_int_equal(ctx.next_seq[1], POSTS_PER_THREAD);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

typedef struct chain_ctx {
    char log[16];
    int n;
} chain_ctx;

static void chain_c(weft_loop *loop, void *arg)
{
    chain_ctx *c = arg;
    c->log[c->n++] = 'c';
    weft_loop_stop(loop);
}

static void chain_b(weft_loop *loop, void *arg)
{
    chain_ctx *c = arg;
    c->log[c->n++] = 'b';
}

static void chain_a(weft_loop *loop, void *arg)
{
    chain_ctx *c = arg;
    c->log[c->n++] = 'a';
    /* a post made from the loop thread runs at a later wake-up, in order */
    weft_loop_post(loop, chain_c, c);
}

static void test_post_same_thread_order(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    chain_ctx c;
    memset(&c, 0, sizeof c);
    /* posted before the loop runs: kept until it does */
    assert_int_equal(weft_loop_post(loop, chain_a, &c), 0);
    assert_int_equal(weft_loop_post(loop, chain_b, &c), 0);
    assert_int_equal(c.n, 0);
    guard g;
    guard_start(loop, &g, GUARD_MS);
    assert_int_equal(weft_loop_run(loop), 0);
    assert_false(g.fired);
    assert_string_equal(c.log, "abc");
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

static void never_called(weft_loop *loop, void *arg)
{
    int *n = arg;
    (*n)++;
}

static void test_free_with_pending_posts(void **state)
{
    (void)state;
    /* queued posts are dropped by free without being run (LSan: no leak) */
    weft_loop *loop = new_loop();
    int n = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(weft_loop_post(loop, never_called, &n), 0);
    weft_loop_free(loop);
    assert_int_equal(n, 0);
}

static void *stopper_main(void *p)
{
    weft_loop *loop = p;
    sleep_ms(30);
    weft_loop_stop_async(loop);
    return NULL;
}

static void test_stop_async_from_thread(void **state)
{
    (void)state;
    weft_loop *loop = new_loop();
    guard g;
    guard_start(loop, &g, 5000);
    uint64_t t0 = weft_now_us();
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stopper_main, loop), 0);
    int rc = weft_loop_run(loop);
    uint64_t elapsed = weft_now_us() - t0;
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    assert_false(g.fired);
    assert_true(elapsed >= 25000);
    assert_true(elapsed < 2000000);
    weft_timer_stop(loop, &g.t);
    weft_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_new_free_basics),
        cmocka_unit_test(test_timers_fire_in_deadline_order),
        cmocka_unit_test(test_timer_stop_before_fire),
        cmocka_unit_test(test_timer_restart_earlier),
        cmocka_unit_test(test_timer_restart_later),
        cmocka_unit_test(test_timer_stop_from_other_callback),
        cmocka_unit_test(test_timer_start_from_callback),
        cmocka_unit_test(test_timer_rearm_zero_does_not_starve),
        cmocka_unit_test(test_timers_10000_half_cancelled),
        cmocka_unit_test(test_timer_count_and_active),
        cmocka_unit_test(test_timer_huge_delay_never_fires),
        cmocka_unit_test(test_now_cached_and_monotonic),
        cmocka_unit_test(test_loop_current_cleared_after_run),
        cmocka_unit_test(test_loop_runs_again_after_stop),
        cmocka_unit_test(test_io_read_readiness),
        cmocka_unit_test(test_io_write_readiness_and_interest_change),
        cmocka_unit_test(test_io_start_noop_and_zero),
        cmocka_unit_test(test_io_stop_stops_callbacks),
        cmocka_unit_test(test_io_stop_other_in_same_batch),
        cmocka_unit_test(test_io_stop_in_nested_run_forgets_outer_batch),
        cmocka_unit_test(test_io_eof_socketpair_reports_read_hup),
        cmocka_unit_test(test_io_pipe),
        cmocka_unit_test(test_io_start_bad_fd),
        cmocka_unit_test(test_post_from_threads_fifo),
        cmocka_unit_test(test_post_same_thread_order),
        cmocka_unit_test(test_free_with_pending_posts),
        cmocka_unit_test(test_stop_async_from_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
