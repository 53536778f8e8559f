/*
 * test_rt.c — unit tests for the worker runtime (weft_rt_run).
 *
 * Kept apart from test_loop.c because weft_rt_run changes the calling
 * thread's signal mask and waits with sigwaitinfo(): it runs on the test's
 * main thread, and a helper pthread drives it (weft_rt_shutdown, SIGHUP).
 * Hooks only record what they see (atomics); all assertions run on the main
 * thread after weft_rt_run returns. Every helper wait is bounded, and the
 * helper keeps asking for shutdown until the runtime returns, so a broken
 * runtime fails a test instead of hanging. After each test, pending
 * SIGTERM/SIGINT/SIGHUP are drained and the original mask restored.
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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#include "weft/log.h"
#include "weft/loop.h"

#define MAXW 8

static pthread_t main_tid;
static sigset_t orig_mask;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

typedef struct rt_ctx {
    int nworkers;
    int fail_index; /* -1: all starts succeed */
    int fail_rc;
    bool drain_stops;        /* the drain hook stops its loop */
    bool shutdown_in_start;  /* worker 0's start hook calls weft_rt_shutdown() */
    int slow_index;          /* this worker's start hook takes slow_ms */
    unsigned slow_ms;
    atomic_int started, drained, stopped, reloads;
    atomic_int start_mask, drain_mask, stop_mask;
    atomic_int bad_index, wrong_thread, wrong_current;
    atomic_int reload_wrong_thread;
    atomic_uint_fast64_t first_drain_us;
    pthread_t worker_tid[MAXW];
    atomic_bool tid_set[MAXW];
} rt_ctx;

static void ctx_init(rt_ctx *c, int nworkers)
{
    memset(c, 0, sizeof *c);
    c->nworkers = nworkers;
    c->fail_index = -1;
    c->slow_index = -1;
    c->drain_stops = true;
    atomic_init(&c->started, 0);
    atomic_init(&c->drained, 0);
    atomic_init(&c->stopped, 0);
    atomic_init(&c->reloads, 0);
    atomic_init(&c->start_mask, 0);
    atomic_init(&c->drain_mask, 0);
    atomic_init(&c->stop_mask, 0);
    atomic_init(&c->bad_index, 0);
    atomic_init(&c->wrong_thread, 0);
    atomic_init(&c->wrong_current, 0);
    atomic_init(&c->reload_wrong_thread, 0);
    atomic_init(&c->first_drain_us, 0);
    for (int i = 0; i < MAXW; i++)
        atomic_init(&c->tid_set[i], false);
}

static bool same_worker_thread(rt_ctx *c, int idx)
{
    return idx >= 0 && idx < MAXW && atomic_load(&c->tid_set[idx]) &&
           pthread_equal(pthread_self(), c->worker_tid[idx]);
}

static int hook_start(weft_loop *loop, void *arg)
{
    rt_ctx *c = arg;
    int idx = weft_loop_index(loop);
    if (idx < 0 || idx >= c->nworkers || idx >= MAXW) {
        atomic_fetch_add(&c->bad_index, 1);
        return 0;
    }
    if (pthread_equal(pthread_self(), main_tid))
        atomic_fetch_add(&c->wrong_thread, 1);
    c->worker_tid[idx] = pthread_self();
    atomic_store(&c->tid_set[idx], true);
    atomic_fetch_or(&c->start_mask, 1 << idx);
    if (idx == c->slow_index)
        sleep_ms(c->slow_ms);
    if (idx == c->fail_index)
        return c->fail_rc;
    if (c->shutdown_in_start && idx == 0)
        weft_rt_shutdown();
    atomic_fetch_add(&c->started, 1);
    return 0;
}

