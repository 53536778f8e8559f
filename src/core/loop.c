/*
 * loop.c — epoll event loop with a timer heap and a cross-thread post queue.
 *
 * Design: level-triggered epoll, one loop per thread, nothing shared. Level
 * triggering lets a callback read only what it needs (e.g. stop reading under
 * backpressure) without the "drain until EAGAIN" obligation of edge mode; the
 * extra epoll_ctl calls are avoided by remembering the registered interest
 * set in each weft_io and skipping no-op changes.
 *
 * Timers live in a binary min-heap of pointers to caller-owned weft_timer
 * structs; each timer knows its heap slot, so cancel and re-arm are
 * O(log n) with no search and no allocation per timer. The clock is read
 * once per wake-up and cached, as nginx and libuv do, so hot paths that ask
 * for "now" cost nothing.
 *
 * Cross-thread work (drain requests, config swaps) arrives through a small
 * mutex-protected queue and an eventfd. That path is rare and never on the
 * request hot path, so a lock is the simple, correct choice there.
 *
 * Stale events: one epoll_wait batch can hold events for several watchers,
 * and a callback may stop (and free) another watcher that is still waiting
 * its turn in the batch — the gateway closes a client connection from its
 * upstream connection's callback. The loop therefore keeps the batch it is
 * dispatching in the loop struct, and weft_io_stop clears the remaining
 * entries that point at the stopped watcher, as libuv does. That is a scan
 * of at most MAX_EVENTS entries, only on stop and only during dispatch; no
 * syscall and no per-event allocation. A callback may run the loop again
 * (nested); each run's batch links to the one it interrupted, and a stop
 * clears the watcher from all of them.
 */
#include "core_int.h"
#include "weft/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

/* One run's epoll batch: entries after idx are pending; weft_io_stop sets
 * their data.ptr to NULL for a stopped watcher. prev is the batch of the
 * run this one is nested in (NULL for the outermost). */
typedef struct ev_batch {
    struct epoll_event *evs;
    int n, idx;
    struct ev_batch *prev;
} ev_batch;

typedef struct post_item {
    struct post_item *next;
    weft_post_fn fn;
    void *arg;
} post_item;

struct weft_loop {
    int epfd;
    int evfd;
    bool stop;
    int index;
    void *data;
    uint64_t now_us;
    int64_t wall_s;
    /* timer heap, 1-based (heap[0] unused) */
    weft_timer **heap;
    uint32_t heap_len;
    uint32_t heap_cap;
    /* posts */
    pthread_mutex_t post_mu;
    post_item *post_head, *post_tail;
    weft_io evio;
    /* the batch being dispatched by the innermost run, or NULL */
    ev_batch *batch;
};

static _Thread_local weft_loop *tl_loop;

uint64_t weft_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void weft_loop_update_time(weft_loop *loop)
{
    loop->now_us = weft_now_us();
    loop->wall_s = (int64_t)time(NULL);
}

uint64_t weft_loop_now_ms(const weft_loop *loop) { return loop->now_us / 1000u; }
uint64_t weft_loop_now_us(const weft_loop *loop) { return loop->now_us; }
int64_t weft_loop_wall_s(const weft_loop *loop) { return loop->wall_s; }
weft_loop *weft_loop_current(void) { return tl_loop; }
void weft_loop_set_data(weft_loop *loop, void *data) { loop->data = data; }
void *weft_loop_data(const weft_loop *loop) { return loop->data; }
int weft_loop_index(const weft_loop *loop) { return loop->index; }
size_t weft_loop_timer_count(const weft_loop *loop) { return loop->heap_len; }

static void run_posts(weft_loop *loop, weft_io *io, unsigned ev)
{
    uint64_t v;
    (void)io;
    (void)ev;
    while (read(loop->evfd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&loop->post_mu);
    post_item *it = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_mu);
    while (it) {
        post_item *next = it->next;
        it->fn(loop, it->arg);
        free(it);
        it = next;
    }
}

int weft_loop_new(weft_loop **out)
{
    int rc = WEFT_ENOMEM;
    weft_loop *loop = calloc(1, sizeof *loop);
    if (!loop)
        return WEFT_ENOMEM;
    loop->heap_cap = 64;
    loop->heap = malloc(sizeof(*loop->heap) * (loop->heap_cap + 1));
    if (!loop->heap)
        goto fail_free;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        rc = weft_err_from_errno(errno);
        goto fail_heap;
    }
    loop->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->evfd < 0) {
        rc = weft_err_from_errno(errno);
        goto fail_epoll;
    }
    pthread_mutex_init(&loop->post_mu, NULL);
    weft_loop_update_time(loop);
    weft_io_init(&loop->evio, loop->evfd, run_posts, loop);
    rc = weft_io_start(loop, &loop->evio, WEFT_IO_READ);
    if (rc < 0)
        goto fail_evfd;
    *out = loop;
    return 0;

