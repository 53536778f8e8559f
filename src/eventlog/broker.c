/*
 * broker.c — Kafka connections for `weft log`: framing, dispatch, the
 * in-order response queue and zero-copy sends.
 *
 * Framing: every request is a 4-byte big-endian size then that many bytes
 * (request header v1: api_key i16, api_version i16, correlation_id i32,
 * client_id nullable string, then the body). A size below 8 or above
 * max_request closes the connection (Kafka does the same: there is no way
 * to answer a frame that cannot be read).
 *
 * Requests are handled as soon as they are read, straight from the input
 * buffer (a produced batch is validated, patched and written to the log
 * without a copy). Their responses may complete later — a produce waits
 * for its fsync, a fetch long-polls, a join waits for the group — but go
 * out strictly in request order: each request has a kreq in the
 * connection's FIFO and only the head is written. That lets producers
 * pipeline (many acks=all produce requests share one group-committed
 * fsync) while keeping Kafka's ordering guarantee. A connection stops
 * reading while it has too many requests in flight or too much queued
 * output (backpressure), and resumes when they drain.
 *
 * A response is a list of parts: bytes of the kreq's buffer, and file
 * ranges of fetched batches written with sendfile(2) straight from the
 * segment files (the slices keep the segment open).
 */
#include "elog.h"

#include "http/http_int.h"
#include "weft/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_INFLIGHT 1024
#define READ_CHUNK 65536
#define IDLE_MS (10 * 60 * 1000) /* Kafka's connections.max.idle.ms */

struct kconn {
    kconn *next, *prev;
    elog *e;
    weft_io io;
    weft_timer idle;
    weft_timer resume; /* reading resumes with whole frames already buffered */
    weft_buf in;
    kreq *head, *tail;
    size_t inflight;
    bool dead;
    bool busy; /* handlers running from conn_read: flushes wait until it ends */
    char peer[64];
};

typedef struct klistener {
    int fd;
    weft_io io;
    char addr[128];
} klistener;

static klistener g_listeners[8];
static size_t g_nlisteners;

void elog_opts_default(elog_opts *o)
{
    memset(o, 0, sizeof *o);
    o->auto_create = true;
    o->defaults.partitions = 1;
    plog_opts_default(&o->defaults.log);
    o->max_request = 100u << 20;
    o->group_initial_delay_ms = 3000;
    o->retention_check_ms = 30000;
}

/* ---- responses ---- */

kf_writer *kreq_writer(kreq *q) { return &q->w; }
const char *kreq_peer(const kreq *q) { return q->c ? q->c->peer : ""; }

static void add_part(kreq *q, kpartv p)
{
    if (q->nparts == q->cap_parts) {
        size_t nc = q->cap_parts ? q->cap_parts * 2 : 4;
        kpartv *np = realloc(q->parts, nc * sizeof *np);
        if (!np) {
            q->w.err = true;
            if (p.file)
                plog_slice_release(&p.slice);
            return;
        }
        q->parts = np;
        q->cap_parts = nc;
    }
    q->parts[q->nparts++] = p;
}

static void cut_mem(kreq *q)
{
    size_t used = weft_buf_used(&q->out);
    if (used > q->cut) {
        add_part(q, (kpartv){.file = false, .mem_off = q->cut, .mem_len = used - q->cut});
        q->cut = used;
    }
}

void kreq_add_slice(kreq *q, plog_slice *s)
{
    cut_mem(q);
    add_part(q, (kpartv){.file = true, .slice = *s});
    memset(s, 0, sizeof *s);
}

static void conn_flush(kconn *c);
static void conn_close(kconn *c);

void kreq_complete(kreq *q)
{
    if (q->done)
        return;
    q->done = true;
    if (q->c && q->start_us) { /* a timed API (parse_frame) */
        elog *e = q->c->e;
        weft_metric_observe(e->m, q->api_key == KA_PRODUCE ? e->m_produce_dur : e->m_fetch_dur,
                            (double)(weft_now_us() - q->start_us) / 1e6);
    }
    if (!q->no_response && !q->failed) {
        cut_mem(q);
        size_t total = 0;
        for (size_t i = 0; i < q->nparts; i++)
            total += q->parts[i].file ? q->parts[i].slice.len : q->parts[i].mem_len;
        if (q->w.err || total < 8 || total - 4 > INT32_MAX)
            q->failed = true; /* could not build it: the client must reconnect */
        else
            kf_w_patch_i32(&q->w, 0, (int32_t)(total - 4));
    }
    if (q->c && q == q->c->head && !q->c->busy)
        conn_flush(q->c);
}