static void hook_drain(weft_loop *loop, void *arg)
{
    rt_ctx *c = arg;
    int idx = weft_loop_index(loop);
    uint_fast64_t zero = 0;
    atomic_compare_exchange_strong(&c->first_drain_us, &zero, weft_now_us());
    if (!same_worker_thread(c, idx))
        atomic_fetch_add(&c->wrong_thread, 1);
    if (weft_loop_current() != loop)
        atomic_fetch_add(&c->wrong_current, 1);
    if (idx >= 0 && idx < MAXW)
        atomic_fetch_or(&c->drain_mask, 1 << idx);
    atomic_fetch_add(&c->drained, 1);
    if (c->drain_stops)
        weft_loop_stop(loop);
}

static void hook_stop(weft_loop *loop, void *arg)
{
    rt_ctx *c = arg;
    int idx = weft_loop_index(loop);
    if (!same_worker_thread(c, idx))
        atomic_fetch_add(&c->wrong_thread, 1);
    if (idx >= 0 && idx < MAXW)
        atomic_fetch_or(&c->stop_mask, 1 << idx);
    atomic_fetch_add(&c->stopped, 1);
}

static void hook_reload(void *arg)
{
    rt_ctx *c = arg;
    if (!pthread_equal(pthread_self(), main_tid))
        atomic_fetch_add(&c->reload_wrong_thread, 1);
    atomic_fetch_add(&c->reloads, 1);
}

/* ------------------------------------------------------------------ */
/* the helper thread */

typedef struct helper {
    pthread_t th;
    rt_ctx *ctx;
    int want_started;  /* wait for this many successful starts first */
    bool send_hup;     /* then SIGHUP the main thread and wait for reload */
    int hold_ms;       /* then wait this long (or until run returns) */
    atomic_bool returned;
    atomic_int hup_sent;
} helper;

static uint64_t ms_since(uint64_t t0_us) { return (weft_now_us() - t0_us) / 1000; }

static void *helper_main(void *p)
{
    helper *h = p;
    rt_ctx *c = h->ctx;
    uint64_t t0 = weft_now_us();
    while (atomic_load(&c->started) < h->want_started && !atomic_load(&h->returned) &&
           ms_since(t0) < 3000)
        sleep_ms(2);
    if (h->send_hup && !atomic_load(&h->returned)) {
        /* weft_rt_run blocked SIGHUP before starting workers, so this is
         * queued for its sigwaitinfo, never delivered as a default action */
        pthread_kill(main_tid, SIGHUP);
        atomic_store(&h->hup_sent, 1);
        t0 = weft_now_us();
        while (atomic_load(&c->reloads) < 1 && ms_since(t0) < 3000)
            sleep_ms(2);
    }
    t0 = weft_now_us();
    while (h->hold_ms > 0 && !atomic_load(&h->returned) && ms_since(t0) < (uint64_t)h->hold_ms)
        sleep_ms(2);
    /* weft_rt_shutdown is a no-op until the runtime has finished starting:
     * repeat until something drained/stopped or run returned */
    t0 = weft_now_us();
    while (!atomic_load(&h->returned) && atomic_load(&c->drained) == 0 &&
           atomic_load(&c->stopped) == 0 && ms_since(t0) < 5000) {
        weft_rt_shutdown();
        sleep_ms(10);
    }
    return NULL;
}

static void helper_start(helper *h, rt_ctx *c, int want_started)
{
    memset(h, 0, sizeof *h);
    h->ctx = c;
    h->want_started = want_started;
    atomic_init(&h->returned, false);
    atomic_init(&h->hup_sent, 0);
}

static void helper_go(helper *h) { assert_int_equal(pthread_create(&h->th, NULL, helper_main, h), 0); }

static void helper_finish(helper *h)
{
    atomic_store(&h->returned, true);
    pthread_join(h->th, NULL);
}

