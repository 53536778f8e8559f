/*
 * client.c — asynchronous HTTP/1.1 client with a per-loop keep-alive pool.
 *
 * One weft_http_client belongs to one loop (one worker). Every request gets
 * a connection of its own at submit time: an idle pooled connection to the
 * same host:port if there is one (most recently used first, since it is the
 * least likely to have been closed by the peer), else a new non-blocking
 * connect. With max_conns_per_host set, a request over the limit waits in
 * a per-host FIFO (at most max_pending_per_host of them, each within its
 * timeout) and a zero-delay dispatch timer hands it the next connection
 * slot that frees up or goes idle; without it there is no limit and
 * admission control belongs to the resilience layer above.
 *
 * The response is parsed in place from a small per-connection input buffer
 * (head limit + one read chunk) with the shared codec; body bytes are handed
 * to on_body straight from that buffer and dropped, so a 1 GiB body costs no
 * more memory than a 1 KiB one. A connection goes back to the pool only when
 * the exchange ended cleanly: HTTP keep-alive, framing known (not EOF
 * delimited), request fully sent, no stray bytes left. Idle connections keep
 * a read watcher: EOF or unsolicited bytes close them at once, and a timer
 * closes them after idle_timeout_ms.
 *
 * A request that fails on a *reused* connection before any response byte
 * arrived (EOF, reset, write error) is retried once on a fresh connection:
 * it most likely lost a race with the idle close. The server may also have
 * processed it and died before answering, so a caller sets no_replay for
 * requests that must not run twice (non-idempotent ones).
 *
 * Re-entrancy: callbacks may cancel their own request, cancel other
 * requests and submit new ones (not free the client). Two rules make that
 * safe. (1) A request is never freed while one of its callbacks is running
 * (in_cb): cancel only detaches it and the code that made the call frees it
 * on return. (2) Closed connections are parked on a graveyard list and freed
 * by a zero-delay timer, because epoll may already have handed the loop an
 * event for them in the current batch; their watcher callback sees
 * CN_CLOSED and ignores it.
 *
 * Options: response_timeout_ms == 0 means no response timeout; a zero
 * connect_timeout_ms, idle_timeout_ms or max_response_head means the
 * default; max_idle_per_host == 0 disables pooling. Host names other than
 * IP literals are resolved with getaddrinfo(), which blocks the loop; that
 * is acceptable for now (upstreams are mostly IP addresses from the
 * registry) and is the place to plug in an asynchronous resolver later.
 * User headers may not set Content-Length or Transfer-Encoding: the client
 * owns the framing of what it sends (WEFT_EINVAL).
 */
#include "http/codec.h"
#include "weft/http.h"
#include "weft/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define SEND_HIGH_WATER (256 * 1024) /* streamed request bytes queued before pushing back */

enum conn_state { CN_CONNECTING = 1, CN_ACTIVE, CN_IDLE, CN_CLOSED };
enum req_phase { Q_CONNECT = 1, Q_HEAD, Q_BODY, Q_QUEUED };

typedef struct host_pool host_pool;
typedef struct conn conn;

struct host_pool {
    host_pool *next;
    char *host;
    uint16_t port;
    conn *idle_head; /* most recently used first */
    uint32_t nidle;
    uint32_t nconns;  /* open connections (connecting, active, idle) */
    weft_http_creq *wait_head, *wait_tail; /* FIFO of requests waiting for a connection */
    uint32_t nwait;
};

struct conn {
    weft_http_client *c;
    host_pool *hp;
    int fd;
    int state;          /* enum conn_state */
    bool reused;        /* the current request came from the pool */
    weft_io io;
    weft_timer idle_timer;
    weft_buf in;
    weft_http_creq *q;  /* active request (CONNECTING/ACTIVE) */
    conn *prev, *next;  /* idle list of hp, or graveyard (next only) */
    bool counted;       /* included in hp->nconns */
};

struct weft_http_creq {
    weft_http_client *c;
    weft_http_creq *prev, *next; /* client's in-flight list */
    host_pool *hp;
    conn *cn;
    int method;
    char *out; /* serialized request, kept until the end for a retry */
    size_t out_len, out_off, out_cap;
    uint32_t timeout_ms; /* response timeout, 0 = none */
    weft_timer timer;    /* connect / response timeout, deferred errors */
    int phase;           /* enum req_phase */
    int pending_err;     /* failure found at submit, reported from the timer */
    bool got_bytes;      /* a response byte arrived: no retry any more */
    uint64_t start_ms;   /* submitted (loop clock) */
    uint32_t wait_ms;    /* spent getting a connection (queue, connect, resend) */
    bool retried;
    bool no_replay; /* never resend after a stale pooled connection */
    bool linked;
    bool in_cb;
    bool canceled;
    bool finishing; /* on_done running */
    bool paused;    /* response body reading held back by the caller */
    bool stream;    /* body fed by weft_http_creq_write */
    bool stream_chunked;
    bool stream_ended;
    int64_t stream_left; /* Content-Length bytes still expected from the caller */
    void (*on_send_drain)(weft_http_creq *q, void *ud);
    int body_kind;
    uint64_t body_left;
    weft_chunked chunked;
    weft_http_parser parser;
    void (*on_response)(weft_http_creq *q, const weft_http_cresp *resp, void *ud);
    void (*on_body)(weft_http_creq *q, weft_str data, void *ud);
    void (*on_done)(weft_http_creq *q, int err, void *ud);
    void *ud;
    weft_http_creq *next_free;
    weft_http_creq *wait_next; /* hp's wait queue */
    bool queued;
    /* Large parse results last: they are always written before being read,
     * so a recycled request zeroes only the fields above (see req_alloc). */
    weft_http_head head;
    weft_str names[WEFT_HTTP_MAX_HEADERS_CAP];
    weft_str values[WEFT_HTTP_MAX_HEADERS_CAP];
};

