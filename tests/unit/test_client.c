/*
 * test_client.c — HTTP/1.1 client against real loopback upstreams.
 *
 * Each test runs a weft_loop on the test thread and a fake upstream on a
 * pthread: a plain blocking listener on 127.0.0.1:0 that follows a script
 * per accepted connection (read a request, write canned bytes, sleep,
 * reset, wait for the client to close...). Scripts make the wire side of
 * each case readable at a glance and let the test check the exact request
 * bytes the upstream received. Every wait is bounded: the loop runs under
 * a deadline and the upstream polls a stop flag.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "weft/http.h"
#include "weft/loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- fake upstream ---- */

enum { OP_END = 0, OP_READ, OP_WRITE, OP_SLEEP, OP_RESET, OP_WAIT_EOF, OP_FN };

typedef struct upstream upstream;
typedef struct step {
    int op;
    const char *s; /* OP_WRITE */
    int ms;        /* OP_SLEEP */
    void (*fn)(upstream *u, int fd); /* OP_FN */
} step;

#define RD {OP_READ, NULL, 0, NULL}
#define WR(x) {OP_WRITE, (x), 0, NULL}
#define SLEEP(n) {OP_SLEEP, NULL, (n), NULL}
#define RST {OP_RESET, NULL, 0, NULL}
#define WAIT_EOF {OP_WAIT_EOF, NULL, 0, NULL}
#define FN(f) {OP_FN, NULL, 0, (f)}
#define END {OP_END, NULL, 0, NULL}

#define MAX_CONNS 4
#define MAX_REQS 8
#define REQ_CAP 8192

struct upstream {
    int lfd;
    uint16_t port;
    pthread_t th;
    bool running;
    const step *scripts[MAX_CONNS]; /* one per expected connection */
    int nscripts;
    atomic_bool stop;
    atomic_int accepted;
    atomic_int nreq;
    atomic_int eofs; /* connections the client closed (seen by WAIT_EOF) */
    atomic_bool finished;
    char req[MAX_REQS][REQ_CAP];
    size_t req_len[MAX_REQS];
};

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool wait_readable(upstream *u, int fd)
{
    for (int i = 0; i < 500 && !atomic_load(&u->stop); i++) { /* <= 10 s */
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 20) > 0)
            return true;
    }
    return false;
}

static void write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static size_t content_length_of(const char *head, size_t n)
{
    static const char key[] = "\r\ncontent-length:";
    for (size_t i = 0; i + sizeof key - 1 <= n; i++)
        if (strncasecmp(head + i, key, sizeof key - 1) == 0)
            return (size_t)strtoul(head + i + sizeof key - 1, NULL, 10);
    return 0;
}

/* Read one request (head + Content-Length body). Returns its length, 0 if
 * the peer closed first, -1 on error/timeout. */
static long read_request(upstream *u, int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        char *end = len >= 4 ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
        if (end) {
            size_t head = (size_t)(end - buf) + 4;
            size_t need = head + content_length_of(buf, head);
            if (len >= need)
                return (long)len;
        }
        if (len == cap || !wait_readable(u, fd))
            return -1;
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r == 0)
            return 0;
        if (r < 0)
            return errno == EINTR ? (long)len : -1;
        len += (size_t)r;
    }
}

static void *upstream_main(void *arg)
{
    upstream *u = arg;
    for (int i = 0; i < u->nscripts && !atomic_load(&u->stop); i++) {
        if (!wait_readable(u, u->lfd))
            break;
        int fd = accept(u->lfd, NULL, NULL);
        if (fd < 0)
            break;
        atomic_fetch_add(&u->accepted, 1);
        for (const step *s = u->scripts[i]; s->op != OP_END && !atomic_load(&u->stop); s++) {
            if (s->op == OP_READ) {
                int k = atomic_load(&u->nreq);
                char tmp[REQ_CAP];
                long n = read_request(u, fd, tmp, sizeof tmp);
                if (n <= 0)
                    break;
                if (k < MAX_REQS) {
                    memcpy(u->req[k], tmp, (size_t)n);
                    u->req_len[k] = (size_t)n;
                    atomic_store(&u->nreq, k + 1);
                }
            } else if (s->op == OP_WRITE) {
                write_all(fd, s->s, strlen(s->s));
            } else if (s->op == OP_SLEEP) {
                msleep(s->ms);
            } else if (s->op == OP_RESET) {
                struct linger lg = {1, 0};
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                break;
            } else if (s->op == OP_WAIT_EOF) {
                char tmp[4096];
                while (wait_readable(u, fd)) {
                    ssize_t r = recv(fd, tmp, sizeof tmp, 0);
                    if (r <= 0) {
                        atomic_fetch_add(&u->eofs, 1);
                        break;
                    }
                }
            } else if (s->op == OP_FN) {
                s->fn(u, fd);
            }
        }
        close(fd);
    }
    atomic_store(&u->finished, true);
    return NULL;
}