static void kreq_free(kreq *q)
{
    for (size_t i = 0; i < q->nparts; i++)
        if (q->parts[i].file)
            plog_slice_release(&q->parts[i].slice);
    free(q->parts);
    weft_buf_release(&q->out);
    free(q);
}

/* ---- connections ---- */

static uint32_t frame_size(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Whether c->in holds a whole frame (or a size conn_parse refuses). */
static bool frame_buffered(const kconn *c)
{
    size_t used = weft_buf_used(&c->in);
    if (used < 4)
        return false;
    uint32_t size = frame_size((const uint8_t *)weft_buf_rptr(&c->in));
    return size < 8 || size > c->e->o.max_request || used >= 4 + (size_t)size;
}

static void conn_interest(kconn *c)
{
    if (c->dead)
        return;
    bool want_read = c->inflight < MAX_INFLIGHT && !c->e->draining;
    unsigned ev = (want_read ? WEFT_IO_READ : 0) | (c->head && c->head->done ? WEFT_IO_WRITE : 0);
    /* Parsing stopped at the in-flight limit with frames still in c->in: a
     * pipelining client may have sent them all and now only waits for
     * answers, so no read event will come for them. Handle them from the
     * loop (not here: this runs inside kreq_complete, from other
     * connections' and groups' code). */
    if (want_read && frame_buffered(c) && !weft_timer_active(&c->resume))
        weft_timer_start(c->e->loop, &c->resume, 0);
    weft_io_start(c->e->loop, &c->io, ev);
}

static void conn_close(kconn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    elog *e = c->e;
    weft_io_stop(e->loop, &c->io);
    weft_timer_stop(e->loop, &c->idle);
    weft_timer_stop(e->loop, &c->resume);
    close(c->io.fd);
    /* parked requests drop out of the topics and groups that hold them */
    for (kreq *q = c->head; q; q = q->next) {
        q->c = NULL;
        if (!q->done && q->cancel)
            q->cancel(q);
    }
    elog_groups_conn_closed(e->groups, c);
    while (c->head) { /* cancel hooks unlinked every parked request */
        kreq *q = c->head;
        c->head = q->next;
        kreq_free(q);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        e->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    e->nconns--;
    weft_metric_gauge_add(e->m, e->m_conns, -1);
    weft_buf_release(&c->in);
    free(c);
}

/* Write as much of the done head requests as the socket takes. */
static void conn_flush(kconn *c)
{
    while (c->head && c->head->done && !c->dead) {
        kreq *q = c->head;
        if (q->failed) {
            conn_close(c);
            return;
        }
        while (!q->no_response && q->part_i < q->nparts) {
            kpartv *p = &q->parts[q->part_i];
            ssize_t n;
            if (p->file) {
                off_t pos = p->slice.pos + (off_t)q->part_off;
                n = sendfile(c->io.fd, p->slice.fd, &pos, p->slice.len - q->part_off);
            } else {
                n = send(c->io.fd, weft_buf_rptr(&q->out) + p->mem_off + q->part_off,
                         p->mem_len - q->part_off, MSG_NOSIGNAL);
            }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    conn_interest(c);
                    return;
                }
                conn_close(c);
                return;
            }
            size_t len = p->file ? p->slice.len : p->mem_len;
            if (n == 0 && len > q->part_off) { /* file shorter than promised */
                conn_close(c);
                return;
            }
            q->part_off += (size_t)n;
            if (q->part_off == len) {
                q->part_i++;
                q->part_off = 0;
            }
        }
        c->head = q->next;
        if (!c->head)
            c->tail = NULL;
        c->inflight--;
        kreq_free(q);
    }
    conn_interest(c);
}

static int parse_frame(kconn *c, const uint8_t *p, size_t n);

/* The fuzz harness's entry (tests/fuzz/fuzz_kafka_request.c): one request
 * frame (without its size prefix) through the decoders and handlers, on a
 * detached request; anything it parks is cancelled. */