struct weft_http_client {
    weft_loop *loop;
    weft_http_client_opts opts;
    weft_http_limits limits;
    host_pool *pools;
    weft_http_creq *reqs;
    conn *graveyard;
    weft_timer reap_timer;
    bool freeing;
    weft_http_client_stats st;
    weft_http_creq *free_reqs; /* recycled request structs (~9 KiB each) */
    uint32_t nfree;
    weft_timer dispatch_timer; /* hands freed connection slots to waiting requests */
};

static void conn_io_cb(weft_loop *loop, weft_io *io, unsigned events);
static void req_timer_cb(weft_loop *loop, weft_timer *t);
static int req_start(weft_http_creq *q, bool allow_pool);

void weft_http_client_opts_default(weft_http_client_opts *o)
{
    o->connect_timeout_ms = 2000;
    o->response_timeout_ms = 30000;
    o->idle_timeout_ms = 30000;
    o->max_idle_per_host = 64;
    o->max_response_head = 32768;
    o->max_conns_per_host = 0;
    o->max_pending_per_host = 1024;
}

/* ---- connections ---- */

static void reap_cb(weft_loop *loop, weft_timer *t)
{
    weft_http_client *c = t->data;
    (void)loop;
    conn *cn = c->graveyard;
    c->graveyard = NULL;
    while (cn) {
        conn *next = cn->next;
        weft_buf_release(&cn->in);
        free(cn);
        cn = next;
    }
}

static void idle_unlink(conn *cn)
{
    host_pool *hp = cn->hp;
    if (cn->prev)
        cn->prev->next = cn->next;
    else
        hp->idle_head = cn->next;
    if (cn->next)
        cn->next->prev = cn->prev;
    cn->prev = cn->next = NULL;
    hp->nidle--;
    cn->c->st.idle--;
}

/* Close the socket and park the struct on the graveyard (freed by a timer). */
static void conn_close(conn *cn)
{
    weft_http_client *c = cn->c;
    if (cn->state == CN_CLOSED)
        return;
    if (cn->state == CN_IDLE)
        idle_unlink(cn);
    weft_io_stop(c->loop, &cn->io);
    weft_timer_stop(c->loop, &cn->idle_timer);
    close(cn->fd);
    cn->fd = -1;
    cn->state = CN_CLOSED;
    if (cn->counted) {
        cn->counted = false;
        cn->hp->nconns--;
        if (cn->hp->wait_head && !c->freeing)
            weft_timer_start(c->loop, &c->dispatch_timer, 0);
    }
    if (cn->q)
        cn->q->cn = NULL;
    cn->q = NULL;
    cn->prev = NULL;
    cn->next = c->graveyard;
    c->graveyard = cn;
    if (!c->freeing)
        weft_timer_start(c->loop, &c->reap_timer, 0);
}

static void idle_timeout_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    conn *cn = t->data;
    weft_log(WEFT_LOG_DEBUG, "http client: idle connection expired",
             WEFT_KV_STR("host", cn->hp->host), WEFT_KV_UINT("port", cn->hp->port));
    conn_close(cn);
}

/* Resolve host:port into *ss: IP literals directly, names via getaddrinfo
 * (blocking; see the top of the file). */
static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    char lit[INET6_ADDRSTRLEN + 1];
    size_t hl = strlen(host);
    memset(ss, 0, sizeof *ss);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof lit) {
        memcpy(lit, host + 1, hl - 2);
        lit[hl - 2] = '\0';
        host = lit;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *len = sizeof *s4;
        return 0;
    }
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *len = sizeof *s6;
        return 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, NULL, &hints, &res);
    if (gai != 0 || !res) {
        weft_log(WEFT_LOG_DEBUG, "http client: cannot resolve", WEFT_KV_STR("host", host),
                 WEFT_KV_STR("error", gai_strerror(gai)));
        if (res)
            freeaddrinfo(res);
        return WEFT_ENOTFOUND;
    }
    int rc = WEFT_ENOTFOUND;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
            ai->ai_addrlen <= sizeof *ss) {
            memcpy(ss, ai->ai_addr, ai->ai_addrlen);
            *len = ai->ai_addrlen;
            if (ai->ai_family == AF_INET)
                s4->sin_port = htons(port);
            else
                s6->sin6_port = htons(port);
            rc = 0;
            break;
        }
    }
    freeaddrinfo(res);
    return rc;
}

static int connect_err(int e)
{
    switch (e) {
    case ECONNREFUSED: return WEFT_EREFUSED;
    case ETIMEDOUT: return WEFT_ETIMEDOUT;
    case ECONNRESET: return WEFT_ERESET;
    default: return weft_err_from_errno(e);
    }
}

/* Start a non-blocking connect to hp. On success *out is CONNECTING (or
 * already ACTIVE if connect() completed at once). */
static int conn_open(weft_http_client *c, host_pool *hp, conn **out)
{
    int rc;
    struct sockaddr_storage ss;
    socklen_t slen = 0;
    rc = resolve(hp->host, hp->port, &ss, &slen);
    if (rc < 0)
        return rc;
    conn *cn = calloc(1, sizeof *cn);
    if (!cn)
        return WEFT_ENOMEM;
    cn->c = c;
    cn->hp = hp;
    weft_buf_init(&cn->in, (size_t)c->opts.max_response_head + READ_CHUNK);
    weft_timer_init(&cn->idle_timer, idle_timeout_cb, cn);
    cn->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cn->fd < 0) {
        rc = weft_err_from_errno(errno);
        goto fail_free;
    }
    int one = 1;
    setsockopt(cn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    weft_io_init(&cn->io, cn->fd, conn_io_cb, cn);
    c->st.connects++;
    int r;
    do {
        r = connect(cn->fd, (struct sockaddr *)&ss, slen);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        cn->state = CN_ACTIVE;
    } else if (errno == EINPROGRESS) {
        cn->state = CN_CONNECTING;
    } else {
        rc = connect_err(errno);
        weft_log(WEFT_LOG_DEBUG, "http client: connect failed", WEFT_KV_STR("host", hp->host),
                 WEFT_KV_UINT("port", hp->port), WEFT_KV_STR("error", weft_strerror(rc)));
        goto fail_close_fd;
    }
    cn->counted = true;
    hp->nconns++;
    *out = cn;
    return 0;

fail_close_fd:
    close(cn->fd);
fail_free:
    free(cn);
    return rc;
}