static int listen_any(uint16_t *port, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static void upstream_start(upstream *u, int n, const step *const *scripts)
{
    assert_true(n <= MAX_CONNS);
    u->lfd = listen_any(&u->port, 16);
    assert_true(u->lfd >= 0);
    for (int i = 0; i < n; i++)
        u->scripts[i] = scripts[i];
    u->nscripts = n;
    assert_int_equal(pthread_create(&u->th, NULL, upstream_main, u), 0);
    u->running = true;
}

static void upstream_stop(upstream *u)
{
    if (!u->running)
        return;
    atomic_store(&u->stop, true);
    pthread_join(u->th, NULL);
    close(u->lfd);
    u->running = false;
}

/* ---- client side ---- */

typedef struct fx fx;
typedef struct res res;
struct res {
    fx *f;
    int ndone, err, nresp, nbody, status, version_minor;
    int64_t clen;
    char xa[64];  /* value of response header X-A, if any */
    char body[4096];
    size_t body_len;
    uint64_t total, fnv;
    int cancel_at; /* 1: cancel in on_response, 2: in on_body */
    weft_http_creq *q;
    void (*then)(res *r); /* runs from on_done */
    long rss_base, rss_peak;
};

struct fx {
    weft_loop *loop;
    weft_http_client *c;
    upstream u;
    res r[4];
};

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (!f || weft_loop_new(&f->loop) < 0)
        return -1;
    f->c = weft_http_client_new(f->loop, NULL);
    if (!f->c)
        return -1;
    for (int i = 0; i < 4; i++)
        f->r[i].f = f;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    upstream_stop(&f->u);
    weft_http_client_free(f->c);
    weft_loop_free(f->loop);
    free(f);
    return 0;
}

static long rss_pages(void)
{
    long size = 0, rss = 0;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp)
        return 0;
    if (fscanf(fp, "%ld %ld", &size, &rss) != 2)
        rss = 0;
    fclose(fp);
    return rss;
}

static uint64_t fnv_update(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define FNV_INIT 14695981039346656037ull

static void on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    res *r = ud;
    r->nresp++;
    r->status = resp->status;
    r->version_minor = resp->version_minor;
    r->clen = resp->content_length;
    for (size_t i = 0; i < resp->nheaders; i++)
        if (weft_str_ieq(resp->names[i], WEFT_STR("X-A")) && resp->values[i].n < sizeof r->xa) {
            memcpy(r->xa, resp->values[i].p, resp->values[i].n);
            r->xa[resp->values[i].n] = '\0';
        }
    if (r->cancel_at == 1)
        weft_http_creq_cancel(q);
}

static void on_body(weft_http_creq *q, weft_str data, void *ud)
{
    res *r = ud;
    r->nbody++;
    if (r->body_len + data.n <= sizeof r->body) {
        memcpy(r->body + r->body_len, data.p, data.n);
        r->body_len += data.n;
    }
    uint64_t before = r->total;
    r->total += data.n;
    r->fnv = fnv_update(r->fnv, data.p, data.n);
    if (r->rss_base && (before >> 22) != (r->total >> 22)) { /* every 4 MiB */
        long now = rss_pages();
        if (now > r->rss_peak)
            r->rss_peak = now;
    }
    if (r->cancel_at == 2)
        weft_http_creq_cancel(q);
}