int elog_handle_frame(elog *e, const uint8_t *p, size_t n)
{
    kconn c = {.e = e, .busy = true}; /* never flushed: there is no socket */
    snprintf(c.peer, sizeof c.peer, "fuzz");
    int rc = parse_frame(&c, p, n);
    while (c.head) {
        kreq *q = c.head;
        c.head = q->next;
        q->c = NULL;
        if (!q->done && q->cancel)
            q->cancel(q);
        kreq_free(q);
    }
    return rc;
}

static int parse_frame(kconn *c, const uint8_t *p, size_t n)
{
    elog *e = c->e;
    kf_reader r;
    kf_reader_init(&r, p, n);
    int16_t key = kf_i16(&r), ver = kf_i16(&r);
    int32_t corr = kf_i32(&r);
    weft_str client = kf_str(&r);
    if (!kf_ok(&r))
        return WEFT_EPROTO;
    kreq *q = calloc(1, sizeof *q);
    if (!q)
        return WEFT_ENOMEM;
    q->c = c;
    q->api_key = key;
    q->api_version = ver;
    q->corr = corr;
    if (key == KA_PRODUCE || key == KA_FETCH) /* the two timed APIs */
        q->start_us = weft_now_us();
    size_t idn = client.p ? client.n : 0; /* a null client id is p == NULL */
    if (idn > sizeof q->client_id - 1)
        idn = sizeof q->client_id - 1;
    if (idn)
        memcpy(q->client_id, client.p, idn); /* calloc'd: NUL-terminated */
    weft_buf_init(&q->out, e->o.max_request + 1024);
    q->w.b = &q->out;
    kf_w_i32(&q->w, 0); /* size, patched at completion */
    kf_w_i32(&q->w, corr);
    if (c->tail)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    c->inflight++;
    weft_metric_inc(e->m, e->m_requests);
    elog_handle(e, q, &r);
    return 0;
}

/* Handle every whole frame in c->in while below the in-flight limit.
 * false: the connection closed. */
static bool conn_parse(kconn *c)
{
    elog *e = c->e;
    while (!c->dead && weft_buf_used(&c->in) >= 4 && c->inflight < MAX_INFLIGHT) {
        const uint8_t *p = (const uint8_t *)weft_buf_rptr(&c->in);
        uint32_t size = frame_size(p);
        if (size < 8 || size > e->o.max_request) {
            weft_log(WEFT_LOG_WARN, "kafka: bad frame size; closing", WEFT_KV_STR("peer", c->peer),
                     WEFT_KV_UINT("size", size));
            conn_close(c);
            return false;
        }
        if (weft_buf_used(&c->in) < 4 + (size_t)size)
            break;
        c->busy = true;
        int rc = parse_frame(c, p + 4, size);
        c->busy = false;
        if (rc < 0 || c->dead) {
            if (!c->dead) {
                weft_log(WEFT_LOG_WARN, "kafka: malformed request header; closing",
                         WEFT_KV_STR("peer", c->peer));
                conn_close(c);
            }
            return false;
        }
        weft_buf_consume(&c->in, 4 + (size_t)size);
    }
    return !c->dead;
}

static void conn_read(kconn *c)
{
    elog *e = c->e;
    /* frames left in the buffer when the in-flight limit stopped parsing */
    if (!conn_parse(c))
        return;
    for (int round = 0; round < 16 && !c->dead && c->inflight < MAX_INFLIGHT; round++) {
        if (weft_buf_reserve(&c->in, READ_CHUNK) < 0) {
            conn_close(c);
            return;
        }
        ssize_t n = recv(c->io.fd, weft_buf_wptr(&c->in), weft_buf_avail(&c->in), 0);
        if (n == 0) {
            conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_close(c);
            break;
        }
        weft_buf_commit(&c->in, (size_t)n);
        weft_timer_start(e->loop, &c->idle, IDLE_MS);
        if (!conn_parse(c))
            return;
        if ((size_t)n < READ_CHUNK)
            break;
    }
    if (!c->dead) {
        weft_buf_shrink_if_empty(&c->in);
        conn_flush(c);
    }
}

static void resume_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    conn_read(t->data);
}