static void pool_put(conn *cn)
{
    weft_http_client *c = cn->c;
    host_pool *hp = cn->hp;
    if (c->freeing || hp->nidle >= c->opts.max_idle_per_host) {
        conn_close(cn);
        return;
    }
    cn->q = NULL;
    cn->reused = false;
    weft_buf_shrink_if_empty(&cn->in);
    if (weft_io_start(c->loop, &cn->io, WEFT_IO_READ) < 0) {
        conn_close(cn);
        return;
    }
    cn->state = CN_IDLE;
    cn->prev = NULL;
    cn->next = hp->idle_head;
    if (hp->idle_head)
        hp->idle_head->prev = cn;
    hp->idle_head = cn;
    hp->nidle++;
    c->st.idle++;
    weft_timer_start(c->loop, &cn->idle_timer, c->opts.idle_timeout_ms);
    if (hp->wait_head)
        weft_timer_start(c->loop, &c->dispatch_timer, 0);
}

static conn *pool_take(host_pool *hp)
{
    conn *cn = hp->idle_head;
    if (!cn)
        return NULL;
    idle_unlink(cn);
    weft_timer_stop(cn->c->loop, &cn->idle_timer);
    cn->state = CN_ACTIVE;
    return cn;
}

/* Close hp's least recently used idle connection (the list's tail). */
static void close_lru_idle(host_pool *hp)
{
    conn *cn = hp->idle_head;
    while (cn && cn->next)
        cn = cn->next;
    if (cn)
        conn_close(cn);
}

static host_pool *pool_find(weft_http_client *c, const char *host, uint16_t port)
{
    for (host_pool *hp = c->pools; hp; hp = hp->next)
        if (hp->port == port && strcasecmp(hp->host, host) == 0)
            return hp;
    host_pool *hp = calloc(1, sizeof *hp);
    if (!hp)
        return NULL;
    hp->host = strdup(host);
    if (!hp->host) {
        free(hp);
        return NULL;
    }
    hp->port = port;
    hp->next = c->pools;
    c->pools = hp;
    return hp;
}

/* ---- request lifecycle ---- */

static void req_unlink(weft_http_creq *q)
{
    weft_http_client *c = q->c;
    if (!q->linked)
        return;
    if (q->prev)
        q->prev->next = q->next;
    else
        c->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
    q->linked = false;
}

static void unqueue(weft_http_creq *q)
{
    host_pool *hp = q->hp;
    if (!q->queued)
        return;
    weft_http_creq **pp = &hp->wait_head, *prev = NULL;
    while (*pp && *pp != q) {
        prev = *pp;
        pp = &(*pp)->wait_next;
    }
    if (*pp) {
        *pp = q->wait_next;
        if (hp->wait_tail == q)
            hp->wait_tail = prev;
        hp->nwait--;
    }
    q->wait_next = NULL;
    q->queued = false;
}

/* Drop every tie to the loop: connection (closed), timer, list. */
static void req_detach(weft_http_creq *q)
{
    unqueue(q);
    if (q->cn)
        conn_close(q->cn);
    weft_timer_stop(q->c->loop, &q->timer);
    req_unlink(q);
}

#define MAX_FREE_REQS 64

static weft_http_creq *req_alloc(weft_http_client *c)
{
    weft_http_creq *q = c->free_reqs;
    if (q) {
        c->free_reqs = q->next_free;
        c->nfree--;
        char *out = q->out;
        size_t cap = q->out_cap;
        memset(q, 0, offsetof(weft_http_creq, head));
        q->out = out;
        q->out_cap = cap;
        return q;
    }
    return calloc(1, sizeof *q);
}

static void req_free(weft_http_creq *q)
{
#ifndef WEFT_DEBUG_ALLOC
    weft_http_client *c = q->c;
    if (c && !c->freeing && c->nfree < MAX_FREE_REQS && q->out_cap <= 16384) {
        /* keep the request buffer with the struct: the next request
         * serialises into it without a malloc */
        q->next_free = c->free_reqs;
        c->free_reqs = q;
        c->nfree++;
        return;
    }
#endif
    free(q->out);
    free(q);
}

/* The request is over: report err (unless canceled) and free it. The
 * connection must already have been detached, pooled or closed. */
static void req_finish(weft_http_creq *q, int err)
{
    req_detach(q);
    if (!q->canceled && q->on_done) {
        q->finishing = true;
        q->in_cb = true;
        q->on_done(q, err, q->ud);
    }
    req_free(q);
}

static void req_fail(weft_http_creq *q, int err)
{
    if (q->cn)
        conn_close(q->cn);
    req_finish(q, err);
}

/* Response complete: pool or close the connection, then on_done(0). */
static void req_complete(weft_http_creq *q)
{
    conn *cn = q->cn;
    bool reuse = q->head.keep_alive && q->body_kind != WEFT_BODY_EOF &&
                 q->out_off == q->out_len && weft_buf_used(&cn->in) == 0 &&
                 (!q->stream || q->stream_ended);
    cn->q = NULL;
    q->cn = NULL;
    if (reuse)
        pool_put(cn);
    else
        conn_close(cn);
    req_finish(q, 0);
}

/* Run a user callback; returns false if the request was canceled inside it
 * (it is freed here, and the caller must not touch it or its connection). */
static bool after_cb(weft_http_creq *q)
{
    q->in_cb = false;
    if (q->canceled) {
        req_free(q);
        return false;
    }
    return true;
}

static void arm_timer(weft_http_creq *q, uint32_t ms)
{
    if (ms)
        weft_timer_start(q->c->loop, &q->timer, ms);
    else
        weft_timer_stop(q->c->loop, &q->timer);
}

/* A failure before any response byte on a reused connection: retry once on
 * a fresh connection; otherwise report err. */