static int teardown(void **state)
{
    (void)state;
    /* consume any stray SIGTERM/SIGHUP still pending for this thread, then
     * restore the original mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &orig_mask, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests */

static void test_rt_shutdown_drains_every_worker(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 2);
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 2);
    helper_go(&h);
    uint64_t t0 = weft_now_us();
    int rc = weft_rt_run(2, &hooks, 2000);
    uint64_t ret_us = weft_now_us();
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&c.bad_index), 0);
    assert_int_equal(atomic_load(&c.started), 2);
    assert_int_equal(atomic_load(&c.start_mask), 3);
    assert_int_equal(atomic_load(&c.drained), 2);
    assert_int_equal(atomic_load(&c.drain_mask), 3);
    assert_int_equal(atomic_load(&c.stopped), 2);
    assert_int_equal(atomic_load(&c.stop_mask), 3);
    assert_int_equal(atomic_load(&c.wrong_thread), 0);
    assert_int_equal(atomic_load(&c.wrong_current), 0);
    assert_false(pthread_equal(c.worker_tid[0], c.worker_tid[1]));
    /* cooperative drain: return long before the 2 s deadline */
    uint64_t first = atomic_load(&c.first_drain_us);
    assert_true(first > t0);
    assert_true(ret_us - first < 1500000);
}

static void test_rt_start_error_is_returned(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 2);
    c.fail_index = 1;
    c.fail_rc = WEFT_ECONFIG;
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 99);
    h.hold_ms = 3000; /* safety net only: run must return without it */
    helper_go(&h);
    uint64_t t0 = weft_now_us();
    int rc = weft_rt_run(2, &hooks, 300);
    uint64_t elapsed_ms = ms_since(t0);
    helper_finish(&h);
    assert_int_equal(rc, WEFT_ECONFIG);
    assert_int_equal(atomic_load(&c.start_mask), 3); /* both start hooks ran */
    assert_int_equal(atomic_load(&c.started), 1);
    /* worker 0 started and is stopped (stop hook runs); worker 1 never ran */
    assert_int_equal(atomic_load(&c.stopped), 1);
    assert_int_equal(atomic_load(&c.stop_mask), 1);
    assert_int_equal(atomic_load(&c.wrong_thread), 0);
    assert_true(elapsed_ms < 2000);
}

static void test_rt_start_error_does_not_wait_drain_timeout(void **state)
{
    (void)state;
    /* worker 1 fails at once while worker 0 is still starting (slow start
     * hook). The runtime should still stop worker 0 promptly: a start-up
     * failure must not cost the whole drain timeout (10 s by default). */
    rt_ctx c;
    ctx_init(&c, 2);
    c.fail_index = 1;
    c.fail_rc = WEFT_EEXIST;
    c.slow_index = 0;
    c.slow_ms = 100;
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 99);
    h.hold_ms = 5000; /* safety net only */
    helper_go(&h);
    uint64_t t0 = weft_now_us();
    int rc = weft_rt_run(2, &hooks, 3000);
    uint64_t elapsed_ms = ms_since(t0);
    helper_finish(&h);
    assert_int_equal(rc, WEFT_EEXIST);
    assert_int_equal(atomic_load(&c.started), 1);
    assert_int_equal(atomic_load(&c.stopped), 1);
    assert_int_equal(atomic_load(&c.stop_mask), 1);
    assert_true(elapsed_ms < 1000);
    /* the started worker is asked to drain like on a normal shutdown */
    assert_int_equal(atomic_load(&c.drained), 1);
}

static void test_rt_drain_timeout_forces_stop(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 2);
    c.drain_stops = false; /* drain never finishes: the runtime must stop the loops */
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 2);
    helper_go(&h);
    int rc = weft_rt_run(2, &hooks, 200);
    uint64_t ret_us = weft_now_us();
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&c.drained), 2);
    assert_int_equal(atomic_load(&c.stopped), 2);
    assert_int_equal(atomic_load(&c.stop_mask), 3);
    assert_int_equal(atomic_load(&c.wrong_thread), 0);
    uint64_t first = atomic_load(&c.first_drain_us);
    assert_true(first > 0);
    uint64_t waited_ms = (ret_us - first) / 1000;
    assert_true(waited_ms >= 150); /* not before the deadline... */
    assert_true(waited_ms < 1500); /* ...but soon after it */
}