static void on_done(weft_http_creq *q, int err, void *ud)
{
    res *r = ud;
    (void)q;
    r->ndone++;
    r->err = err;
    r->q = NULL;
    if (r->then)
        r->then(r);
}

static weft_http_creq_opts mk(const char *method, uint16_t port, const char *target, res *r)
{
    r->fnv = FNV_INIT;
    return (weft_http_creq_opts){
        .method = method,
        .host = "127.0.0.1",
        .port = port,
        .target = target,
        .on_response = on_response,
        .on_body = on_body,
        .on_done = on_done,
        .ud = r,
    };
}

static void submit(fx *f, const weft_http_creq_opts *o, res *r)
{
    assert_int_equal(weft_http_client_request(f->c, o, &r->q), 0);
    assert_non_null(r->q);
}

typedef struct waiter {
    weft_timer t;
    bool (*pred)(fx *f, const void *arg);
    fx *f;
    const void *arg;
    uint64_t deadline;
    bool ok;
} waiter;

static void waiter_cb(weft_loop *loop, weft_timer *t)
{
    waiter *w = t->data;
    if (w->pred(w->f, w->arg)) {
        w->ok = true;
        weft_loop_stop(loop);
        return;
    }
    if (weft_loop_now_ms(loop) >= w->deadline) {
        weft_loop_stop(loop);
        return;
    }
    weft_timer_start(loop, t, 1);
}

/* Run the loop until pred holds (true) or timeout_ms passes (false). */
static bool run_until(fx *f, bool (*pred)(fx *, const void *), const void *arg, int timeout_ms)
{
    waiter w = {.pred = pred, .f = f, .arg = arg};
    weft_loop_update_time(f->loop);
    w.deadline = weft_loop_now_ms(f->loop) + (uint64_t)timeout_ms;
    weft_timer_init(&w.t, waiter_cb, &w);
    weft_timer_start(f->loop, &w.t, 0);
    assert_int_equal(weft_loop_run(f->loop), 0);
    weft_timer_stop(f->loop, &w.t);
    return w.ok;
}

static bool pred_done(fx *f, const void *arg)
{
    const res *r = arg;
    (void)f;
    return r->ndone > 0;
}

static bool pred_never(fx *f, const void *arg)
{
    (void)f;
    (void)arg;
    return false;
}

static bool pred_idle0(fx *f, const void *arg)
{
    weft_http_client_stats st;
    (void)arg;
    weft_http_client_stats_get(f->c, &st);
    return st.idle == 0;
}

static bool pred_upstream_done(fx *f, const void *arg)
{
    (void)arg;
    return atomic_load(&f->u.finished);
}

static bool pred_nreq(fx *f, const void *arg)
{
    return atomic_load(&f->u.nreq) >= *(const int *)arg;
}

static void run_done(fx *f, res *r)
{
    assert_true(run_until(f, pred_done, r, 5000));
    assert_int_equal(r->ndone, 1);
}

static void expect_request(fx *f, int i, const char *fmt_with_port)
{
    /* expand the one "%u" into the upstream port (no format-nonliteral) */
    char want[REQ_CAP];
    const char *pct = strstr(fmt_with_port, "%u");
    if (pct)
        snprintf(want, sizeof want, "%.*s%u%s", (int)(pct - fmt_with_port), fmt_with_port,
                 (unsigned)f->u.port, pct + 2);
    else
        snprintf(want, sizeof want, "%s", fmt_with_port);
    assert_true(atomic_load(&f->u.nreq) > i);
    f->u.req[i][f->u.req_len[i] < REQ_CAP ? f->u.req_len[i] : REQ_CAP - 1] = '\0';
    assert_string_equal(f->u.req[i], want);
}

static weft_http_client_stats stats(fx *f)
{
    weft_http_client_stats st;
    weft_http_client_stats_get(f->c, &st);
    return st;
}

/* ---- tests ---- */

static void test_get_content_length(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b c\r\n\r\nhello"),
                              WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/hello?x=1", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->nresp, 1);
    assert_int_equal(r->status, 200);
    assert_int_equal(r->version_minor, 1);
    assert_int_equal(r->clen, 5);
    assert_string_equal(r->xa, "b c");
    assert_int_equal(r->body_len, 5);
    assert_memory_equal(r->body, "hello", 5);
    expect_request(f, 0, "GET /hello?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n");
    weft_http_client_stats st = stats(f);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.reuses, 0);
    assert_int_equal(st.idle, 1);
}