static void req_conn_lost(weft_http_creq *q, int err)
{
    conn *cn = q->cn;
    bool retry = cn && cn->reused && !q->got_bytes && !q->retried && !q->no_replay &&
                 !q->c->freeing;
    if (!retry) {
        req_fail(q, err);
        return;
    }
    weft_log(WEFT_LOG_DEBUG, "http client: stale pooled connection, retrying",
             WEFT_KV_STR("host", q->hp->host), WEFT_KV_UINT("port", q->hp->port));
    conn_close(cn);
    q->retried = true;
    int rc = req_start(q, false);
    if (rc < 0)
        req_finish(q, rc);
}

/* What is left of timeout_ms after `spent` ms (at least 1, so it still
 * fires); 0 when the request has no timeout. */
static uint32_t time_left(const weft_http_creq *q, uint64_t spent)
{
    return !q->timeout_ms ? 0 : spent < q->timeout_ms ? q->timeout_ms - (uint32_t)spent : 1;
}

/* The wait for the response head: timeout_ms less the time the request
 * spent getting a connection, so that a slow connect or a wait for a slot
 * does not buy the server a whole timeout more (the caller's timeout is
 * its deadline). Uploading does not count: while sending, the timeout is
 * one of inactivity. */
static uint32_t head_timeout(const weft_http_creq *q)
{
    return time_left(q, q->wait_ms);
}

/* The connection is ready to send on (connected, or taken from the pool). */
static void conn_ready(weft_http_creq *q)
{
    uint64_t waited = weft_loop_now_ms(q->c->loop) - q->start_ms;
    q->wait_ms = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
    q->phase = Q_HEAD;
    arm_timer(q, head_timeout(q));
}