fail_evfd:
    pthread_mutex_destroy(&loop->post_mu);
    close(loop->evfd);
fail_epoll:
    close(loop->epfd);
fail_heap:
    free(loop->heap);
fail_free:
    free(loop);
    return rc;
}

void weft_loop_free(weft_loop *loop)
{
    if (!loop)
        return;
    post_item *it = loop->post_head;
    while (it) {
        post_item *next = it->next;
        free(it);
        it = next;
    }
    pthread_mutex_destroy(&loop->post_mu);
    close(loop->evfd);
    close(loop->epfd);
    free(loop->heap);
    if (tl_loop == loop)
        tl_loop = NULL;
    free(loop);
}

void weft_loop_stop(weft_loop *loop) { loop->stop = true; }

static void stop_cb(weft_loop *loop, void *arg)
{
    (void)arg;
    loop->stop = true;
}

void weft_loop_stop_async(weft_loop *loop) { weft_loop_post(loop, stop_cb, NULL); }

int weft_loop_post(weft_loop *loop, weft_post_fn fn, void *arg)
{
    post_item *it = malloc(sizeof *it);
    if (!it)
        return WEFT_ENOMEM;
    it->next = NULL;
    it->fn = fn;
    it->arg = arg;
    pthread_mutex_lock(&loop->post_mu);
    if (loop->post_tail)
        loop->post_tail->next = it;
    else
        loop->post_head = it;
    loop->post_tail = it;
    pthread_mutex_unlock(&loop->post_mu);
    uint64_t one = 1;
    while (write(loop->evfd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    return 0;
}

/* ---- fd watchers ---- */

void weft_io_init(weft_io *io, int fd, weft_io_cb cb, void *data)
{
    io->fd = fd;
    io->events = 0;
    io->cb = cb;
    io->data = data;
}

int weft_io_start(weft_loop *loop, weft_io *io, unsigned events)
{
    events &= WEFT_IO_READ | WEFT_IO_WRITE;
    if (events == io->events)
        return 0;
    if (events == 0) {
        weft_io_stop(loop, io);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.events = ((events & WEFT_IO_READ) ? EPOLLIN | EPOLLRDHUP : 0) |
                ((events & WEFT_IO_WRITE) ? EPOLLOUT : 0);
    ev.data.ptr = io;
    int op = io->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(loop->epfd, op, io->fd, &ev) < 0)
        return weft_err_from_errno(errno);
    io->events = events;
    return 0;
}

/* Forget events for io still pending in the batches being dispatched (the
 * innermost run's and those of the runs it is nested in), so a watcher
 * stopped (and perhaps freed) by another callback is not called. */
static void forget_pending(weft_loop *loop, const weft_io *io)
{
    for (ev_batch *b = loop->batch; b; b = b->prev)
        for (int i = b->idx + 1; i < b->n; i++)
            if (b->evs[i].data.ptr == io)
                b->evs[i].data.ptr = NULL;
}

void weft_io_stop(weft_loop *loop, weft_io *io)
{
    if (io->events) {
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        io->events = 0;
        forget_pending(loop, io);
    }
}

/* ---- timers ---- */

static inline void heap_set(weft_loop *loop, uint32_t i, weft_timer *t)
{
    loop->heap[i] = t;
    t->heap_idx = i;
}

static void sift_up(weft_loop *loop, uint32_t i)
{
    weft_timer *t = loop->heap[i];
    while (i > 1) {
        uint32_t parent = i / 2;
        if (loop->heap[parent]->deadline_ms <= t->deadline_ms)
            break;
        heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void sift_down(weft_loop *loop, uint32_t i)
{
    weft_timer *t = loop->heap[i];
    uint32_t n = loop->heap_len;
    for (;;) {
        uint32_t c = i * 2;
        if (c > n)
            break;
        if (c + 1 <= n && loop->heap[c + 1]->deadline_ms < loop->heap[c]->deadline_ms)
            c++;
        if (t->deadline_ms <= loop->heap[c]->deadline_ms)
            break;
        heap_set(loop, i, loop->heap[c]);
        i = c;
    }
    heap_set(loop, i, t);
}

void weft_timer_init(weft_timer *t, weft_timer_cb cb, void *data)
{
    t->deadline_ms = 0;
    t->heap_idx = 0;
    t->cb = cb;
    t->data = data;
}

void weft_timer_start(weft_loop *loop, weft_timer *t, uint64_t after_ms)
{
    uint64_t now = weft_loop_now_ms(loop);
    /* saturate: a huge delay means "never", not a deadline wrapped into the past */
    uint64_t deadline = after_ms > UINT64_MAX - now ? UINT64_MAX : now + after_ms;
    if (t->heap_idx) {
        uint64_t old = t->deadline_ms;
        t->deadline_ms = deadline;
        if (deadline < old)
            sift_up(loop, t->heap_idx);
        else if (deadline > old)
            sift_down(loop, t->heap_idx);
        return;
    }
    if (loop->heap_len == loop->heap_cap) {
        uint32_t ncap = loop->heap_cap * 2;
        weft_timer **nh = realloc(loop->heap, sizeof(*nh) * (ncap + 1));
        if (!nh) {
            /* Out of memory for the loop's own bookkeeping: a lost timer
             * would hang a connection forever, so fail loudly instead. */
            abort();
        }
        loop->heap = nh;
        loop->heap_cap = ncap;
    }
    t->deadline_ms = deadline;
    loop->heap_len++;
    heap_set(loop, loop->heap_len, t);
    sift_up(loop, loop->heap_len);
}

void weft_timer_stop(weft_loop *loop, weft_timer *t)
{
    uint32_t i = t->heap_idx;
    if (!i)
        return;
    weft_timer *last = loop->heap[loop->heap_len];
    loop->heap_len--;
    t->heap_idx = 0;
    if (last == t)
        return;
    heap_set(loop, i, last);
    if (i > 1 && loop->heap[i / 2]->deadline_ms > last->deadline_ms)
        sift_up(loop, i);
    else
        sift_down(loop, i);
}

static void run_timers(weft_loop *loop)
{
    uint64_t now = weft_loop_now_ms(loop);
    /* Bound the work per wake-up so timers re-armed for "now" cannot spin. */
    uint32_t budget = loop->heap_len;
    while (loop->heap_len && budget--) {
        weft_timer *t = loop->heap[1];
        if (t->deadline_ms > now)
            break;
        weft_timer_stop(loop, t);
        t->cb(loop, t);
    }
}

static int next_timeout(const weft_loop *loop)
{
    if (!loop->heap_len)
        return -1;
    uint64_t now = weft_loop_now_ms(loop);
    uint64_t d = loop->heap[1]->deadline_ms;
    if (d <= now)
        return 0;
    uint64_t diff = d - now;
    return diff > 60000 ? 60000 : (int)diff;
}

int weft_loop_run(weft_loop *loop)
{
    struct epoll_event evs[MAX_EVENTS];
    int rc = 0;
    /* restored on return, so weft_loop_current() is NULL again after the
     * outermost run (and correct again after a nested one) */
    weft_loop *prev_loop = tl_loop;
    ev_batch b = {evs, 0, 0, loop->batch};
    loop->batch = &b;
    tl_loop = loop;
    loop->stop = false;
    weft_loop_update_time(loop);
    while (!loop->stop) {
        b.n = 0;
        int n = epoll_wait(loop->epfd, evs, MAX_EVENTS, next_timeout(loop));
        weft_loop_update_time(loop);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = weft_err_from_errno(errno);
            break;
        }
        b.n = n;
        for (b.idx = 0; b.idx < n; b.idx++) {
            weft_io *io = evs[b.idx].data.ptr;
            if (!io) /* stopped by an earlier callback in this batch */
                continue;
            unsigned e = 0;
            uint32_t re = evs[b.idx].events;
            if (re & (EPOLLIN | EPOLLRDHUP))
                e |= WEFT_IO_READ;
            if (re & EPOLLOUT)
                e |= WEFT_IO_WRITE;
            /* EPOLLHUP alone (pipe EOF) also reports READ: readers see
             * the end of input by reading 0 bytes */
            if (re & EPOLLHUP)
                e |= WEFT_IO_HUP | WEFT_IO_READ;
            if (re & EPOLLRDHUP)
                e |= WEFT_IO_HUP;
            if (re & EPOLLERR)
                e |= WEFT_IO_ERROR | WEFT_IO_READ;
            io->cb(loop, io, e);
        }
        b.n = 0;
        run_timers(loop);
    }
    loop->batch = b.prev;
    tl_loop = prev_loop;
    return rc;
}

/* Used by the runtime (rt.c) only; not part of the public API. */
void weft_loop_set_index_(weft_loop *loop, int index) { loop->index = index; }