static void test_rt_no_drain_hook_stops_loops(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 3);
    weft_rt_hooks hooks = {hook_start, NULL, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 3);
    helper_go(&h);
    int rc = weft_rt_run(3, &hooks, 5000);
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&c.started), 3);
    assert_int_equal(atomic_load(&c.start_mask), 7);
    assert_int_equal(atomic_load(&c.stopped), 3);
    assert_int_equal(atomic_load(&c.stop_mask), 7);
    assert_int_equal(atomic_load(&c.drained), 0);
}

static void test_rt_zero_workers_means_one(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 1);
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 1);
    helper_go(&h);
    int rc = weft_rt_run(0, &hooks, 2000);
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&c.bad_index), 0);
    assert_int_equal(atomic_load(&c.started), 1);
    assert_int_equal(atomic_load(&c.start_mask), 1);
    assert_int_equal(atomic_load(&c.drained), 1);
    assert_int_equal(atomic_load(&c.stopped), 1);
}

static void test_rt_sighup_runs_reload_on_main_thread(void **state)
{
    (void)state;
    rt_ctx c;
    ctx_init(&c, 2);
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, hook_reload, &c};
    helper h;
    helper_start(&h, &c, 2);
    h.send_hup = true;
    helper_go(&h);
    int rc = weft_rt_run(2, &hooks, 2000);
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&h.hup_sent), 1);
    assert_int_equal(atomic_load(&c.reloads), 1);
    assert_int_equal(atomic_load(&c.reload_wrong_thread), 0);
    /* a reload does not stop anything; the later shutdown does */
    assert_int_equal(atomic_load(&c.drained), 2);
    assert_int_equal(atomic_load(&c.stopped), 2);
}

static void test_rt_shutdown_during_start_not_lost(void **state)
{
    (void)state;
    /* weft_rt_shutdown() is documented as "as SIGTERM does"; a SIGTERM that
     * arrives while workers start is queued (blocked) and honoured, so a
     * shutdown request made from a start hook must be honoured too */
    rt_ctx c;
    ctx_init(&c, 2);
    c.shutdown_in_start = true;
    weft_rt_hooks hooks = {hook_start, hook_drain, hook_stop, NULL, &c};
    helper h;
    helper_start(&h, &c, 2);
    h.hold_ms = 1500; /* watchdog: shuts down for real only if the request was lost */
    helper_go(&h);
    uint64_t t0 = weft_now_us();
    int rc = weft_rt_run(2, &hooks, 2000);
    uint64_t elapsed_ms = ms_since(t0);
    helper_finish(&h);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&c.stopped), 2);
    assert_true(elapsed_ms < 1000);
}

static void test_cpu_count(void **state)
{
    (void)state;
    int n = weft_cpu_count();
    assert_true(n >= 1);
    assert_true(n <= 65536);
}

int main(void)
{
    main_tid = pthread_self();
    pthread_sigmask(SIG_SETMASK, NULL, &orig_mask);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rt_shutdown_drains_every_worker, teardown),
        cmocka_unit_test_teardown(test_rt_start_error_is_returned, teardown),
        cmocka_unit_test_teardown(test_rt_start_error_does_not_wait_drain_timeout, teardown),
        cmocka_unit_test_teardown(test_rt_drain_timeout_forces_stop, teardown),
        cmocka_unit_test_teardown(test_rt_no_drain_hook_stops_loops, teardown),
        cmocka_unit_test_teardown(test_rt_zero_workers_means_one, teardown),
        cmocka_unit_test_teardown(test_rt_sighup_runs_reload_on_main_thread, teardown),
        cmocka_unit_test_teardown(test_rt_shutdown_during_start_not_lost, teardown),
        cmocka_unit_test(test_cpu_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