/* Send what is left of the request. Returns false if the request ended. */
static bool conn_flush(conn *cn)
{
    weft_http_creq *q = cn->q;
    bool progress = false;
    while (q->out_off < q->out_len) {
        ssize_t n = send(cn->fd, q->out + q->out_off, q->out_len - q->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            q->out_off += (size_t)n;
            progress = true;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        req_conn_lost(q, n < 0 && errno == ETIMEDOUT ? WEFT_ETIMEDOUT : WEFT_ERESET);
        return false;
    }
    unsigned want = q->paused ? 0 : WEFT_IO_READ;
    if (q->out_off < q->out_len)
        want |= WEFT_IO_WRITE;
    int rc = weft_io_start(q->c->loop, &cn->io, want);
    if (rc < 0) {
        req_fail(q, rc);
        return false;
    }
    /* While sending, the timeout is one of inactivity; once everything is
     * out, the head must arrive within head_timeout of the last byte. Head
     * bytes do not extend it. */
    if (progress && (q->phase == Q_HEAD || q->stream) && !q->got_bytes)
        arm_timer(q, head_timeout(q));
    if (progress && q->stream && !q->stream_ended && q->on_send_drain &&
        q->out_len - q->out_off <= SEND_HIGH_WATER / 2) {
        q->in_cb = true;
        q->on_send_drain(q, q->ud);
        if (!after_cb(q))
            return false;
    }
    return true;
}

static int64_t header_length(const weft_http_head *h)
{
    const weft_http_header *cl = weft_http_head_find(h, WEFT_STR("Content-Length"));
    if (!cl || cl->value.n == 0 || cl->value.n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < cl->value.n; i++) {
        char ch = cl->value.p[i];
        if (ch < '0' || ch > '9')
            return -1;
        v = v * 10 + (ch - '0');
    }
    return v;
}

/* Parse the head from the buffer. Returns 1 if the head was delivered and
 * the body phase begins, 0 if more bytes are needed, -1 if the request
 * ended (failed, canceled or completed without a body). */
static int process_head(conn *cn)
{
    weft_http_creq *q = cn->q;
    for (;;) {
        size_t used = weft_buf_used(&cn->in);
        if (used == 0)
            return 0;
        int rc = weft_http_parse_response(&q->parser, &q->c->limits, weft_buf_rptr(&cn->in),
                                          used, q->method, &q->head);
        if (rc == WEFT_EAGAIN) {
            if (used > q->c->opts.max_response_head) {
                req_fail(q, WEFT_EPROTO);
                return -1;
            }
            return 0;
        }
        if (rc < 0) {
            weft_log(WEFT_LOG_DEBUG, "http client: malformed response",
                     WEFT_KV_STR("host", q->hp->host), WEFT_KV_UINT("port", q->hp->port),
                     WEFT_KV_STR("error", q->parser.error ? q->parser.error : "?"));
            req_fail(q, WEFT_EPROTO);
            return -1;
        }
        size_t head_len = (size_t)rc;
        if (q->head.status == 101) {
            /* We never ask for an upgrade; a 101 is a protocol violation. */
            req_fail(q, WEFT_EPROTO);
            return -1;
        }
        if (q->head.status < 200) {
            /* Interim response (100 Continue, 103 Early Hints): skip it. */
            weft_buf_consume(&cn->in, head_len);
            weft_http_parser_init(&q->parser);
            continue;
        }
        weft_http_head *h = &q->head;
        for (uint32_t i = 0; i < h->nheaders; i++) {
            q->names[i] = h->headers[i].name;
            q->values[i] = h->headers[i].value;
        }
        q->body_kind = h->body_kind;
        weft_http_cresp resp = {
            .status = h->status,
            .version_minor = h->version_minor,
            .nheaders = h->nheaders,
            .names = q->names,
            .values = q->values,
        };
        switch (h->body_kind) {
        case WEFT_BODY_LENGTH:
            resp.content_length = (int64_t)h->content_length;
            q->body_left = h->content_length;
            break;
        case WEFT_BODY_NONE: {
            int64_t v = header_length(h);
            resp.content_length = v >= 0 ? v : 0;
            q->body_left = 0;
            break;
        }
        case WEFT_BODY_CHUNKED:
            weft_chunked_init(&q->chunked);
            resp.content_length = -1;
            break;
        default:
            resp.content_length = -1;
            break;
        }
        q->phase = Q_BODY;
        arm_timer(q, q->timeout_ms); /* now an inactivity timeout for the body */
        if (q->on_response) {
            q->in_cb = true;
            q->on_response(q, &resp, q->ud);
            if (!after_cb(q))
                return -1;
        }
        /* The head strings pointed into the buffer; drop them only now. */
        weft_buf_consume(&cn->in, head_len);
        if (q->body_kind == WEFT_BODY_NONE ||
            (q->body_kind == WEFT_BODY_LENGTH && q->body_left == 0)) {
            req_complete(q);
            return -1;
        }
        return 1;
    }
}

static bool deliver(weft_http_creq *q, weft_str data)
{
    if (!q->on_body || data.n == 0)
        return true;
    q->in_cb = true;
    q->on_body(q, data, q->ud);
    return after_cb(q);
}

/* Hand buffered body bytes to on_body. Returns false if the request ended. */
static bool process_body(conn *cn)
{
    weft_http_creq *q = cn->q;
    for (;;) {
        size_t used = weft_buf_used(&cn->in);
        if (used == 0 || q->paused)
            return true;
        const char *p = weft_buf_rptr(&cn->in);
        switch (q->body_kind) {
        case WEFT_BODY_LENGTH: {
            size_t take = used < q->body_left ? used : (size_t)q->body_left;
            if (!deliver(q, (weft_str){p, take}))
                return false;
            weft_buf_consume(&cn->in, take);
            q->body_left -= take;
            if (q->body_left == 0) {
                req_complete(q);
                return false;
            }
            break;
        }
        case WEFT_BODY_CHUNKED: {
            size_t consumed = 0;
            weft_str data = WEFT_STR_NULL;
            int rc = weft_chunked_decode(&q->chunked, p, used, &consumed, &data);
            if (rc == WEFT_EPROTO || (rc < 0 && rc != WEFT_EAGAIN)) {
                weft_log(WEFT_LOG_DEBUG, "http client: malformed chunked body",
                         WEFT_KV_STR("error", q->chunked.error ? q->chunked.error : "?"));
                req_fail(q, WEFT_EPROTO);
                return false;
            }
            if (!deliver(q, data))
                return false;
            weft_buf_consume(&cn->in, consumed);
            if (q->chunked.done) {
                req_complete(q);
                return false;
            }
            if (rc == WEFT_EAGAIN || consumed == 0)
                return true;
            break;
        }
        case WEFT_BODY_EOF:
            if (!deliver(q, (weft_str){p, used}))
                return false;
            weft_buf_consume(&cn->in, used);
            break;
        default:
            /* NONE completed in process_head; bytes here are stray. */
            req_fail(q, WEFT_EPROTO);
            return false;
        }
    }
}

/* EOF (err == 0) or a receive error on an active connection. */
static void conn_on_close(conn *cn, int err)
{
    weft_http_creq *q = cn->q;
    if (err == 0 && q->phase == Q_BODY && q->body_kind == WEFT_BODY_EOF) {
        req_complete(q);
        return;
    }
    req_conn_lost(q, err ? err : WEFT_ERESET);
}

static void conn_read(conn *cn)
{
    weft_http_creq *q = cn->q;
    int rc = weft_buf_reserve(&cn->in, READ_CHUNK);
    if (rc < 0) {
        req_fail(q, rc == WEFT_ETOOBIG ? WEFT_EPROTO : rc);
        return;
    }
    ssize_t n;
    do {
        n = recv(cn->fd, weft_buf_wptr(&cn->in), weft_buf_avail(&cn->in), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        conn_on_close(cn, errno == ETIMEDOUT ? WEFT_ETIMEDOUT : WEFT_ERESET);
        return;
    }
    if (n == 0) {
        conn_on_close(cn, 0);
        return;
    }
    weft_buf_commit(&cn->in, (size_t)n);
    q->got_bytes = true;
    if (q->phase == Q_HEAD) {
        int r = process_head(cn);
        if (r <= 0)
            return;
    } else {
        arm_timer(q, q->timeout_ms);
    }
    process_body(cn);
}

static void conn_connected(conn *cn)
{
    weft_http_creq *q = cn->q;
    cn->state = CN_ACTIVE;
    conn_ready(q);
    conn_flush(cn);
}

static void conn_io_cb(weft_loop *loop, weft_io *io, unsigned events)
{
    (void)loop;
    conn *cn = io->data;
    switch (cn->state) {
    case CN_CLOSED:
        return; /* stale event from this batch */
    case CN_IDLE:
        /* EOF, reset or unsolicited bytes: the connection is unusable. */
        weft_log(WEFT_LOG_DEBUG, "http client: idle connection closed by peer",
                 WEFT_KV_STR("host", cn->hp->host), WEFT_KV_UINT("port", cn->hp->port));
        conn_close(cn);
        return;
    case CN_CONNECTING: {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(cn->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err == 0 && !(events & (WEFT_IO_WRITE | WEFT_IO_ERROR | WEFT_IO_HUP)))
            return;
        if (err) {
            int rc = connect_err(err);
            weft_log(WEFT_LOG_DEBUG, "http client: connect failed",
                     WEFT_KV_STR("host", cn->hp->host), WEFT_KV_UINT("port", cn->hp->port),
                     WEFT_KV_STR("error", weft_strerror(rc)));
            req_fail(cn->q, rc);
            return;
        }
        conn_connected(cn);
        return;
    }
    case CN_ACTIVE:
        break;
    }
    weft_http_creq *q = cn->q;
    if ((events & WEFT_IO_WRITE) && q->out_off < q->out_len) {
        if (!conn_flush(cn))
            return;
    }
    if ((events & (WEFT_IO_READ | WEFT_IO_HUP | WEFT_IO_ERROR)) && !q->paused)
        conn_read(cn);
}

static void req_timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    weft_http_creq *q = t->data;
    if (q->pending_err) {
        req_finish(q, q->pending_err);
        return;
    }
    if (q->queued) {
        weft_log(WEFT_LOG_DEBUG, "http client: timed out waiting for a connection",
                 WEFT_KV_STR("host", q->hp->host), WEFT_KV_UINT("port", q->hp->port));
        req_finish(q, WEFT_ETIMEDOUT);
        return;
    }
    weft_log(WEFT_LOG_DEBUG, "http client: timeout", WEFT_KV_STR("host", q->hp->host),
             WEFT_KV_UINT("port", q->hp->port),
             WEFT_KV_STR("phase", q->phase == Q_CONNECT ? "connect"
                                  : q->phase == Q_HEAD  ? "head"
                                                        : "body"));
    req_fail(q, WEFT_ETIMEDOUT);
}

/* Give q a connection (pooled if allowed and available) and start it. */
static int req_start(weft_http_creq *q, bool allow_pool)
{
    weft_http_client *c = q->c;
    int rc;
    q->phase = Q_CONNECT;
    q->out_off = 0;
    q->got_bytes = false;
    weft_http_parser_init(&q->parser);
    conn *cn = allow_pool ? pool_take(q->hp) : NULL;
    if (cn) {
        c->st.reuses++;
        cn->reused = true;
    } else {
        host_pool *hp = q->hp;
        if (!allow_pool && hp->idle_head && c->opts.max_conns_per_host &&
            hp->nconns >= c->opts.max_conns_per_host)
            /* A request that may not use a pooled connection (streamed
             * body, stale-connection retry) must not wait behind idle
             * ones, which only a pooled request would ever free: the
             * dispatcher would hand it the slot, see it queue again and
             * spin. Close the least recently used idle one for it. */
            close_lru_idle(hp);
        if (c->opts.max_conns_per_host && hp->nconns >= c->opts.max_conns_per_host) {
            /* at the connection limit: wait for a slot, within bounds */
            if (hp->nwait >= c->opts.max_pending_per_host)
                return WEFT_ETOOBIG;
            q->phase = Q_QUEUED;
            q->queued = true;
            q->wait_next = NULL;
            if (hp->wait_tail)
                hp->wait_tail->wait_next = q;
            else
                hp->wait_head = q;
            hp->wait_tail = q;
            hp->nwait++;
            arm_timer(q, q->timeout_ms ? q->timeout_ms : c->opts.connect_timeout_ms);
            return 0;
        }
        rc = conn_open(c, q->hp, &cn);
        if (rc < 0)
            return rc;
        cn->reused = false;
    }
    cn->q = q;
    q->cn = cn;
    if (cn->state == CN_CONNECTING) {
        rc = weft_io_start(c->loop, &cn->io, WEFT_IO_WRITE);
        if (rc < 0)
            goto fail_close;
        /* the request's own timeout (less any wait for a slot) bounds the
         * connect too: a caller with a deadline shorter than
         * connect_timeout_ms must not wait past it */
        uint32_t ct = c->opts.connect_timeout_ms,
                 left = time_left(q, weft_loop_now_ms(c->loop) - q->start_ms);
        if (left && left < ct)
            ct = left;
        weft_timer_start(c->loop, &q->timer, ct);
        return 0;
    }
    /* Pooled, or connected at once. A pooled socket is almost always
     * writable: send now and skip two epoll_ctl calls per request. Errors
     * are left for the event loop to report (the caller must never see a
     * callback from inside submit). */
    conn_ready(q);
    ssize_t n;
    do {
        n = send(cn->fd, q->out, q->out_len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        q->out_off = (size_t)n;
    unsigned want = WEFT_IO_READ | (q->out_off < q->out_len ? WEFT_IO_WRITE : 0);
    rc = weft_io_start(c->loop, &cn->io, want);
    if (rc < 0)
        goto fail_close;
    return 0; /* conn_ready armed the head timeout */

fail_close:
    conn_close(cn);
    return rc;
}

/* ---- submit ---- */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool token_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return false;
    return true;
}

/* Visible text without CTLs (HTAB allowed where allow_tab), so nothing can
 * end a line or smuggle a second message. */
static bool text_ok(const char *s, size_t n, bool allow_space)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == 0x7f || (ch < 0x20 && !(allow_space && ch == '\t')))
            return false;
        if (ch == ' ' && !allow_space)
            return false;
    }
    return true;
}