static void conn_cb(weft_loop *loop, weft_io *io, unsigned ev)
{
    (void)loop;
    kconn *c = io->data;
    if (ev & (WEFT_IO_ERROR)) {
        conn_close(c);
        return;
    }
    if (ev & WEFT_IO_WRITE)
        conn_flush(c);
    if (!c->dead && (ev & (WEFT_IO_READ | WEFT_IO_HUP)))
        conn_read(c);
}

static void idle_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    kconn *c = t->data;
    if (c->head) { /* something is in flight: not idle */
        weft_timer_start(c->e->loop, &c->idle, IDLE_MS);
        return;
    }
    conn_close(c);
}

static void accept_cb(weft_loop *loop, weft_io *io, unsigned ev)
{
    (void)ev;
    elog *e = io->data;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(io->fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        kconn *c = e->draining ? NULL : calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->e = e;
        weft_http_format_addr(&sa, c->peer, sizeof c->peer);
        weft_buf_init(&c->in, e->o.max_request + 4 + READ_CHUNK);
        weft_io_init(&c->io, fd, conn_cb, c);
        weft_timer_init(&c->idle, idle_cb, c);
        weft_timer_init(&c->resume, resume_cb, c);
        weft_timer_start(loop, &c->idle, IDLE_MS);
        c->next = e->conns;
        if (e->conns)
            e->conns->prev = c;
        e->conns = c;
        e->nconns++;
        weft_metric_gauge_add(e->m, e->m_conns, 1);
        conn_interest(c);
    }
}

/* ---- lifecycle ---- */

int elog_listen(elog *e, const char *hostport)
{
    if (g_nlisteners == WEFT_ARRAY_LEN(g_listeners))
        return WEFT_ETOOBIG;
    struct sockaddr_storage sa;
    socklen_t len;
    if (weft_http_parse_hostport(hostport, &sa, &len) < 0)
        return WEFT_EADDR;
    int fd, rc = weft_tcp_listen(&sa, len, false, &fd);
    if (rc < 0)
        return rc;
    klistener *l = &g_listeners[g_nlisteners++];
    l->fd = fd;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    weft_http_format_addr(&sa, l->addr, sizeof l->addr);
    if (!e->adv_host[0]) { /* Metadata names the first listener unless told otherwise */
        const char *colon = strrchr(l->addr, ':');
        size_t hl = (size_t)(colon - l->addr);
        if (l->addr[0] == '[')
            snprintf(e->adv_host, sizeof e->adv_host, "%.*s", (int)hl - 2, l->addr + 1);
        else
            snprintf(e->adv_host, sizeof e->adv_host, "%.*s", (int)hl, l->addr);
        if (!strcmp(e->adv_host, "0.0.0.0") || !strcmp(e->adv_host, "::"))
            snprintf(e->adv_host, sizeof e->adv_host, "127.0.0.1");
        e->adv_port = atoi(colon + 1);
    }
    return 0;
}

const char *elog_address(const elog *e)
{
    (void)e;
    return g_nlisteners ? g_listeners[0].addr : "";
}

elog *elog_new(const elog_opts *o)
{
    elog *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->o = *o;
    e->data_dir = strdup(o->data_dir ? o->data_dir : "");
    if (o->advertise_host)
        snprintf(e->adv_host, sizeof e->adv_host, "%s", o->advertise_host);
    e->adv_port = o->advertise_port;
    e->m = weft_metrics_global();
    weft_metrics_counter(e->m, "weft_log_requests_total", "Kafka requests received.", NULL,
                         &e->m_requests);
    weft_metrics_counter(e->m, "weft_log_produced_records_total", "Records appended.", NULL,
                         &e->m_produced_records);
    weft_metrics_counter(e->m, "weft_log_produced_bytes_total", "Batch bytes appended.", NULL,
                         &e->m_produced_bytes);
    weft_metrics_counter(e->m, "weft_log_fetched_bytes_total", "Batch bytes sent to consumers.",
                         NULL, &e->m_fetched_bytes);
    weft_metrics_gauge(e->m, "weft_log_connections", "Open Kafka connections.", NULL, &e->m_conns);
    weft_metrics_counter(e->m, "weft_log_request_errors_total",
                         "Partitions or requests answered with an error code.", NULL, &e->m_errors);
    /* finer than the HTTP buckets: a produce is tens of µs, or one fsync */
    static const double dur[] = {0.00005, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004,
                                 0.0005,  0.0006, 0.0007,  0.0008, 0.0009,  0.001,  0.0015,
                                 0.002,   0.003,  0.005,   0.01,   0.025,   0.05,   0.1,
                                 0.25,    0.5,    1,       2.5,    5,       10};
    static const char *const api[] = {"api=\"produce\"", "api=\"fetch\""};
    weft_metric *id[] = {&e->m_produce_dur, &e->m_fetch_dur};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(api); i++)
        weft_metrics_histogram(e->m, "weft_log_request_duration_seconds",
                               "From reading a request to its response being complete (a "
                               "produce with acks=all includes its fsync, a fetch its long-poll "
                               "wait).",
                               api[i], dur, WEFT_ARRAY_LEN(dur), id[i]);
    if (!e->data_dir) {
        free(e);
        return NULL;
    }
    return e;
}

