/*
 * loop.h — the event loop: fd readiness, timers, cross-thread posts, and the
 * worker runtime (threads, signals, graceful drain).
 *
 * One loop per worker thread; a loop and everything registered on it belong
 * to that thread. The only thread-safe calls are weft_loop_post() and
 * weft_loop_stop_async(). Watchers (weft_io) and timers (weft_timer) are
 * caller-owned structs, usually embedded in a connection: the loop never
 * allocates or frees them, it only links them while they are active, so the
 * owner must stop them before freeing their memory.
 */
#ifndef WEFT_LOOP_H
#define WEFT_LOOP_H

#include "weft/weft.h"

typedef struct weft_loop weft_loop;

enum weft_io_events {
    WEFT_IO_READ = 1 << 0,
    WEFT_IO_WRITE = 1 << 1,
    WEFT_IO_HUP = 1 << 2,   /* peer hung up (reported, never requested) */
    WEFT_IO_ERROR = 1 << 3, /* socket error (reported, never requested) */
};
/* HUP and ERROR are always reported together with READ, so a reader finds
 * the end of input (read returns 0) or the error (read fails) by reading. */

typedef struct weft_io weft_io;
typedef void (*weft_io_cb)(weft_loop *loop, weft_io *io, unsigned events);
struct weft_io {
    int fd;
    unsigned events; /* currently registered WEFT_IO_READ|WRITE; 0 = not registered */
    weft_io_cb cb;
    void *data;
};

typedef struct weft_timer weft_timer;
typedef void (*weft_timer_cb)(weft_loop *loop, weft_timer *t);
struct weft_timer {
    uint64_t deadline_ms; /* absolute, loop clock */
    uint32_t heap_idx;    /* 0 = inactive; else 1-based index in the heap */
    weft_timer_cb cb;
    void *data;
};

/* Create a loop (epoll + eventfd). Returns 0 or a WEFT_E* code. */
int weft_loop_new(weft_loop **out);
/* Free a loop that is not running. Active watchers are simply forgotten. */
void weft_loop_free(weft_loop *loop);
/* Run until weft_loop_stop(). Returns 0, or a WEFT_E* code if epoll fails. */
int weft_loop_run(weft_loop *loop);
/* Ask the loop to return from weft_loop_run() (same thread). */
void weft_loop_stop(weft_loop *loop);
/* Thread-safe: stop a loop from another thread. */
void weft_loop_stop_async(weft_loop *loop);

/* Clock cached at each wake-up (CLOCK_MONOTONIC). Cheap. */
uint64_t weft_loop_now_ms(const weft_loop *loop);
uint64_t weft_loop_now_us(const weft_loop *loop);
/* Refresh the cached clock now (after long work inside a callback). */
void weft_loop_update_time(weft_loop *loop);
/* Wall clock seconds cached at wake-up (for Date headers, logs). */
int64_t weft_loop_wall_s(const weft_loop *loop);
/* Uncached monotonic microseconds. */
uint64_t weft_now_us(void);

/* The loop running on the calling thread, or NULL (also after
 * weft_loop_run has returned). */
weft_loop *weft_loop_current(void);

/* Readiness watchers. init does not register; start adds or modifies the
 * interest set (events = WEFT_IO_READ|WEFT_IO_WRITE, 0 to unregister).
 * Once stopped, a watcher's callback is not called again, even for events
 * already collected in the current wake-up: a callback may stop and free
 * another watcher. */
void weft_io_init(weft_io *io, int fd, weft_io_cb cb, void *data);
int weft_io_start(weft_loop *loop, weft_io *io, unsigned events);
void weft_io_stop(weft_loop *loop, weft_io *io);

/* Timers: a binary min-heap; start/stop are O(log n), re-start of an active
 * timer just moves it. Callbacks may start or stop any timer. A deadline
 * past the end of the clock saturates (UINT64_MAX: never fires). */
void weft_timer_init(weft_timer *t, weft_timer_cb cb, void *data);
void weft_timer_start(weft_loop *loop, weft_timer *t, uint64_t after_ms);
void weft_timer_stop(weft_loop *loop, weft_timer *t);
static inline bool weft_timer_active(const weft_timer *t) { return t->heap_idx != 0; }
size_t weft_loop_timer_count(const weft_loop *loop);

/* Thread-safe: run fn(loop, arg) on the loop's thread at its next wake-up.
 * Returns WEFT_ENOMEM if the post cannot be queued. */
typedef void (*weft_post_fn)(weft_loop *loop, void *arg);
int weft_loop_post(weft_loop *loop, weft_post_fn fn, void *arg);

/* Per-loop user pointer (set by whoever owns the worker). */
void weft_loop_set_data(weft_loop *loop, void *data);
void *weft_loop_data(const weft_loop *loop);
/* Worker index of this loop (0..n-1), set by the runtime. */
int weft_loop_index(const weft_loop *loop);

/* ---- worker runtime ----
 * weft_rt_run() blocks SIGTERM/SIGINT/SIGHUP in every thread, ignores
 * SIGPIPE, starts `workers` threads each with its own loop, and waits for
 * signals on the calling thread:
 *   SIGTERM/SIGINT -> drain(loop) is posted to every worker; a worker's loop
 *                     is expected to stop itself when it has finished its
 *                     in-flight work; after drain_timeout_ms the runtime
 *                     stops it anyway. Then stop(loop) runs on each worker
 *                     and weft_rt_run returns 0.
 *   SIGHUP         -> reload(arg) runs on the calling thread (if set).
 * start(loop) runs first on each worker; if it fails the runtime drains the
 * workers that did start (without waiting for the drain timeout unless
 * their drain hooks take that long) and returns its error. When it returns,
 * the caller's signal mask is restored and no SIGTERM/SIGINT/SIGHUP is left
 * pending. */
typedef struct weft_rt_hooks {
    int (*start)(weft_loop *loop, void *arg);
    void (*drain)(weft_loop *loop, void *arg);
    void (*stop)(weft_loop *loop, void *arg);
    void (*reload)(void *arg);
    void *arg;
} weft_rt_hooks;

int weft_rt_run(int workers, const weft_rt_hooks *hooks, int drain_timeout_ms);
/* Ask a running weft_rt_run() to drain and return, as SIGTERM does
 * (thread-safe). Honoured from the start of weft_rt_run, including from a
 * start hook; a no-op when no runtime is running. */
void weft_rt_shutdown(void);
/* Number of online CPUs (>= 1). */
int weft_cpu_count(void);

#endif