static void test_request_bytes(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
                              RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                              RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                              WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);

    /* body + user header */
    res *r = &f->r[0];
    const char *hdrs[] = {"X-Test: yes", "Accept:  */*", NULL};
    weft_http_creq_opts o = mk("POST", f->u.port, "/submit", r);
    o.headers = hdrs;
    o.body = "hello";
    o.body_len = 5;
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->status, 201);
    expect_request(f, 0, "POST /submit HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nX-Test: yes\r\n"
                         "Accept:  */*\r\nContent-Length: 5\r\n\r\nhello");

    /* PUT with an empty body still says Content-Length: 0 */
    res *r2 = &f->r[1];
    o = mk("PUT", f->u.port, "/empty", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, 0);
    expect_request(f, 1, "PUT /empty HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Length: 0\r\n\r\n");

    /* a user Host header replaces ours */
    res *r3 = &f->r[2];
    const char *hdrs3[] = {"host: api.example", NULL};
    o = mk("DELETE", f->u.port, "/x", r3);
    o.headers = hdrs3;
    submit(f, &o, r3);
    run_done(f, r3);
    assert_int_equal(r3->err, 0);
    expect_request(f, 2, "DELETE /x HTTP/1.1\r\nhost: api.example\r\n\r\n");
    assert_int_equal(stats(f).connects, 1);
    assert_int_equal(stats(f).reuses, 2);
}