static void retention_cb(weft_loop *loop, weft_timer *t)
{
    elog *e = t->data;
    int64_t now = weft_loop_wall_s(loop) * 1000;
    for (size_t i = 0; i < e->ntopics; i++)
        for (int32_t p = 0; p < e->topics[i]->npart; p++)
            plog_enforce_retention(e->topics[i]->parts[p].log, now);
    weft_timer_start(loop, t, e->o.retention_check_ms);
}

int elog_start(elog *e, weft_loop *loop)
{
    e->loop = loop;
    /* producer ids: unique across restarts while the clock moves forward */
    e->next_producer_id = weft_loop_wall_s(loop) * 1000000;
    int rc = elog_topics_load(e);
    if (rc < 0)
        return rc;
    if (!(e->groups = elog_groups_new(e)))
        return WEFT_ENOMEM;
    for (size_t i = 0; i < g_nlisteners; i++) {
        weft_io_init(&g_listeners[i].io, g_listeners[i].fd, accept_cb, e);
        if ((rc = weft_io_start(loop, &g_listeners[i].io, WEFT_IO_READ)) < 0)
            return rc;
        weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "log"),
                 WEFT_KV_STR("addr", g_listeners[i].addr));
    }
    weft_timer_init(&e->retention_timer, retention_cb, e);
    weft_timer_start(loop, &e->retention_timer, e->o.retention_check_ms);
    return 0;
}

/* Stop accepting and reading; requests in flight finish (produces reach
 * disk), then the loop stops. */
static void drain_check(weft_loop *loop, weft_timer *t)
{
    elog *e = t->data;
    bool busy = false;
    for (kconn *c = e->conns; c; c = c->next)
        for (kreq *q = c->head; q; q = q->next)
            if (!q->done && q->api_key == KA_PRODUCE)
                busy = true;
    if (busy) {
        weft_timer_start(loop, t, 10);
        return;
    }
    if (e->drained)
        e->drained(loop, e->drained_ud);
    else
        weft_loop_stop(loop);
}

void elog_drain(elog *e) { elog_drain_then(e, NULL, NULL); }

void elog_drain_then(elog *e, void (*done)(weft_loop *loop, void *ud), void *ud)
{
    e->drained = done;
    e->drained_ud = ud;
    e->draining = true;
    for (size_t i = 0; i < g_nlisteners; i++)
        weft_io_stop(e->loop, &g_listeners[i].io);
    for (kconn *c = e->conns; c; c = c->next)
        conn_interest(c);
    weft_timer_stop(e->loop, &e->retention_timer);
    weft_timer_init(&e->retention_timer, drain_check, e);
    weft_timer_start(e->loop, &e->retention_timer, 0);
}

void elog_stop(elog *e)
{
    weft_timer_stop(e->loop, &e->retention_timer);
    while (e->conns)
        conn_close(e->conns);
    elog_groups_free(e->groups);
    e->groups = NULL;
    elog_topics_close(e);
    for (size_t i = 0; i < g_nlisteners; i++)
        close(g_listeners[i].fd);
    g_nlisteners = 0;
}

void elog_free(elog *e)
{
    if (!e)
        return;
    free(e->data_dir);
    free(e);
}
