/*
 * rt.c — the worker runtime: threads, signals and graceful drain.
 *
 * The main thread owns all signal handling through sigwaitinfo() with the
 * signals blocked in every thread, so no code runs in signal context and no
 * worker is ever interrupted mid-request. Each worker runs its own loop;
 * the main thread talks to workers only through weft_loop_post(), which is
 * the single synchronised path. Drain is cooperative — the component's
 * drain hook decides when its in-flight work is done and stops its loop —
 * with a hard deadline enforced from the main thread.
 *
 * weft_rt_shutdown() is a SIGTERM to the main thread, accepted from the
 * moment the signals are blocked (so a request made during start-up is
 * pending, not lost). On return the caller's signal mask is restored after
 * any stray pending SIGTERM/SIGINT/SIGHUP has been consumed.
 */
#include "core_int.h"
#include "weft/log.h"
#include "weft/loop.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct worker {
    pthread_t tid;
    weft_loop *loop;
    const weft_rt_hooks *hooks;
    int index;
    int start_rc;
    atomic_int state; /* 0 starting, 1 running, 2 start failed, 3 exited */
} worker;

static pthread_t rt_main_thread;
static atomic_bool rt_running;
/* weft_rt_shutdown calls between their rt_running check and pthread_kill:
 * weft_rt_run waits for these before draining pending signals, so no
 * SIGTERM can land after the drain and kill the process once the caller's
 * mask is restored. */
static atomic_int rt_kills_inflight;

int weft_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    weft_loop_set_data(w->loop, NULL);
    int rc = w->hooks->start ? w->hooks->start(w->loop, w->hooks->arg) : 0;
    if (rc < 0) {
        w->start_rc = rc;
        atomic_store(&w->state, 2);
        return NULL;
    }
    atomic_store(&w->state, 1);
    rc = weft_loop_run(w->loop);
    if (rc < 0)
        weft_log(WEFT_LOG_ERROR, "event loop failed", WEFT_KV_INT("worker", w->index),
                 WEFT_KV_STR("error", weft_strerror(rc)));
    if (w->hooks->stop)
        w->hooks->stop(w->loop, w->hooks->arg);
    atomic_store(&w->state, 3);
    return NULL;
}

static void drain_post(weft_loop *loop, void *arg)
{
    const weft_rt_hooks *h = arg;
    if (h->drain)
        h->drain(loop, h->arg);
    else
        weft_loop_stop(loop);
}

void weft_rt_shutdown(void)
{
    atomic_fetch_add(&rt_kills_inflight, 1);
    if (atomic_load(&rt_running))
        pthread_kill(rt_main_thread, SIGTERM);
    atomic_fetch_sub(&rt_kills_inflight, 1);
}

/* Consume SIGTERM/SIGINT/SIGHUP pending for this thread or the process
 * (they are blocked here), so none is acted on after weft_rt_run returns. */
static void drain_pending_signals(const sigset_t *set)
{
    struct timespec zero = {0, 0};
    while (sigtimedwait(set, NULL, &zero) > 0) {
    }
}

static bool all_exited(worker *ws, int n)
{
    for (int i = 0; i < n; i++)
        if (atomic_load(&ws[i].state) != 3)
            return false;
    return true;
}

int weft_rt_run(int nworkers, const weft_rt_hooks *hooks, int drain_timeout_ms)
{
    int rc = 0;
    sigset_t set, old_mask;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old_mask);
    signal(SIGPIPE, SIG_IGN);
    /* Accept weft_rt_shutdown() from here on: the signal is blocked, so a
     * request made while workers start (even from a start hook) stays
     * pending and is picked up by sigwaitinfo below, exactly as a SIGTERM
     * from outside would be. */
    rt_main_thread = pthread_self();
    atomic_store(&rt_running, true);

    if (nworkers < 1)
        nworkers = 1;
    int started = 0;
    worker *ws = calloc((size_t)nworkers, sizeof *ws);
    if (!ws) {
        rc = WEFT_ENOMEM;
        goto restore_signals;
    }
    for (int i = 0; i < nworkers; i++) {
        ws[i].hooks = hooks;
        ws[i].index = i;
        rc = weft_loop_new(&ws[i].loop);
        if (rc < 0)
            goto stop_workers;
        weft_loop_set_index_(ws[i].loop, i);
        if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
            rc = WEFT_ESYS;
            weft_loop_free(ws[i].loop);
            ws[i].loop = NULL;
            goto stop_workers;
        }
        started++;
    }
    /* Wait for every worker to report its start result. */
    for (;;) {
        bool ready = true;
        for (int i = 0; i < nworkers; i++) {
            int st = atomic_load(&ws[i].state);
            if (st == 2) {
                rc = ws[i].start_rc;
                goto stop_workers;
            }
            if (st == 0)
                ready = false;
        }
        if (ready)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (sig == SIGHUP) {
            if (hooks->reload)
                hooks->reload(hooks->arg);
            else
                weft_log(WEFT_LOG_INFO, "SIGHUP ignored: nothing to reload");
            continue;
        }
        weft_log(WEFT_LOG_INFO, "draining", WEFT_KV_STR("signal", sig == SIGINT ? "SIGINT" : "SIGTERM"),
                 WEFT_KV_INT("timeout_ms", drain_timeout_ms));
        break;
    }

stop_workers:
    /* On a start failure, a shutdown request made meanwhile is moot. */
    if (rc < 0)
        drain_pending_signals(&set);
    /* Drain every worker that has not failed its start, including one still
     * in its start hook: the post waits in its queue until its loop runs,
     * so a start failure elsewhere does not cost the whole drain timeout. */
    for (int i = 0; i < started; i++)
        if (atomic_load(&ws[i].state) != 2)
            weft_loop_post(ws[i].loop, drain_post, (void *)hooks);
    {
        uint64_t deadline = weft_now_us() + (uint64_t)drain_timeout_ms * 1000u;
        bool forced = false;
        while (!all_exited(ws, started)) {
            bool failed_only = true;
            for (int i = 0; i < started; i++)
                if (atomic_load(&ws[i].state) != 2 && atomic_load(&ws[i].state) != 3)
                    failed_only = false;
            if (failed_only)
                break;
            if (!forced && weft_now_us() > deadline) {
                weft_log(WEFT_LOG_WARN, "drain deadline reached, stopping workers");
                for (int i = 0; i < started; i++)
                    weft_loop_stop_async(ws[i].loop);
                forced = true;
            }
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < started; i++) {
        pthread_join(ws[i].tid, NULL);
        weft_loop_free(ws[i].loop);
    }
    free(ws);

restore_signals:
    /* No new shutdown requests; wait out any caught mid-flight, drop stray
     * SIGTERM/SIGINT/SIGHUP (a repeated shutdown request must not kill the
     * process once the caller's mask is back), then restore that mask. */
    atomic_store(&rt_running, false);
    while (atomic_load(&rt_kills_inflight) > 0)
        sched_yield();
    drain_pending_signals(&set);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    return rc;
}