static void test_invalid_requests(void **state)
{
    fx *f = *state;
    res *r = &f->r[0];
    weft_http_creq *q = (weft_http_creq *)1;
    const char *bad[][2] = {
        {"X-Bad: a\r\nInjected: 1", NULL}, {"X-Bad: a\nb", NULL}, {"NoColon", NULL},
        {": empty-name", NULL},            {"Bad Name: x", NULL}, {"Content-Length: 5", NULL},
        {"Transfer-Encoding: chunked", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        weft_http_creq_opts o = mk("GET", 80, "/", r);
        o.headers = bad[i];
        assert_int_equal(weft_http_client_request(f->c, &o, &q), WEFT_EINVAL);
        assert_null(q);
    }
    weft_http_creq_opts o = mk("GE T", 80, "/", r);
    assert_int_equal(weft_http_client_request(f->c, &o, NULL), WEFT_EINVAL);
    o = mk("GET", 80, "/a b", r);
    assert_int_equal(weft_http_client_request(f->c, &o, NULL), WEFT_EINVAL);
    o = mk("GET", 80, "/a\r\n", r);
    assert_int_equal(weft_http_client_request(f->c, &o, NULL), WEFT_EINVAL);
    o = mk("GET", 0, "/", r);
    assert_int_equal(weft_http_client_request(f->c, &o, NULL), WEFT_EINVAL);
    o = mk("GET", 80, "/", r);
    o.host = "evil\r\nX: y";
    assert_int_equal(weft_http_client_request(f->c, &o, NULL), WEFT_EINVAL);
    assert_false(run_until(f, pred_never, NULL, 20));
    assert_int_equal(r->ndone, 0);
    assert_int_equal(stats(f).connects, 0);
}

static void test_chunked_trailers(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD,
                              WR("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
                              SLEEP(20),
                              WR("lo\r\n6;ext=1\r\n worl"),
                              SLEEP(20),
                              WR("d\r\n0\r\nX-Trailer: t\r\n\r\n"),
                              WAIT_EOF,
                              END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/c", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->clen, -1);
    assert_int_equal(r->body_len, 11);
    assert_memory_equal(r->body, "hello world", 11);
    assert_int_equal(stats(f).idle, 1); /* framing known: kept alive */
}

static void test_eof_body(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil "), SLEEP(20),
                              WR("close"), END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/e", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->clen, -1);
    assert_int_equal(r->body_len, 11);
    assert_memory_equal(r->body, "until close", 11);
    assert_int_equal(stats(f).idle, 0);
}

static void test_head_and_204(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
                              RD, WR("HTTP/1.1 204 No Content\r\nX-A: z\r\n\r\n"),
                              RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                              WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("HEAD", f->u.port, "/h", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->status, 200);
    assert_int_equal(r->clen, 1000);
    assert_int_equal(r->nbody, 0);

    res *r2 = &f->r[1];
    o = mk("DELETE", f->u.port, "/d", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, 0);
    assert_int_equal(r2->status, 204);
    assert_string_equal(r2->xa, "z");
    assert_int_equal(r2->nbody, 0);

    /* the same connection still frames correctly after both */
    res *r3 = &f->r[2];
    o = mk("GET", f->u.port, "/g", r3);
    submit(f, &o, r3);
    run_done(f, r3);
    assert_int_equal(r3->err, 0);
    assert_int_equal(r3->body_len, 2);
    assert_memory_equal(r3->body, "ok", 2);
    assert_int_equal(stats(f).connects, 1);
    assert_int_equal(stats(f).reuses, 2);
}

static void test_100_continue(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 100 Continue\r\n\r\n"), SLEEP(20),
                              WR("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"
                                 "Content-Length: 2\r\nX-A: final\r\n\r\nok"),
                              WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("POST", f->u.port, "/p", r);
    o.body = "x";
    o.body_len = 1;
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->nresp, 1);
    assert_int_equal(r->status, 200);
    assert_string_equal(r->xa, "final");
    assert_int_equal(r->body_len, 2);
    assert_memory_equal(r->body, "ok", 2);
}

/* Second request submitted from the first one's on_done: it must get the
 * connection that was just returned to the pool. */
static void submit_next(res *r)
{
    fx *f = r->f;
    res *n = &f->r[1];
    weft_http_creq_opts o = mk("GET", f->u.port, "/two", n);
    assert_int_equal(weft_http_client_request(f->c, &o, &n->q), 0);
}

static void test_keepalive_reuse(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
                              RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
                              WAIT_EOF, END};
    const step *sc[] = {s0, s0};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    r->then = submit_next;
    weft_http_creq_opts o = mk("GET", f->u.port, "/one", r);
    submit(f, &o, r);
    run_done(f, &f->r[1]);
    assert_int_equal(r->err, 0);
    assert_int_equal(f->r[1].err, 0);
    assert_memory_equal(f->r[1].body, "two", 3);
    weft_http_client_stats st = stats(f);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.reuses, 1);
    assert_int_equal(st.idle, 1);
    assert_int_equal(atomic_load(&f->u.accepted), 1);
}

static void test_connection_close(void **state)
{
    fx *f = *state;
    static const step s0[] = {
        RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\none"), END};
    static const step s1[] = {RD, WR("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ntwo"), END};
    const step *sc[] = {s0, s1};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/one", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(stats(f).idle, 0);
    res *r2 = &f->r[1];
    o = mk("GET", f->u.port, "/two", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, 0);
    assert_int_equal(r2->version_minor, 0);
    assert_memory_equal(r2->body, "two", 3);
    weft_http_client_stats st = stats(f);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.reuses, 0);
    assert_int_equal(st.idle, 0); /* HTTP/1.0 without keep-alive */
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_int_equal(atomic_load(&f->u.accepted), 2);
}

static void test_refused(void **state)
{
    fx *f = *state;
    uint16_t port = 0;
    int fd = listen_any(&port, 1);
    assert_true(fd >= 0);
    close(fd);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", port, "/", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, WEFT_EREFUSED);
    assert_int_equal(r->nresp, 0);
}

static void test_reset_mid_body(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial"),
                              SLEEP(50), RST, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/r", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, WEFT_ERESET);
    assert_int_equal(stats(f).idle, 0);
}