static int append_s(weft_buf *b, const char *s) { return weft_buf_append(b, s, strlen(s)); }

/* Validate and serialize the request head and body into q->out. */
static int build_request(weft_http_creq *q, const weft_http_creq_opts *o)
{
    int rc = WEFT_EINVAL;
    size_t mlen = strlen(o->method), tlen = strlen(o->target), hlen = strlen(o->host);
    if (!token_ok(o->method, mlen) || tlen == 0 || !text_ok(o->target, tlen, false) ||
        hlen == 0 || !text_ok(o->host, hlen, false) || o->port == 0 ||
        (o->body_len && !o->body))
        return WEFT_EINVAL;
    q->method = weft_http_method_from((weft_str){o->method, mlen});
    if (q->method == WEFT_METHOD_CONNECT)
        return WEFT_EUNSUPPORTED; /* tunnels are not this client's job */

    bool have_host = false;
    for (const char *const *h = o->headers; h && *h; h++) {
        const char *colon = strchr(*h, ':');
        if (!colon || !token_ok(*h, (size_t)(colon - *h)) ||
            !text_ok(colon + 1, strlen(colon + 1), true))
            return WEFT_EINVAL;
        weft_str name = {*h, (size_t)(colon - *h)};
        if (weft_str_ieq(name, WEFT_STR("Host")))
            have_host = true;
        else if (weft_str_ieq(name, WEFT_STR("Content-Length")) ||
                 weft_str_ieq(name, WEFT_STR("Transfer-Encoding")))
            return WEFT_EINVAL;
    }
    /* A Host line in the raw block counts (cheap scan of line starts). */
    for (size_t i = 0; !have_host && i + 5 <= o->raw_headers.n;) {
        if ((i == 0 || o->raw_headers.p[i - 1] == '\n') &&
            weft_str_ieq((weft_str){o->raw_headers.p + i, 5}, WEFT_STR("Host:")))
            have_host = true;
        const char *nl = memchr(o->raw_headers.p + i, '\n', o->raw_headers.n - i);
        if (!nl)
            break;
        i = (size_t)(nl - o->raw_headers.p) + 1;
    }

    weft_buf b;
    weft_buf_init(&b, SIZE_MAX / 2);
    /* reuse the buffer a recycled request struct brought along */
    b.data = q->out;
    b.cap = q->out_cap;
    q->out = NULL;
    q->out_cap = 0;
    char tmp[64];
    if ((rc = weft_buf_append(&b, o->method, mlen)) < 0 || (rc = append_s(&b, " ")) < 0 ||
        (rc = weft_buf_append(&b, o->target, tlen)) < 0 ||
        (rc = append_s(&b, " HTTP/1.1\r\n")) < 0)
        goto fail;
    if (!have_host) {
        bool v6 = strchr(o->host, ':') && o->host[0] != '[';
        if ((rc = append_s(&b, v6 ? "Host: [" : "Host: ")) < 0 ||
            (rc = weft_buf_append(&b, o->host, hlen)) < 0 || (v6 && (rc = append_s(&b, "]")) < 0))
            goto fail;
        if (o->port != 80) {
            snprintf(tmp, sizeof tmp, ":%u", (unsigned)o->port);
            if ((rc = append_s(&b, tmp)) < 0)
                goto fail;
        }
        if ((rc = append_s(&b, "\r\n")) < 0)
            goto fail;
    }
    for (const char *const *h = o->headers; h && *h; h++)
        if ((rc = append_s(&b, *h)) < 0 || (rc = append_s(&b, "\r\n")) < 0)
            goto fail;
    if (o->raw_headers.n && (rc = weft_buf_append(&b, o->raw_headers.p, o->raw_headers.n)) < 0)
        goto fail;
    if (o->body_stream && o->stream_length < 0) {
        if ((rc = append_s(&b, "Transfer-Encoding: chunked\r\n")) < 0)
            goto fail;
    } else if (o->body_stream || o->body_len || q->method == WEFT_METHOD_POST ||
               q->method == WEFT_METHOD_PUT || q->method == WEFT_METHOD_PATCH) {
        char *p = tmp + sizeof tmp;
        size_t v = o->body_stream ? (size_t)o->stream_length : o->body_len;
        *--p = '\n';
        *--p = '\r';
        do {
            *--p = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if ((rc = append_s(&b, "Content-Length: ")) < 0 ||
            (rc = weft_buf_append(&b, p, (size_t)(tmp + sizeof tmp - p))) < 0)
            goto fail;
    }
    if ((rc = append_s(&b, "\r\n")) < 0 ||
        (!o->body_stream && (rc = weft_buf_append(&b, o->body, o->body_len)) < 0))
        goto fail;
    q->out = b.data;
    q->out_len = b.len;
    q->out_cap = b.cap;
    return 0;

fail:
    weft_buf_release(&b);
    return rc;
}

int weft_http_client_request(weft_http_client *c, const weft_http_creq_opts *o,
                             weft_http_creq **out)
{
    int rc;
    if (out)
        *out = NULL;
    if (!c || !o || !o->method || !o->host || !o->target)
        return WEFT_EINVAL;
    if (c->freeing)
        return WEFT_ECANCELED;
    weft_http_creq *q = req_alloc(c);
    if (!q)
        return WEFT_ENOMEM;
    q->c = c;
    rc = build_request(q, o);
    if (rc < 0)
        goto fail_free;
    q->hp = pool_find(c, o->host, o->port);
    if (!q->hp) {
        rc = WEFT_ENOMEM;
        goto fail_free;
    }
    q->timeout_ms = o->timeout_ms ? o->timeout_ms : c->opts.response_timeout_ms;
    q->start_ms = weft_loop_now_ms(c->loop);
    q->on_response = o->on_response;
    q->on_body = o->on_body;
    q->on_done = o->on_done;
    q->ud = o->ud;
    q->stream = o->body_stream;
    q->stream_chunked = o->body_stream && o->stream_length < 0;
    q->stream_left = o->body_stream && o->stream_length > 0 ? o->stream_length : 0;
    q->stream_ended = o->body_stream && o->stream_length == 0;
    q->on_send_drain = o->on_send_drain;
    q->no_replay = o->no_replay;
    weft_timer_init(&q->timer, req_timer_cb, q);
    q->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = q;
    c->reqs = q;
    q->linked = true;
    /* Timeouts are measured from the loop's cached clock; a submit from
     * outside the loop (or after long work in a callback) would otherwise
     * start its timers in the past. */
    weft_loop_update_time(c->loop);
    rc = req_start(q, !q->stream);
    if (rc < 0) {
        /* Submitted: the failure is reported through on_done, never from
         * inside this call, so callers see one uniform path. */
        q->pending_err = rc;
        weft_timer_start(c->loop, &q->timer, 0);
    }
    if (out)
        *out = q;
    return 0;

fail_free:
    req_free(q);
    return rc;
}

/* Append to the unsent request bytes, dropping what was already sent. */
static int out_append(weft_http_creq *q, const void *p, size_t n)
{
    if (q->out_off == q->out_len) {
        q->out_off = q->out_len = 0;
    } else if (q->out_off > q->out_cap / 2) {
        memmove(q->out, q->out + q->out_off, q->out_len - q->out_off);
        q->out_len -= q->out_off;
        q->out_off = 0;
    }
    if (q->out_len + n > q->out_cap) {
        size_t ncap = q->out_cap ? q->out_cap : 4096;
        while (ncap < q->out_len + n)
            ncap *= 2;
        char *nb = realloc(q->out, ncap);
        if (!nb)
            return WEFT_ENOMEM;
        q->out = nb;
        q->out_cap = ncap;
    }
    memcpy(q->out + q->out_len, p, n);
    q->out_len += n;
    return 0;
}

static int stream_push(weft_http_creq *q)
{
    conn *cn = q->cn;
    if (cn && cn->state == CN_ACTIVE && !q->in_cb) {
        if (!conn_flush(cn))
            return WEFT_ECLOSED;
    } else if (cn && cn->state == CN_ACTIVE) {
        unsigned want = (q->paused ? 0 : WEFT_IO_READ) | WEFT_IO_WRITE;
        weft_io_start(q->c->loop, &cn->io, want);
    }
    return q->out_len - q->out_off > SEND_HIGH_WATER ? 1 : 0;
}

int weft_http_creq_write(weft_http_creq *q, const void *data, size_t len)
{
    if (!q || !q->stream || q->stream_ended || q->canceled || q->finishing)
        return WEFT_EINVAL;
    if (len == 0)
        return 0;
    int rc;
    if (q->stream_chunked) {
        char hdr[24];
        int n = snprintf(hdr, sizeof hdr, "%zx\r\n", len);
        rc = out_append(q, hdr, (size_t)n);
        if (rc == 0)
            rc = out_append(q, data, len);
        if (rc == 0)
            rc = out_append(q, "\r\n", 2);
    } else {
        if ((int64_t)len > q->stream_left)
            return WEFT_EINVAL; /* more than the announced Content-Length */
        q->stream_left -= (int64_t)len;
        rc = out_append(q, data, len);
    }
    if (rc < 0)
        return rc;
    return stream_push(q);
}

int weft_http_creq_end(weft_http_creq *q)
{
    if (!q || !q->stream || q->stream_ended || q->canceled || q->finishing)
        return WEFT_EINVAL;
    if (!q->stream_chunked && q->stream_left > 0)
        return WEFT_EINVAL;
    q->stream_ended = true;
    if (q->stream_chunked) {
        int rc = out_append(q, "0\r\n\r\n", 5);
        if (rc < 0)
            return rc;
    }
    int rc = stream_push(q);
    return rc < 0 ? rc : 0;
}

bool weft_http_creq_connected(const weft_http_creq *q)
{
    return q && q->phase != Q_CONNECT && q->phase != Q_QUEUED;
}

bool weft_http_creq_waited(const weft_http_creq *q)
{
    return q && q->phase == Q_QUEUED;
}

/* A connection slot freed up or went idle: start waiting requests, FIFO. */
static void dispatch_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    weft_http_client *c = t->data;
    uint32_t max = c->opts.max_conns_per_host;
    for (host_pool *hp = c->pools; hp; hp = hp->next) {
        while (hp->wait_head && (hp->nidle > 0 || max == 0 || hp->nconns < max)) {
            weft_http_creq *q = hp->wait_head;
            hp->wait_head = q->wait_next;
            if (!hp->wait_head)
                hp->wait_tail = NULL;
            hp->nwait--;
            q->wait_next = NULL;
            q->queued = false;
            weft_timer_stop(c->loop, &q->timer);
            int rc = req_start(q, !q->stream);
            if (rc < 0) {
                q->pending_err = rc;
                weft_timer_start(c->loop, &q->timer, 0);
            }
        }
    }
}