static void test_closed_mid_body(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"), END};
    static const step s1[] = {RD, WR("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
                              END};
    static const step s2[] = {RD, END};
    const step *sc[] = {s0, s1, s2};
    upstream_start(&f->u, 3, sc);
    const char *paths[] = {"/length", "/chunked", "/nothing"};
    for (int i = 0; i < 3; i++) {
        res *r = &f->r[i];
        weft_http_creq_opts o = mk("GET", f->u.port, paths[i], r);
        submit(f, &o, r);
        run_done(f, r);
        assert_int_equal(r->err, WEFT_ERESET);
    }
    assert_int_equal(stats(f).connects, 3);
}

static void test_response_timeout(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WAIT_EOF, END};
    static const step s1[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), WAIT_EOF,
                              END};
    const step *sc[] = {s0, s1};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/slow", r);
    o.timeout_ms = 200;
    uint64_t t0 = weft_now_us();
    submit(f, &o, r);
    run_done(f, r);
    uint64_t ms = (weft_now_us() - t0) / 1000;
    assert_int_equal(r->err, WEFT_ETIMEDOUT);
    assert_true(ms >= 190 && ms < 2000);

    /* body stalls after the head: inactivity timeout */
    res *r2 = &f->r[1];
    o = mk("GET", f->u.port, "/stall", r2);
    o.timeout_ms = 200;
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, WEFT_ETIMEDOUT);
    assert_int_equal(r2->nresp, 1);
    assert_int_equal(r2->body_len, 3);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_int_equal(atomic_load(&f->u.eofs), 2); /* both connections were closed */
}

static void test_connect_timeout(void **state)
{
    fx *f = *state;
    /* A listener with a full accept queue drops SYNs: connect hangs. */
    uint16_t port = 0;
    int lfd = listen_any(&port, 0);
    assert_true(lfd >= 0);
    int fill[2] = {-1, -1};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    msleep(20);
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.connect_timeout_ms = 150;
    weft_http_client *c = weft_http_client_new(f->loop, &co);
    assert_non_null(c);
    weft_http_client *saved = f->c;
    f->c = c;
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", port, "/", r);
    uint64_t t0 = weft_now_us();
    submit(f, &o, r);
    bool ok = run_until(f, pred_done, r, 5000);
    uint64_t ms = (weft_now_us() - t0) / 1000;
    f->c = saved;
    weft_http_client_free(c);
    for (int i = 0; i < 2; i++)
        close(fill[i]);
    close(lfd);
    assert_true(ok);
    assert_int_equal(r->err, WEFT_ETIMEDOUT);
    assert_true(ms >= 140 && ms < 2000);
}

static void test_malformed(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"), WAIT_EOF, END};
    static const step s1[] = {RD, WR("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                              WAIT_EOF, END};
    const step *sc[] = {s0, s1};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/m", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, WEFT_EPROTO);
    assert_int_equal(r->nresp, 0);
    res *r2 = &f->r[1];
    o = mk("GET", f->u.port, "/bad-chunk", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, WEFT_EPROTO);
    assert_int_equal(r2->nresp, 1);
    assert_int_equal(stats(f).idle, 0);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_int_equal(atomic_load(&f->u.eofs), 2); /* the client closed both */
}

static void test_head_too_large(void **state)
{
    fx *f = *state;
    static char big[70000];
    memcpy(big, "HTTP/1.1 200 OK\r\nX-Pad: ", 24);
    memset(big + 24, 'a', sizeof big - 25);
    big[sizeof big - 1] = '\0';
    const step s0[] = {RD, WR(big), WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/big-head", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, WEFT_EPROTO);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
}

static void test_stale_retry(void **state)
{
    fx *f = *state;
    /* The upstream drops the keep-alive connection just as the second
     * request arrives, without answering: the client retries it once. */
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"), RD, END};
    static const step s1[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"), WAIT_EOF,
                              END};
    const step *sc[] = {s0, s1};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/one", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(stats(f).idle, 1);
    res *r2 = &f->r[1];
    o = mk("GET", f->u.port, "/two", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, 0);
    assert_int_equal(r2->nresp, 1);
    assert_memory_equal(r2->body, "two", 3);
    weft_http_client_stats st = stats(f);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.reuses, 1);
    assert_int_equal(atomic_load(&f->u.nreq), 3);
    expect_request(f, 1, "GET /two HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n");
    expect_request(f, 2, "GET /two HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n");
}

static void test_no_retry_after_response_bytes(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"), RD,
                              WR("HTTP/1.1 200 OK\r\nCont"), END};
    const step *sc[] = {s0, s0};
    upstream_start(&f->u, 2, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/one", r);
    submit(f, &o, r);
    run_done(f, r);
    res *r2 = &f->r[1];
    o = mk("GET", f->u.port, "/two", r2);
    submit(f, &o, r2);
    run_done(f, r2);
    assert_int_equal(r2->err, WEFT_ERESET);
    assert_int_equal(stats(f).connects, 1);
    assert_int_equal(atomic_load(&f->u.nreq), 2);
}

static void test_idle_closed_by_peer(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"), SLEEP(50),
                              END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/one", r);
    submit(f, &o, r);
    run_done(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(stats(f).idle, 1);
    assert_true(run_until(f, pred_idle0, NULL, 5000));
}

static void test_idle_timeout_and_cap(void **state)
{
    fx *f = *state;
    weft_http_client_free(f->c);
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.idle_timeout_ms = 100;
    co.max_idle_per_host = 1;
    f->c = weft_http_client_new(f->loop, &co);
    assert_non_null(f->c);
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"), WAIT_EOF, END};
    const step *sc[] = {s0, s0};
    upstream_start(&f->u, 2, sc);
    /* two concurrent requests: two connections, only one kept */
    for (int i = 0; i < 2; i++) {
        weft_http_creq_opts o = mk("GET", f->u.port, "/", &f->r[i]);
        submit(f, &o, &f->r[i]);
    }
    run_done(f, &f->r[0]);
    assert_true(run_until(f, pred_done, &f->r[1], 5000));
    assert_int_equal(f->r[0].err, 0);
    assert_int_equal(f->r[1].err, 0);
    weft_http_client_stats st = stats(f);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.idle, 1);
    uint64_t t0 = weft_now_us();
    assert_true(run_until(f, pred_idle0, NULL, 5000));
    uint64_t ms = (weft_now_us() - t0) / 1000;
    assert_true(ms >= 50 && ms < 2000);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_int_equal(atomic_load(&f->u.eofs), 2);
}

static void test_cancel_in_response(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"),
                              SLEEP(20), WR("56789"), WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    r->cancel_at = 1;
    weft_http_creq_opts o = mk("GET", f->u.port, "/", r);
    submit(f, &o, r);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_false(run_until(f, pred_never, NULL, 30));
    assert_int_equal(r->nresp, 1);
    assert_int_equal(r->nbody, 0);
    assert_int_equal(r->ndone, 0);
    assert_int_equal(atomic_load(&f->u.eofs), 1);
    assert_int_equal(stats(f).idle, 0);
}

static void test_cancel_in_body(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WR("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"),
                              WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    r->cancel_at = 2;
    weft_http_creq_opts o = mk("GET", f->u.port, "/", r);
    submit(f, &o, r);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_false(run_until(f, pred_never, NULL, 30));
    assert_int_equal(r->nbody, 1);
    assert_int_equal(r->ndone, 0);
}

static void test_cancel_before_connect(void **state)
{
    fx *f = *state;
    static const step s0[] = {WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/", r);
    submit(f, &o, r);
    weft_http_creq_cancel(r->q);
    /* and an immediately failing one (bad name): its deferred error too */
    res *r2 = &f->r[1];
    o = mk("GET", 80, "/", r2);
    o.host = "no-such-host.invalid";
    submit(f, &o, r2);
    weft_http_creq_cancel(r2->q);
    assert_false(run_until(f, pred_never, NULL, 50));
    assert_int_equal(r->ndone + r->nresp + r2->ndone, 0);
}

static void test_unresolvable(void **state)
{
    fx *f = *state;
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", 80, "/", r);
    o.host = "no-such-host.invalid";
    submit(f, &o, r);
    assert_int_equal(r->ndone, 0); /* never from inside submit */
    run_done(f, r);
    assert_int_equal(r->err, WEFT_ENOTFOUND);
}

/* 64 MiB chunked body with varying chunk sizes; byte i is a function of i,
 * so the client can checksum it independently of the chunking. */
#define BIG_TOTAL (64ull << 20)
static unsigned char big_byte(uint64_t i) { return (unsigned char)((i * 2654435761u) >> 7); }

static void serve_big(upstream *u, int fd)
{
    (void)u;
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    write_all(fd, head, sizeof head - 1);
    size_t cap = 200000;
    char *buf = malloc(cap);
    if (!buf)
        return;
    uint64_t off = 0, rnd = 88172645463325252ull;
    while (off < BIG_TOTAL) {
        rnd ^= rnd << 13;
        rnd ^= rnd >> 7;
        rnd ^= rnd << 17;
        size_t n = 1 + (size_t)(rnd % 131072);
        if (n > BIG_TOTAL - off)
            n = (size_t)(BIG_TOTAL - off);
        int h = snprintf(buf, cap, "%zx\r\n", n);
        for (size_t i = 0; i < n; i++)
            buf[(size_t)h + i] = (char)big_byte(off + i);
        memcpy(buf + (size_t)h + n, "\r\n", 2);
        write_all(fd, buf, (size_t)h + n + 2);
        off += n;
    }
    write_all(fd, "0\r\n\r\n", 5);
    free(buf);
}

static void test_big_chunked_streamed(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, FN(serve_big), WAIT_EOF, END};
    const step *sc[] = {s0};
    uint64_t want = FNV_INIT;
    unsigned char tmp[4096];
    for (uint64_t off = 0; off < BIG_TOTAL; off += sizeof tmp) {
        for (size_t i = 0; i < sizeof tmp; i++)
            tmp[i] = big_byte(off + i);
        want = fnv_update(want, tmp, sizeof tmp);
    }
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/big", r);
    r->rss_base = r->rss_peak = rss_pages();
    submit(f, &o, r);
    assert_true(run_until(f, pred_done, r, 60000));
    long after = rss_pages();
    if (after > r->rss_peak)
        r->rss_peak = after;
    assert_int_equal(r->err, 0);
    assert_int_equal(r->total, BIG_TOTAL);
    assert_true(r->fnv == want);
    long growth = (r->rss_peak - r->rss_base) * sysconf(_SC_PAGESIZE);
    print_message("64 MiB chunked: %d body callbacks, peak RSS growth %ld KiB\n", r->nbody,
                  growth / 1024);
    assert_true(growth < (16l << 20));
    assert_int_equal(stats(f).idle, 1);
}

static void test_free_inflight(void **state)
{
    fx *f = *state;
    static const step s0[] = {RD, WAIT_EOF, END};
    const step *sc[] = {s0};
    upstream_start(&f->u, 1, sc);
    res *r = &f->r[0];
    weft_http_creq_opts o = mk("GET", f->u.port, "/hang", r);
    submit(f, &o, r);
    int one = 1;
    assert_true(run_until(f, pred_nreq, &one, 5000));
    /* plus one that is still connecting-or-pending (deferred error) */
    res *r2 = &f->r[1];
    o = mk("GET", 80, "/", r2);
    o.host = "no-such-host.invalid";
    submit(f, &o, r2);
    weft_http_client_free(f->c);
    f->c = NULL;
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->err, WEFT_ECANCELED);
    assert_int_equal(r2->ndone, 1);
    assert_int_equal(r2->err, WEFT_ECANCELED);
    assert_true(run_until(f, pred_upstream_done, NULL, 5000));
    assert_int_equal(atomic_load(&f->u.eofs), 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_get_content_length),
        T(test_request_bytes),
        T(test_invalid_requests),
        T(test_chunked_trailers),
        T(test_eof_body),
        T(test_head_and_204),
        T(test_100_continue),
        T(test_keepalive_reuse),
        T(test_connection_close),
        T(test_refused),
        T(test_reset_mid_body),
        T(test_closed_mid_body),
        T(test_response_timeout),
        T(test_connect_timeout),
        T(test_malformed),
        T(test_head_too_large),
        T(test_stale_retry),
        T(test_no_retry_after_response_bytes),
        T(test_idle_closed_by_peer),
        T(test_idle_timeout_and_cap),
        T(test_cancel_in_response),
        T(test_cancel_in_body),
        T(test_cancel_before_connect),
        T(test_unresolvable),
        T(test_big_chunked_streamed),
        T(test_free_inflight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