void weft_http_creq_pause(weft_http_creq *q, bool paused)
{
    if (!q || q->canceled || q->paused == paused)
        return;
    q->paused = paused;
    conn *cn = q->cn;
    if (!cn || cn->state != CN_ACTIVE)
        return;
    unsigned want = paused ? 0 : WEFT_IO_READ;
    if (q->out_off < q->out_len)
        want |= WEFT_IO_WRITE;
    if (weft_io_start(q->c->loop, &cn->io, want) < 0)
        return;
    if (paused) {
        weft_timer_stop(q->c->loop, &q->timer); /* our own choice, not the upstream's stall */
    } else {
        arm_timer(q, q->timeout_ms);
        /* bytes already buffered produce no readiness event: deliver them now */
        if (q->phase == Q_BODY && weft_buf_used(&cn->in) && !q->in_cb)
            process_body(cn);
    }
}

void weft_http_creq_cancel(weft_http_creq *q)
{
    if (!q || q->canceled)
        return;
    q->canceled = true;
    if (q->finishing)
        return; /* inside on_done: freed when it returns */
    req_detach(q);
    if (!q->in_cb)
        req_free(q);
}

/* ---- client ---- */

weft_http_client *weft_http_client_new(weft_loop *loop, const weft_http_client_opts *opts)
{
    weft_http_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    weft_http_client_opts_default(&c->opts);
    if (opts) {
        weft_http_client_opts d = c->opts;
        c->opts = *opts;
        if (!c->opts.connect_timeout_ms)
            c->opts.connect_timeout_ms = d.connect_timeout_ms;
        if (!c->opts.idle_timeout_ms)
            c->opts.idle_timeout_ms = d.idle_timeout_ms;
        if (!c->opts.max_response_head)
            c->opts.max_response_head = d.max_response_head;
        if (c->opts.max_response_head > UINT32_MAX - READ_CHUNK)
            c->opts.max_response_head = UINT32_MAX - READ_CHUNK;
    }
    weft_http_limits_default(&c->limits);
    c->limits.max_header_bytes = (uint32_t)c->opts.max_response_head;
    if (c->limits.max_request_line > c->limits.max_header_bytes)
        c->limits.max_request_line = c->limits.max_header_bytes;
    weft_timer_init(&c->reap_timer, reap_cb, c);
    weft_timer_init(&c->dispatch_timer, dispatch_cb, c);
    return c;
}

void weft_http_client_free(weft_http_client *c)
{
    if (!c)
        return;
    c->freeing = true;
    while (c->reqs) {
        weft_http_creq *q = c->reqs;
        req_detach(q);
        if (!q->canceled && q->on_done) {
            q->finishing = true;
            q->in_cb = true;
            q->on_done(q, WEFT_ECANCELED, q->ud);
        }
        req_free(q);
    }
    host_pool *hp = c->pools;
    while (hp) {
        host_pool *next = hp->next;
        while (hp->idle_head)
            conn_close(hp->idle_head);
        free(hp->host);
        free(hp);
        hp = next;
    }
    weft_timer_stop(c->loop, &c->reap_timer);
    weft_timer_stop(c->loop, &c->dispatch_timer);
    reap_cb(c->loop, &c->reap_timer);
    while (c->free_reqs) {
        weft_http_creq *q = c->free_reqs;
        c->free_reqs = q->next_free;
        free(q->out);
        free(q);
    }
    free(c);
}

void weft_http_client_stats_get(const weft_http_client *c, weft_http_client_stats *st)
{
    *st = c->st;
}
