/*
 * server.c — HTTP/1.1 server connections on the event loop.
 *
 * Design. Each worker owns its listeners (SO_REUSEPORT, one socket per
 * worker per address, created up front so port 0 and bind errors are
 * handled before any thread starts) and its connections; nothing is shared
 * between workers at run time except the read-only route table.
 *
 * A connection reads with one read(2) per readiness event, parses every
 * complete request in the buffer (pipelining), appends each response to one
 * output buffer and flushes it with one write(2) — so a keep-alive request
 * costs a read, a write and a share of an epoll_wait, like nginx. Only one
 * request per connection is active at a time; if a handler answers later
 * (asynchronously), the pipelined requests behind it simply wait in the
 * input buffer, which keeps responses in order for free.
 *
 * The parsed head is copied into the request's arena and its slices rebased,
 * so the input buffer may grow or compact while the request is active (body
 * reads, pipelined bytes) without invalidating what the handler holds.
 *
 * Timeouts use one timer per connection with a lazily extended deadline:
 * progress only writes c->deadline; when the timer fires early it re-arms
 * itself to the real deadline. Keep-alive traffic therefore never touches
 * the timer heap.
 *
 * Closing is deferred while a callback for the connection is on the stack
 * (busy count), so a handler may fail a write or the peer may vanish in the
 * middle of a callback without a use-after-free. Final responses that close
 * the connection use a lingering close (shutdown write side, drain input
 * for a bounded time) so the client's unread pipelined bytes cannot turn
 * into an RST that destroys the response in flight.
 */
#include "http_int.h"
#include "weft/http.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 4096
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (1u << 20)
#define DRAIN_IDLE_GRACE_MS 500
#define DRAIN_LISTEN_GRACE_MS 50
#define LISTEN_BACKLOG 4096
#define BODY_READ_MAX (64u * 1024)
#define BODY_DISCARD_MAX (64u * 1024)
#define MAX_WORKERS 256

typedef struct route {
    unsigned mask;
    char *path;
    size_t plen;
    unsigned flags;
    weft_http_handler h;
    void *ud;
} route;

typedef struct listen_addr {
    char *spec;       /* as given */
    char bound[80];   /* host:port after bind */
    struct sockaddr_storage sa;
    socklen_t salen;
    int *fds;         /* one per worker */
} listen_addr;

typedef struct wstate wstate;
typedef struct conn conn;

struct weft_http_server {
    weft_http_server_opts o;
    weft_http_limits lim;
    route *routes;
    size_t nroutes, routes_cap;
    route fallback;
    bool has_fallback;
    listen_addr *addrs;
    size_t naddrs;
    int workers;
    wstate *ws[MAX_WORKERS];
    /* metrics */
    weft_metrics *m;
    weft_metric m_status[6]; /* 1xx..5xx, index 0 = other */
    weft_metric m_duration, m_conns, m_conns_total, m_bad_requests;
};

struct wstate {
    weft_http_server *srv;
    weft_loop *loop;
    weft_io *lio; /* one per address */
    conn *conns;  /* doubly linked list */
    size_t nconns;
    bool draining;
    bool listening; /* listeners open (closed DRAIN_LISTEN_GRACE_MS into a drain) */
    weft_timer listen_timer;
    int64_t date_s;
    char date[40]; /* "Date: ...\r\n" */
    size_t date_len;
    uint64_t rng;
    uint64_t reqseq;
    weft_http_req *free_reqs;
    size_t nfree_reqs;
    /* connections answered from outside their own callbacks (async
     * handlers), flushed together at the end of the loop iteration by a
     * zero-delay timer: the head, body and end of a proxied response then
     * leave in one write instead of one write each */
    conn *pending;
    weft_timer pending_timer;
};

enum cstate { C_HEAD, C_BODY, C_WAIT, C_LINGER };

struct weft_http_req {
    conn *c;
    weft_http_req *next_free;
    weft_http_head head;
    const route *rt;
    weft_arena arena;
    /* body */
    int body_kind;
    uint64_t body_left;
    weft_chunked chunked;
    bool body_done;
    bool stream;
    bool body_paused; /* the handler asked us to stop reading the body */
    bool close_on_eof; /* long-lived response: client EOF means the client is gone */
    weft_buf body; /* buffered routes */
    weft_http_body_cb on_data;
    weft_http_end_cb on_end;
    void *body_ud;
    void (*on_abort)(weft_http_req *, void *);
    void *abort_ud;
    void (*on_drain)(weft_http_req *, void *);
    void *drain_ud;
    /* response */
    int status;
    bool resp_started, resp_done, resp_chunked, resp_head_only;
    int64_t resp_left; /* content-length bytes still to send, -1 chunked/eof */
    struct iovec *xh;  /* extra headers as "Name: value\r\n" */
    size_t nxh, xh_cap;
    char id[24];
    size_t id_len;
    char *peer;
    uint64_t start_us;
    void *data;
    weft_http_req_hook *hooks; /* released-request listeners */
};

struct conn {
    weft_io io;
    weft_timer timer;
    wstate *w;
    conn *prev, *next;
    weft_buf in, out;
    weft_http_parser parser;
    int state;
    weft_http_req *req;
    uint64_t deadline_ms;
    int busy;
    bool dead;
    bool keep_alive;      /* connection may serve another request */
    bool read_paused;
    bool peer_eof;
    uint32_t lingered;
    bool queued;          /* on w->pending */
    conn *next_pending;
    char *peer_text;      /* "ip:port", formatted once per connection */
    struct sockaddr_storage peer;
};

static void conn_process(conn *c);
static void conn_flush(conn *c);
static void conn_close(conn *c);
static void conn_release(conn *c);
static void conn_update_interest(conn *c);
static void finish_request(conn *c);
static void schedule_flush(conn *c);
static void listen_closed(weft_loop *loop, weft_timer *t);

/* ------------------------------------------------------------------ */
/* options, routes, listeners                                          */

void weft_http_server_opts_default(weft_http_server_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_request_line = 8192;
    o->max_header_bytes = 32768;
    o->max_headers = 100;
    o->max_body = 1u << 20;
    o->header_timeout_ms = 10000;
    o->body_timeout_ms = 30000;
    o->idle_timeout_ms = 60000;
    o->drain_timeout_ms = 10000;
    o->max_connections = 10000;
    o->out_high_water = 256 * 1024;
    o->server_name = "weft";
}

weft_http_server *weft_http_server_new(const weft_http_server_opts *opts)
{
    weft_http_server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (opts)
        s->o = *opts;
    else
        weft_http_server_opts_default(&s->o);
    weft_http_limits_default(&s->lim);
    s->lim.max_request_line = s->o.max_request_line;
    s->lim.max_header_bytes = s->o.max_header_bytes;
    s->lim.max_headers = s->o.max_headers;
    if (s->o.out_high_water < 4096)
        s->o.out_high_water = 4096;
    s->m = weft_metrics_global();
    static const char *const cls[] = {"code=\"other\"", "code=\"1xx\"", "code=\"2xx\"",
                                      "code=\"3xx\"", "code=\"4xx\"", "code=\"5xx\""};
    for (int i = 0; i < 6; i++)
        weft_metrics_counter(s->m, "weft_http_requests_total",
                             "HTTP requests answered, by status class.", cls[i], &s->m_status[i]);
    weft_metrics_histogram(s->m, "weft_http_request_duration_seconds",
                           "Time from complete request head to response queued.", NULL,
                           weft_latency_buckets, weft_latency_nbuckets, &s->m_duration);
    weft_metrics_gauge(s->m, "weft_http_connections", "Open client connections.", NULL,
                       &s->m_conns);
    weft_metrics_counter(s->m, "weft_http_connections_total", "Client connections accepted.",
                         NULL, &s->m_conns_total);
    weft_metrics_counter(s->m, "weft_http_bad_requests_total",
                         "Requests rejected by the parser or limits (4xx/5xx before routing).",
                         NULL, &s->m_bad_requests);
    return s;
}

const weft_http_server_opts *weft_http_server_opts_get(const weft_http_server *s)
{
    return &s->o;
}

void weft_http_server_free(weft_http_server *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nroutes; i++)
        free(s->routes[i].path);
    free(s->routes);
    for (size_t i = 0; i < s->naddrs; i++) {
        if (s->addrs[i].fds)
            for (int w = 0; w < s->workers; w++)
                if (s->addrs[i].fds[w] >= 0)
                    close(s->addrs[i].fds[w]);
        free(s->addrs[i].fds);
        free(s->addrs[i].spec);
    }
    free(s->addrs);
    free(s);
}

int weft_http_server_route(weft_http_server *s, unsigned method_mask, const char *path,
                           unsigned flags, weft_http_handler h, void *ud)
{
    if (!path || path[0] != '/' || !h)
        return WEFT_EINVAL;
    if (s->nroutes == s->routes_cap) {
        size_t ncap = s->routes_cap ? s->routes_cap * 2 : 8;
        route *nr = realloc(s->routes, ncap * sizeof *nr);
        if (!nr)
            return WEFT_ENOMEM;
        s->routes = nr;
        s->routes_cap = ncap;
    }
    route *r = &s->routes[s->nroutes];
    r->path = strdup(path);
    if (!r->path)
        return WEFT_ENOMEM;
    r->plen = strlen(path);
    r->mask = method_mask;
    r->flags = flags;
    r->h = h;
    r->ud = ud;
    s->nroutes++;
    return 0;
}

void weft_http_server_fallback(weft_http_server *s, unsigned flags, weft_http_handler h, void *ud)
{
    s->fallback = (route){.mask = 0, .path = NULL, .plen = 0, .flags = flags, .h = h, .ud = ud};
    s->has_fallback = h != NULL;
}

int weft_http_parse_hostport(const char *spec, struct sockaddr_storage *sa, socklen_t *len)
{
    char host[256];
    const char *colon;
    const char *hs = spec;
    size_t hl;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':')
            return WEFT_EADDR;
        hs = spec + 1;
        hl = (size_t)(end - hs);
        colon = end + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon)
            return WEFT_EADDR;
        hl = (size_t)(colon - spec);
    }
    if (hl >= sizeof host)
        return WEFT_EADDR;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    char *endp;
    long port = strtol(colon + 1, &endp, 10);
    if (colon[1] == '\0' || *endp != '\0' || port < 0 || port > 65535)
        return WEFT_EADDR;
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    if (hl == 0 || strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0) {
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_ANY);
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
        return 0;
    }
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
        return 0;
    }
    return WEFT_EADDR;
}

void weft_http_join_hostport(const char *host, unsigned port, char *buf, size_t n)
{
    bool v6 = strchr(host, ':') != NULL;
    snprintf(buf, n, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

void weft_http_format_addr(const struct sockaddr_storage *sa, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof ip);
        snprintf(buf, n, "%s:%u", ip, ntohs(v4->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof ip);
        snprintf(buf, n, "[%s]:%u", ip, ntohs(v6->sin6_port));
    } else {
        snprintf(buf, n, "unknown");
    }
}

int weft_http_server_listen(weft_http_server *s, const char *hostport)
{
    struct sockaddr_storage sa;
    socklen_t len;
    int rc = weft_http_parse_hostport(hostport, &sa, &len);
    if (rc < 0)
        return rc;
    listen_addr *na = realloc(s->addrs, (s->naddrs + 1) * sizeof *na);
    if (!na)
        return WEFT_ENOMEM;
    s->addrs = na;
    listen_addr *a = &s->addrs[s->naddrs];
    memset(a, 0, sizeof *a);
    a->spec = strdup(hostport);
    if (!a->spec)
        return WEFT_ENOMEM;
    a->sa = sa;
    a->salen = len;
    s->naddrs++;
    return 0;
}

int weft_tcp_listen(const struct sockaddr_storage *sa, socklen_t len, bool reuseport, int *out)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return weft_err_from_errno(errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (sa->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)sa, len) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        int e = errno;
        close(fd);
        return weft_err_from_errno(e);
    }
    *out = fd;
    return 0;
}

static int open_listener(struct sockaddr_storage *sa, socklen_t len, int *out)
{
    return weft_tcp_listen(sa, len, true, out);
}

int weft_tcp_connect_start(const char *hostport)
{
    struct sockaddr_storage sa;
    socklen_t len;
    if (weft_http_parse_hostport(hostport, &sa, &len) < 0)
        return WEFT_EADDR;
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return weft_err_from_errno(errno);
    if (connect(fd, (struct sockaddr *)&sa, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return weft_err_from_errno(e);
    }
    return fd;
}

int weft_tcp_connect_result(int fd)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = errno;
    return err ? weft_err_from_errno(err) : 0;
}

/* SO_REUSEPORT would let a second process (same user) bind a port that is
 * already serving and silently take half its connections. Probe with a
 * plain bind first, so "address in use" is reported as it should be. */
static bool port_in_use(const struct sockaddr_storage *sa, socklen_t len)
{
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
    if (v4->sin_port == 0)
        return false;
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sa->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    bool busy = bind(fd, (const struct sockaddr *)sa, len) < 0 && errno == EADDRINUSE;
    close(fd);
    return busy;
}

int weft_http_server_bind(weft_http_server *s, int workers)
{
    if (workers < 1 || workers > MAX_WORKERS)
        return WEFT_EINVAL;
    s->workers = workers;
    for (size_t i = 0; i < s->naddrs; i++) {
        listen_addr *a = &s->addrs[i];
        a->fds = malloc(sizeof(int) * (size_t)workers);
        if (!a->fds)
            return WEFT_ENOMEM;
        for (int w = 0; w < workers; w++)
            a->fds[w] = -1;
        if (port_in_use(&a->sa, a->salen)) {
            errno = EADDRINUSE;
            weft_log(WEFT_LOG_ERROR, "cannot listen", WEFT_KV_STR("addr", a->spec),
                     WEFT_KV_STR("error", strerror(errno)));
            return WEFT_EEXIST;
        }
        for (int w = 0; w < workers; w++) {
            int rc = open_listener(&a->sa, a->salen, &a->fds[w]);
            if (rc < 0) {
                weft_log(WEFT_LOG_ERROR, "cannot listen", WEFT_KV_STR("addr", a->spec),
                         WEFT_KV_STR("error", strerror(errno)));
                return rc;
            }
            if (w == 0) {
                /* learn the real port (port 0) so the other workers share it */
                socklen_t l = sizeof a->sa;
                getsockname(a->fds[0], (struct sockaddr *)&a->sa, &l);
                a->salen = l;
                weft_http_format_addr(&a->sa, a->bound, sizeof a->bound);
            }
        }
    }
    return 0;
}

const char *weft_http_server_address(const weft_http_server *s, size_t i)
{
    return i < s->naddrs ? s->addrs[i].bound : NULL;
}

size_t weft_http_server_address_count(const weft_http_server *s) { return s->naddrs; }

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

static size_t u64toa(uint64_t v, char *out)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t weft_http_date(int64_t unix_s, char *buf)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    time_t t = (time_t)unix_s;
    gmtime_r(&t, &tm);
    int n = snprintf(buf, 30, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
                     mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return n > 0 ? (size_t)n : 0;
}

static void update_date(wstate *w)
{
    int64_t now = weft_loop_wall_s(w->loop);
    if (now == w->date_s)
        return;
    w->date_s = now;
    memcpy(w->date, "Date: ", 6);
    size_t n = weft_http_date(now, w->date + 6);
    memcpy(w->date + 6 + n, "\r\n", 2);
    w->date_len = 6 + n + 2;
}

static uint64_t rng_next(wstate *w)
{
    /* xorshift64*: request ids only need to be unique-ish and cheap */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void rebase(weft_str *s, const char *from, const char *to)
{
    if (s->p)
        s->p = to + (s->p - from);
}

/* ------------------------------------------------------------------ */
/* requests                                                             */

static weft_http_req *req_get(wstate *w)
{
    weft_http_req *r = w->free_reqs;
    if (r) {
        w->free_reqs = r->next_free;
        w->nfree_reqs--;
    } else {
        r = malloc(sizeof *r);
        if (!r)
            return NULL;
        weft_arena_init(&r->arena, 2048, 64u << 20);
        weft_buf_init(&r->body, 0);
    }
    /* reset only the fields that matter; head is filled by the parser */
    r->c = NULL;
    r->rt = NULL;
    r->body_kind = WEFT_BODY_NONE;
    r->body_left = 0;
    r->body_done = true;
    r->stream = false;
    r->body_paused = false;
    r->close_on_eof = false;
    r->on_data = NULL;
    r->on_end = NULL;
    r->on_abort = NULL;
    r->on_drain = NULL;
    r->hooks = NULL;
    r->status = 0;
    r->resp_started = r->resp_done = r->resp_chunked = r->resp_head_only = false;
    r->resp_left = -1;
    r->xh = NULL;
    r->nxh = r->xh_cap = 0;
    r->id_len = 0;
    r->peer = NULL;
    r->data = NULL;
    return r;
}

static void req_put(wstate *w, weft_http_req *r)
{
    while (r->hooks) { /* each hook unlinks itself before its callback */
        weft_http_req_hook *h = r->hooks;
        weft_http_req_hook_remove(r, h);
        h->cb(r, h);
    }
    weft_arena_reset(&r->arena);
    weft_buf_release(&r->body);
#ifdef WEFT_DEBUG_ALLOC
    bool keep = false;
#else
    bool keep = w->nfree_reqs < 64;
#endif
    if (keep) {
        r->next_free = w->free_reqs;
        w->free_reqs = r;
        w->nfree_reqs++;
    } else {
        weft_arena_release(&r->arena);
        free(r);
    }
}

int weft_http_req_method(const weft_http_req *r) { return r->head.method; }
weft_str weft_http_req_method_str(const weft_http_req *r) { return r->head.method_str; }
weft_str weft_http_req_target(const weft_http_req *r) { return r->head.target; }
weft_str weft_http_req_path(const weft_http_req *r) { return r->head.path; }
weft_str weft_http_req_query(const weft_http_req *r) { return r->head.query; }
weft_str weft_http_req_host(const weft_http_req *r) { return r->head.host; }
int weft_http_req_version_minor(const weft_http_req *r) { return r->head.version_minor; }
int64_t weft_http_req_content_length(const weft_http_req *r)
{
    return r->head.body_kind == WEFT_BODY_LENGTH ? (int64_t)r->head.content_length
           : r->head.body_kind == WEFT_BODY_NONE ? 0
                                                 : -1;
}

weft_str weft_http_req_body(const weft_http_req *r)
{
    return (weft_str){weft_buf_rptr(&r->body), weft_buf_used(&r->body)};
}
weft_loop *weft_http_req_loop(const weft_http_req *r) { return r->c->w->loop; }
void weft_http_req_set_data(weft_http_req *r, void *data) { r->data = data; }
void *weft_http_req_data(const weft_http_req *r) { return r->data; }
void *weft_http_req_alloc(weft_http_req *r, size_t n) { return weft_arena_alloc(&r->arena, n); }
void weft_http_req_set_path(weft_http_req *r, weft_str p) { r->head.path = p; }

weft_str weft_http_req_header(const weft_http_req *r, weft_str name)
{
    const weft_http_header *h = weft_http_head_find(&r->head, name);
    return h ? h->value : WEFT_STR_NULL;
}

size_t weft_http_req_header_count(const weft_http_req *r) { return r->head.nheaders; }

void weft_http_req_header_at(const weft_http_req *r, size_t i, weft_str *name, weft_str *value)
{
    if (i >= r->head.nheaders) {
        *name = *value = WEFT_STR_NULL;
        return;
    }
    *name = r->head.headers[i].name;
    *value = r->head.headers[i].value;
}

bool weft_http_req_query_param(const weft_http_req *r, const char *name, weft_str *value)
{
    weft_str q = r->head.query;
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < q.n) {
        size_t j = i;
        while (j < q.n && q.p[j] != '&')
            j++;
        const char *eq = memchr(q.p + i, '=', j - i);
        size_t kl = eq ? (size_t)(eq - (q.p + i)) : j - i;
        if (kl == nl && memcmp(q.p + i, name, nl) == 0) {
            if (eq)
                *value = (weft_str){eq + 1, (size_t)(q.p + j - (eq + 1))};
            else
                *value = (weft_str){q.p + j, 0};
            return true;
        }
        i = j + 1;
    }
    return false;
}

weft_str weft_http_req_id(weft_http_req *r)
{
    if (r->id_len)
        return (weft_str){r->id, r->id_len};
    weft_str h = weft_http_req_header(r, WEFT_STR("X-Request-Id"));
    if (h.n > 0 && h.n < 200) {
        /* keep the client's id; copy so it survives like everything else */
        char *p = weft_arena_strdup(&r->arena, h.p, h.n);
        if (p)
            return (weft_str){p, h.n};
    }
    static const char hex[] = "0123456789abcdef";
    uint64_t v = rng_next(r->c->w);
    for (int i = 0; i < 16; i++)
        r->id[i] = hex[(v >> (60 - 4 * i)) & 0xf];
    r->id_len = 16;
    return (weft_str){r->id, r->id_len};
}

const char *weft_http_req_peer(weft_http_req *r)
{
    conn *c = r->c;
    if (!c->peer_text) {
        char buf[80];
        weft_http_format_addr(&c->peer, buf, sizeof buf);
        c->peer_text = strdup(buf);
    }
    return c->peer_text ? c->peer_text : "unknown";
}

void weft_http_req_on_body(weft_http_req *r, weft_http_body_cb on_data, weft_http_end_cb on_end,
                           void *ud)
{
    r->on_data = on_data;
    r->on_end = on_end;
    r->body_ud = ud;
}

void weft_http_req_close_on_eof(weft_http_req *r) { r->close_on_eof = true; }

void weft_http_req_pause_body(weft_http_req *r, bool paused)
{
    conn *c = r->c;
    if (!c || r->body_paused == paused)
        return;
    r->body_paused = paused;
    if (c->busy)
        return; /* the callback in progress re-evaluates interest on its way out */
    if (paused)
        conn_update_interest(c);
    else
        schedule_flush(c); /* process buffered body bytes, then read again */
}

void weft_http_req_hook_add(weft_http_req *r, weft_http_req_hook *h)
{
    h->prev = NULL;
    h->next = r->hooks;
    if (r->hooks)
        r->hooks->prev = h;
    r->hooks = h;
}

void weft_http_req_hook_remove(weft_http_req *r, weft_http_req_hook *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else if (r->hooks == h)
        r->hooks = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->next = h->prev = NULL;
}

uint64_t weft_http_req_start_us(const weft_http_req *r) { return r->start_us; }

void weft_http_req_on_abort(weft_http_req *r, void (*cb)(weft_http_req *, void *), void *ud)
{
    r->on_abort = cb;
    r->abort_ud = ud;
}

void weft_http_resp_on_drain(weft_http_req *r, void (*cb)(weft_http_req *, void *), void *ud)
{
    r->on_drain = cb;
    r->drain_ud = ud;
}

/* ------------------------------------------------------------------ */
/* responses                                                            */

int weft_http_resp_header(weft_http_req *r, weft_str name, weft_str value)
{
    if (r->resp_started || !r->c)
        return WEFT_EINVAL;
    for (size_t i = 0; i < name.n; i++)
        if (name.p[i] <= ' ' || name.p[i] == ':' || name.p[i] == 0x7f)
            return WEFT_EINVAL;
    for (size_t i = 0; i < value.n; i++)
        if (value.p[i] == '\r' || value.p[i] == '\n' || value.p[i] == '\0')
            return WEFT_EINVAL;
    if (r->nxh == r->xh_cap) {
        size_t ncap = r->xh_cap ? r->xh_cap * 2 : 8;
        struct iovec *nx = weft_arena_alloc(&r->arena, ncap * sizeof *nx);
        if (!nx)
            return WEFT_ENOMEM;
        if (r->nxh)
            memcpy(nx, r->xh, r->nxh * sizeof *nx);
        r->xh = nx;
        r->xh_cap = ncap;
    }
    size_t len = name.n + 2 + value.n + 2;
    char *p = weft_arena_alloc(&r->arena, len);
    if (!p)
        return WEFT_ENOMEM;
    memcpy(p, name.p, name.n);
    memcpy(p + name.n, ": ", 2);
    memcpy(p + name.n + 2, value.p, value.n);
    memcpy(p + name.n + 2 + value.n, "\r\n", 2);
    r->xh[r->nxh].iov_base = p;
    r->xh[r->nxh].iov_len = len;
    r->nxh++;
    return 0;
}

static bool status_has_body(int status)
{
    return !(status < 200 || status == 204 || status == 304);
}

/* Append the status line and headers to c->out. */
static int write_head(conn *c, weft_http_req *r, int status, weft_str ctype, int64_t clen)
{
    wstate *w = c->w;
    weft_http_server *s = w->srv;
    update_date(w);
    const char *reason = weft_http_reason(status);
    size_t rlen = strlen(reason);
    size_t sn = s->o.server_name ? strlen(s->o.server_name) : 0;
    size_t need = 16 + rlen + 2 + (sn ? sn + 10 : 0) + w->date_len + ctype.n + 20 + 48 + 64;
    for (size_t i = 0; i < r->nxh; i++)
        need += r->xh[i].iov_len;
    int rc = weft_buf_reserve(&c->out, need);
    if (rc < 0)
        return rc;
    char *p = weft_buf_wptr(&c->out);
    char *start = p;
    memcpy(p, "HTTP/1.1 ", 9);
    p += 9;
    p[0] = (char)('0' + status / 100);
    p[1] = (char)('0' + status / 10 % 10);
    p[2] = (char)('0' + status % 10);
    p[3] = ' ';
    p += 4;
    memcpy(p, reason, rlen);
    p += rlen;
    *p++ = '\r';
    *p++ = '\n';
    if (sn) {
        memcpy(p, "Server: ", 8);
        memcpy(p + 8, s->o.server_name, sn);
        p += 8 + sn;
        *p++ = '\r';
        *p++ = '\n';
    }
    memcpy(p, w->date, w->date_len);
    p += w->date_len;
    for (size_t i = 0; i < r->nxh; i++) {
        memcpy(p, r->xh[i].iov_base, r->xh[i].iov_len);
        p += r->xh[i].iov_len;
    }
    if (ctype.n) {
        memcpy(p, "Content-Type: ", 14);
        memcpy(p + 14, ctype.p, ctype.n);
        p += 14 + ctype.n;
        *p++ = '\r';
        *p++ = '\n';
    }
    if (status_has_body(status)) {
        if (clen >= 0) {
            memcpy(p, "Content-Length: ", 16);
            p += 16;
            p += u64toa((uint64_t)clen, p);
            *p++ = '\r';
            *p++ = '\n';
        } else if (r->head.version_minor >= 1) {
            static const char te[] = "Transfer-Encoding: chunked\r\n";
            memcpy(p, te, sizeof te - 1);
            p += sizeof te - 1;
            r->resp_chunked = true;
        } else {
            c->keep_alive = false; /* HTTP/1.0: body ends at close */
        }
    }
    if (w->draining)
        c->keep_alive = false;
    if (!c->keep_alive) {
        static const char cc[] = "Connection: close\r\n";
        memcpy(p, cc, sizeof cc - 1);
        p += sizeof cc - 1;
    } else if (r->head.version_minor == 0) {
        static const char ka[] = "Connection: keep-alive\r\n";
        memcpy(p, ka, sizeof ka - 1);
        p += sizeof ka - 1;
    }
    *p++ = '\r';
    *p++ = '\n';
    weft_buf_commit(&c->out, (size_t)(p - start));
    r->status = status;
    r->resp_started = true;
    r->resp_head_only = r->head.method == WEFT_METHOD_HEAD || !status_has_body(status);
    r->resp_left = clen;
    return 0;
}

static void count_response(conn *c, weft_http_req *r)
{
    weft_http_server *s = c->w->srv;
    int cls = r->status / 100;
    weft_metric_inc(s->m, s->m_status[cls >= 1 && cls <= 5 ? cls : 0]);
    double secs = (double)(weft_now_us() - r->start_us) / 1e6;
    weft_metric_observe(s->m, s->m_duration, secs);
}

static void run_pending(weft_loop *loop, weft_timer *t);

/* Queue the connection for run_pending at the end of the loop iteration,
 * which flushes a live one and releases a dead one. Used directly for a
 * connection that died under an outside caller (its release and on_abort
 * must not run inside that caller). */
static void queue_pending(conn *c)
{
    if (c->queued)
        return;
    wstate *w = c->w;
    c->queued = true;
    c->next_pending = w->pending;
    w->pending = c;
    if (!weft_timer_active(&w->pending_timer))
        weft_timer_start(w->loop, &w->pending_timer, 0);
}

/* Output was produced from outside the connection's own callbacks: queue
 * the connection for the end-of-iteration flush. */
static void schedule_flush(conn *c)
{
    if (!c->dead)
        queue_pending(c);
}

/* Close on behalf of an outside caller (a response written from an
 * upstream callback): the release, and the on_abort it runs, wait for the
 * end of the loop iteration. */
static void close_from_caller(conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    weft_io_stop(c->w->loop, &c->io);
    if (c->busy == 0)
        queue_pending(c);
}

/* Response finished from outside conn_process (async handler): flush, then
 * continue with pipelined requests. */
static void after_async(conn *c)
{
    if (c->dead) {
        if (c->busy == 0)
            conn_release(c);
        return;
    }
    c->busy++;
    if (c->req && c->req->resp_done && c->req->body_done)
        finish_request(c);
    conn_process(c);
    conn_flush(c);
    c->busy--;
    if (c->dead && c->busy == 0)
        conn_release(c);
}

static int resp_complete(weft_http_req *r)
{
    conn *c = r->c;
    r->resp_done = true;
    count_response(c, r);
    if (!r->body_done && (r->body_kind != WEFT_BODY_LENGTH || r->body_left > BODY_DISCARD_MAX)) {
        /* A large (or unbounded) unread body is not worth reading just to
         * find the next request: end the connection (lingering close). A
         * small one is read and discarded so keep-alive survives. */
        c->keep_alive = false;
    }
    if (c->busy == 0)
        schedule_flush(c);
    return 0;
}

int weft_http_respond(weft_http_req *r, int status, weft_str ctype, const void *body, size_t len)
{
    if (!r->c || r->resp_started || status < 200 || status > 599)
        return WEFT_EINVAL;
    conn *c = r->c;
    if (!status_has_body(status))
        len = 0;
    int rc = write_head(c, r, status, status_has_body(status) ? ctype : WEFT_STR_NULL,
                        status_has_body(status) ? (int64_t)len : -1);
    if (rc < 0)
        goto fail;
    if (!r->resp_head_only && len) {
        rc = weft_buf_append(&c->out, body, len);
        if (rc < 0)
            goto fail;
    }
    return resp_complete(r);
fail:
    c->keep_alive = false;
    conn_close(c);
    return rc;
}

int weft_http_respond_error(weft_http_req *r, int status, const char *reason)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"status\":%d}\n", reason, status);
    if (n < 0 || (size_t)n >= sizeof body)
        n = 0;
    return weft_http_respond(r, status, WEFT_STR("application/json"), body, (size_t)n);
}

int weft_http_resp_start(weft_http_req *r, int status, weft_str ctype, int64_t content_length)
{
    if (!r->c || r->resp_started || status < 200 || status > 599)
        return WEFT_EINVAL;
    int rc = write_head(r->c, r, status, ctype, content_length);
    if (rc < 0) {
        conn_close(r->c);
        return rc;
    }
    if (r->c->busy == 0)
        schedule_flush(r->c);
    return 0;
}

int weft_http_resp_write(weft_http_req *r, const void *data, size_t len)
{
    conn *c = r->c;
    if (!c || !r->resp_started || r->resp_done || c->dead)
        return WEFT_ECLOSED;
    if (len == 0)
        return 0;
    if (r->resp_head_only) {
        /* HEAD: the body is not sent, but it still counts against the
         * announced Content-Length so resp_end sees a complete message */
        if (r->resp_left >= 0)
            r->resp_left -= (int64_t)len < r->resp_left ? (int64_t)len : r->resp_left;
        return 0;
    }
    int rc;
    if (r->resp_left >= 0) {
        if ((uint64_t)len > (uint64_t)r->resp_left)
            return WEFT_EINVAL; /* more than the announced Content-Length */
        r->resp_left -= (int64_t)len;
        rc = weft_buf_append(&c->out, data, len);
    } else if (r->resp_chunked) {
        char hdr[24];
        static const char hx[] = "0123456789abcdef";
        size_t n = 0;
        char tmp[20];
        size_t v = len;
        do {
            tmp[n++] = hx[v & 0xf];
            v >>= 4;
        } while (v);
        for (size_t i = 0; i < n; i++)
            hdr[i] = tmp[n - 1 - i];
        hdr[n++] = '\r';
        hdr[n++] = '\n';
        rc = weft_buf_reserve(&c->out, n + len + 2);
        if (rc == 0) {
            weft_buf_append(&c->out, hdr, n);
            weft_buf_append(&c->out, data, len);
            weft_buf_append(&c->out, "\r\n", 2);
        }
    } else {
        rc = weft_buf_append(&c->out, data, len);
    }
    if (rc < 0) {
        close_from_caller(c);
        return rc;
    }
    size_t queued = weft_buf_used(&c->out);
    if (c->busy == 0) {
        /* flush at the end of the iteration, or now if a lot is queued */
        if (queued > c->w->srv->o.out_high_water / 2) {
            c->busy++;
            conn_flush(c);
            c->busy--;
        } else {
            schedule_flush(c);
        }
    }
    if (c->dead) {
        /* the client is gone: release the connection from the loop, not
         * under the caller, whose on_abort must not run inside this call */
        if (c->busy == 0)
            queue_pending(c);
        return WEFT_ECLOSED;
    }
    return weft_buf_used(&c->out) > c->w->srv->o.out_high_water ? 1 : 0;
}

int weft_http_resp_end(weft_http_req *r)
{
    conn *c = r->c;
    if (!c || !r->resp_started || r->resp_done)
        return WEFT_EINVAL;
    if (r->resp_left > 0 && !r->resp_head_only) {
        /* announced more than was sent: the message is broken; close */
        c->keep_alive = false;
        r->resp_done = true;
        count_response(c, r);
        conn_close(c);
        return WEFT_EPROTO;
    }
    if (r->resp_chunked && !r->resp_head_only) {
        int rc = weft_buf_append(&c->out, "0\r\n\r\n", 5);
        if (rc < 0) {
            close_from_caller(c);
            return rc;
        }
    }
    return resp_complete(r);
}

void weft_http_resp_abort(weft_http_req *r)
{
    conn *c = r->c;
    if (!c || r->resp_done)
        return;
    c->keep_alive = false;
    r->resp_done = true;
    r->on_abort = NULL; /* the caller is the one giving up: no callback */
    count_response(c, r);
    conn_close(c);
}

/* ------------------------------------------------------------------ */
/* connection lifecycle                                                 */

static void set_deadline(conn *c, uint32_t ms)
{
    weft_loop *loop = c->w->loop;
    c->deadline_ms = weft_loop_now_ms(loop) + ms;
    if (!weft_timer_active(&c->timer) || c->timer.deadline_ms > c->deadline_ms)
        weft_timer_start(loop, &c->timer, ms);
    /* else: the armed timer fires earlier and re-arms itself (lazy extension) */
}

/* End a stream route's body: on_end gets 0 or the error, at most once. */
static void stream_end(weft_http_req *r, int err)
{
    weft_http_end_cb cb = r->on_end;
    r->on_end = NULL;
    r->body_done = true;
    if (cb)
        cb(r, err, r->body_ud);
}

static void abort_request(conn *c)
{
    weft_http_req *r = c->req;
    if (!r)
        return;
    c->req = NULL;
    if (!r->resp_done) {
        if (r->stream && !r->body_done)
            stream_end(r, WEFT_ECLOSED);
        if (r->on_abort)
            r->on_abort(r, r->abort_ud);
    }
    r->c = NULL;
    req_put(c->w, r);
}

static void conn_release(conn *c)
{
    wstate *w = c->w;
    if (c->queued) {
        for (conn **pp = &w->pending; *pp; pp = &(*pp)->next_pending)
            if (*pp == c) {
                *pp = c->next_pending;
                break;
            }
        c->queued = false;
    }
    abort_request(c);
    weft_io_stop(w->loop, &c->io);
    weft_timer_stop(w->loop, &c->timer);
    close(c->io.fd);
    free(c->peer_text);
    weft_buf_release(&c->in);
    weft_buf_release(&c->out);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    weft_metric_gauge_add(w->srv->m, w->srv->m_conns, -1);
    free(c);
    if (w->draining && w->nconns == 0 && !w->listening)
        weft_loop_stop(w->loop);
}

static void conn_close(conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->busy == 0)
        conn_release(c);
    else
        weft_io_stop(c->w->loop, &c->io);
}

static void start_linger(conn *c)
{
    if (c->peer_eof) {
        conn_close(c);
        return;
    }
    shutdown(c->io.fd, SHUT_WR);
    c->state = C_LINGER;
    c->lingered = 0;
    weft_buf_clear(&c->in);
    c->read_paused = false;
    set_deadline(c, LINGER_MS);
    conn_update_interest(c);
}

static void conn_update_interest(conn *c)
{
    if (c->dead)
        return;
    unsigned ev = 0;
    if (!c->read_paused && !c->peer_eof && !(c->req && c->req->body_paused))
        ev |= WEFT_IO_READ;
    if (weft_buf_used(&c->out))
        ev |= WEFT_IO_WRITE;
    if (weft_io_start(c->w->loop, &c->io, ev) < 0)
        conn_close(c);
}

static void conn_flush(conn *c)
{
    if (c->dead)
        return;
    size_t before = weft_buf_used(&c->out);
    while (weft_buf_used(&c->out)) {
        ssize_t n = write(c->io.fd, weft_buf_rptr(&c->out), weft_buf_used(&c->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            conn_close(c);
            return;
        }
        weft_buf_consume(&c->out, (size_t)n);
        if (c->state != C_LINGER && c->state != C_HEAD)
            set_deadline(c, c->w->srv->o.body_timeout_ms);
    }
    size_t hw = c->w->srv->o.out_high_water;
    size_t left = weft_buf_used(&c->out);
    if (left == 0 && c->out.cap > 64 * 1024)
        weft_buf_release(&c->out); /* do not keep a big buffer after a burst */
    /* resume reading once the client has caught up */
    c->read_paused = left > hw;
    if (c->req && c->req->on_drain && before > hw / 2 && left <= hw / 2 && !c->req->resp_done) {
        weft_http_req *r = c->req;
        c->busy++;
        r->on_drain(r, r->drain_ud);
        c->busy--;
        if (c->dead) {
            if (c->busy == 0)
                conn_release(c);
            return;
        }
        left = weft_buf_used(&c->out);
        c->read_paused = left > hw;
    }
    if (left == 0 && c->state == C_HEAD && !c->keep_alive && !c->req) {
        start_linger(c);
        return;
    }
    conn_update_interest(c);
}

/* Reply to a request that failed before reaching a handler and end the
 * connection after it. */
static void reject(conn *c, int status, const char *why)
{
    weft_http_server *s = c->w->srv;
    weft_metric_inc(s->m, s->m_bad_requests);
    weft_log(WEFT_LOG_DEBUG, "bad request", WEFT_KV_INT("status", status),
             WEFT_KV_STR("reason", why ? why : ""));
    c->keep_alive = false;
    weft_http_req *r = c->req;
    if (!r) {
        r = req_get(c->w);
        if (!r) {
            conn_close(c);
            return;
        }
        memset(&r->head, 0, sizeof r->head);
        r->head.version_minor = 1;
        r->start_us = weft_now_us();
        r->c = c;
        c->req = r;
    }
    r->body_done = true;
    weft_buf_clear(&c->in);
    if (r->resp_started) {
        /* a streaming response is already underway: all we can do is close */
        conn_close(c);
        return;
    }
    weft_http_respond_error(r, status, why ? why : weft_http_reason(status));
}

static void finish_request(conn *c)
{
    weft_http_req *r = c->req;
    c->req = NULL;
    r->c = NULL;
    req_put(c->w, r);
    c->state = C_HEAD;
    weft_http_parser_init(&c->parser);
    if (c->keep_alive)
        set_deadline(c, weft_buf_used(&c->in) ? c->w->srv->o.header_timeout_ms
                                              : (c->w->draining ? DRAIN_IDLE_GRACE_MS
                                                                : c->w->srv->o.idle_timeout_ms));
}

static const route *match_route(weft_http_server *s, const weft_http_head *h, bool *method_miss)
{
    *method_miss = false;
    for (size_t i = 0; i < s->nroutes; i++) {
        const route *r = &s->routes[i];
        bool hit = (r->flags & WEFT_ROUTE_PREFIX)
                       ? (h->path.n >= r->plen && memcmp(h->path.p, r->path, r->plen) == 0)
                       : (h->path.n == r->plen && memcmp(h->path.p, r->path, r->plen) == 0);
        if (!hit)
            continue;
        if (r->mask == 0 || (r->mask & WEFT_M(h->method)) ||
            (h->method == WEFT_METHOD_HEAD && (r->mask & WEFT_M(WEFT_METHOD_GET))))
            return r;
        *method_miss = true;
    }
    if (s->has_fallback)
        return &s->fallback;
    return NULL;
}

static void respond_405(conn *c, weft_http_req *r)
{
    weft_http_server *s = c->w->srv;
    char allow[128] = "";
    size_t n = 0;
    unsigned mask = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        const route *rt = &s->routes[i];
        bool hit = (rt->flags & WEFT_ROUTE_PREFIX)
                       ? (r->head.path.n >= rt->plen &&
                          memcmp(r->head.path.p, rt->path, rt->plen) == 0)
                       : (r->head.path.n == rt->plen &&
                          memcmp(r->head.path.p, rt->path, rt->plen) == 0);
        if (hit)
            mask |= rt->mask;
    }
    if (mask & WEFT_M(WEFT_METHOD_GET))
        mask |= WEFT_M(WEFT_METHOD_HEAD);
    for (int m = WEFT_METHOD_GET; m <= WEFT_METHOD_PATCH; m++) {
        if (!(mask & WEFT_M(m)))
            continue;
        const char *name = weft_http_method_name(m);
        int k = snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", name);
        if (k > 0 && (size_t)k < sizeof allow - n)
            n += (size_t)k;
    }
    weft_http_resp_header(r, WEFT_STR("Allow"), (weft_str){allow, n});
    weft_http_respond_error(r, 405, "method not allowed");
}

static void call_handler(conn *c, weft_http_req *r)
{
    weft_str id = WEFT_STR_NULL;
    if (weft_log_level_ <= WEFT_LOG_DEBUG) {
        id = weft_http_req_id(r);
        weft_log_set_request_id(id.p, id.n);
    }
    r->rt->h(r, r->rt->ud);
    if (id.p)
        weft_log_set_request_id(NULL, 0);
    (void)c;
}

/*
 * The request body broke (malformed chunk, body timeout). A stream route's
 * handler is already running and may hold the request past this call (a
 * proxy streaming the body upstream): its on_end gets err, as documented,
 * so it lets go before the request is finished and recycled under it. Then
 * answer `status` unless the handler already answered; the rest of the body
 * is unread, so the connection ends after the answer.
 */
static void body_failed(conn *c, weft_http_req *r, int err, int status, const char *why)
{
    weft_buf_clear(&c->in);
    if (r->stream)
        stream_end(r, err);
    r->body_done = true;
    c->keep_alive = false;
    if (c->dead || c->req != r)
        return;
    if (!r->resp_started)
        reject(c, status, why);
    else if (!r->resp_done)
        conn_close(c); /* a response underway cannot be completed honestly */
}

/* Feed body bytes from c->in to the request. Returns false if processing
 * must stop (error or the connection died). */
static bool pump_body(conn *c)
{
    weft_http_req *r = c->req;
    weft_http_server *s = c->w->srv;
    while (!r->body_done && weft_buf_used(&c->in) && !c->dead && !r->body_paused) {
        weft_str data = WEFT_STR_NULL;
        size_t used;
        if (r->body_kind == WEFT_BODY_LENGTH) {
            size_t avail = weft_buf_used(&c->in);
            used = avail < r->body_left ? avail : (size_t)r->body_left;
            data = (weft_str){weft_buf_rptr(&c->in), used};
            r->body_left -= used;
            if (r->body_left == 0)
                r->body_done = true;
        } else {
            int rc = weft_chunked_decode(&r->chunked, weft_buf_rptr(&c->in),
                                         weft_buf_used(&c->in), &used, &data);
            if (rc == WEFT_EPROTO) {
                body_failed(c, r, WEFT_EPROTO, 400,
                            r->chunked.error ? r->chunked.error : "bad chunked body");
                return false;
            }
            if (r->chunked.done)
                r->body_done = true;
        }
        if (data.n && r->resp_done) {
            /* answered already (404, 405, early reply): drop the body */
        } else if (data.n) {
            if (r->stream) {
                if (r->on_data && !r->resp_done)
                    r->on_data(r, data, r->body_ud);
            } else if (weft_buf_append(&r->body, data.p, data.n) < 0) {
                weft_buf_consume(&c->in, used);
                r->body_done = true;
                reject(c, 413, "request body too large");
                return false;
            }
        }
        weft_buf_consume(&c->in, used);
        if (c->dead || c->req != r)
            return false;
        /* streaming handlers may have filled the output: stop reading */
        if (weft_buf_used(&c->out) > s->o.out_high_water)
            break;
    }
    if (r->body_done) {
        if (r->stream) {
            stream_end(r, 0);
        } else if (c->state == C_BODY) {
            c->state = C_WAIT;
            call_handler(c, r);
        }
        if (!c->dead && c->req == r && c->state == C_BODY)
            c->state = C_WAIT;
    } else if (!c->dead) {
        set_deadline(c, s->o.body_timeout_ms);
    }
    return !c->dead;
}

static void start_request(conn *c, weft_http_req *r, size_t head_len)
{
    weft_http_server *s = c->w->srv;
    /* copy the head out of the input buffer so the buffer may move */
    const char *old = weft_buf_rptr(&c->in);
    char *copy = weft_arena_alloc(&r->arena, head_len);
    if (!copy) {
        reject(c, 431, "request head too large");
        return;
    }
    memcpy(copy, old, head_len);
    weft_http_head *h = &r->head;
    rebase(&h->method_str, old, copy);
    rebase(&h->target, old, copy);
    rebase(&h->path, old, copy);
    rebase(&h->query, old, copy);
    rebase(&h->authority, old, copy);
    rebase(&h->reason, old, copy);
    rebase(&h->host, old, copy);
    for (uint32_t i = 0; i < h->nheaders; i++) {
        rebase(&h->headers[i].name, old, copy);
        rebase(&h->headers[i].value, old, copy);
    }
    weft_buf_consume(&c->in, head_len);
    c->keep_alive = h->keep_alive && !c->w->draining;
    r->body_kind = h->body_kind;
    r->body_left = h->body_kind == WEFT_BODY_LENGTH ? h->content_length : 0;
    r->body_done = h->body_kind == WEFT_BODY_NONE ||
                   (h->body_kind == WEFT_BODY_LENGTH && h->content_length == 0);
    if (h->body_kind == WEFT_BODY_CHUNKED)
        weft_chunked_init(&r->chunked);

    bool method_miss;
    const route *rt = match_route(s, h, &method_miss);
    if (!rt) {
        c->state = C_WAIT;
        /* Answered without a 100 Continue: an Expect: 100-continue client
         * may now skip the body it announced (curl does), and reading its
         * next request as that body would desync the connection. Close
         * after the answer instead. */
        if (h->expect_continue && !r->body_done)
            c->keep_alive = false;
        if (method_miss)
            respond_405(c, r);
        else
            weft_http_respond_error(r, 404, "not found");
        return;
    }
    r->rt = rt;
    r->stream = (rt->flags & WEFT_ROUTE_STREAM) != 0;
    if (!r->stream && !r->body_done) {
        if (h->body_kind == WEFT_BODY_LENGTH && h->content_length > s->o.max_body) {
            reject(c, 413, "request body too large");
            return;
        }
        r->body.max = s->o.max_body;
    }
    if (h->expect_continue && !r->body_done && h->version_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        weft_buf_append(&c->out, cont, sizeof cont - 1);
    }
    if (r->body_done || r->stream) {
        c->state = r->body_done ? C_WAIT : C_BODY;
        call_handler(c, r);
        if (c->dead || c->req != r)
            return;
        if (r->stream && r->body_done && r->on_end) {
            /* empty body: the stream ends before it starts */
            stream_end(r, 0);
            if (c->dead || c->req != r)
                return;
        }
    } else {
        c->state = C_BODY;
    }
    if (!r->body_done) {
        set_deadline(c, s->o.body_timeout_ms);
        pump_body(c);
    }
}

/* The client half-closed and every request it sent has been handled: end
 * the connection once the queued output is out (conn_flush then closes). */
static void end_after_eof(conn *c)
{
    c->keep_alive = false;
    if (!weft_buf_used(&c->out))
        conn_close(c);
}

static void conn_process(conn *c)
{
    weft_http_server *s = c->w->srv;
    while (!c->dead) {
        if (c->state == C_LINGER)
            return;
        if (c->req) {
            weft_http_req *r = c->req;
            if (!r->body_done && c->state != C_LINGER) {
                if (!pump_body(c))
                    return;
                if (c->req != r)
                    continue;
            }
            if (r->resp_done && (r->body_done || !c->keep_alive)) {
                finish_request(c);
                if (!c->keep_alive)
                    return;
                continue;
            }
            return; /* waiting for the handler or for more body bytes */
        }
        if (!c->keep_alive)
            return; /* no further request on this connection */
        if (weft_buf_used(&c->in) == 0) {
            if (c->peer_eof)
                end_after_eof(c);
            return;
        }
        if (weft_buf_used(&c->out) > s->o.out_high_water)
            return; /* pipelined requests wait until the client reads */
        weft_http_req *r = req_get(c->w);
        if (!r) {
            conn_close(c);
            return;
        }
        int rc = weft_http_parse_request(&c->parser, &s->lim, weft_buf_rptr(&c->in),
                                         weft_buf_used(&c->in), &r->head);
        if (rc == WEFT_EAGAIN) {
            req_put(c->w, r);
            if (c->peer_eof) {
                end_after_eof(c); /* a head cut off by end-of-file never completes */
                return;
            }
            if (c->parser.scanned > 0 && c->deadline_ms > weft_loop_now_ms(c->w->loop) +
                                                               s->o.header_timeout_ms)
                set_deadline(c, s->o.header_timeout_ms);
            return;
        }
        r->c = c;
        r->start_us = weft_loop_now_us(c->w->loop);
        c->req = r;
        if (rc < 0) {
            /* the head is unusable; answer with what the parser decided */
            memset(&r->head, 0, sizeof r->head);
            r->head.version_minor = 1;
            reject(c, c->parser.status ? c->parser.status : 400, c->parser.error);
            continue;
        }
        start_request(c, r, (size_t)rc);
    }
}

static void conn_read(conn *c)
{
    weft_http_server *s = c->w->srv;
    if (c->state == C_LINGER) {
        char junk[4096];
        ssize_t n = read(c->io.fd, junk, sizeof junk);
        if (n > 0) {
            c->lingered += (uint32_t)n;
            if (c->lingered < LINGER_MAX_BYTES)
                return;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        conn_close(c);
        return;
    }
    size_t cap = s->lim.max_header_bytes + BODY_READ_MAX;
    if (c->in.max == 0)
        c->in.max = cap;
    if (weft_buf_reserve(&c->in, READ_CHUNK) < 0) {
        /* input is full and nobody is consuming it: hold off reading */
        c->read_paused = true;
        conn_update_interest(c);
        return;
    }
    ssize_t n = read(c->io.fd, weft_buf_wptr(&c->in), weft_buf_avail(&c->in));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        conn_close(c);
        return;
    }
    if (n == 0) {
        weft_http_req *r = c->req;
        c->peer_eof = true;
        /* Client half-closed ("send, shutdown(WR), read"). What it sent
         * before is still answered: the request in progress if its body is
         * complete, pipelined requests waiting in the input buffer, and
         * responses still queued for it (the client is simply not reading
         * yet). A body cut short, a long-lived response (close_on_eof), or
         * nothing owed at all ends the connection now. */
        if ((r && (!r->body_done || (r->close_on_eof && !r->resp_done))) ||
            (!r && !weft_buf_used(&c->in) && !weft_buf_used(&c->out))) {
            conn_close(c);
            return;
        }
        /* Nothing left to parse: this is the last response. Otherwise
         * conn_process ends keep-alive once the buffered requests run out. */
        if (!weft_buf_used(&c->in))
            c->keep_alive = false;
        conn_update_interest(c);
        return;
    }
    weft_buf_commit(&c->in, (size_t)n);
    if (c->state == C_HEAD && !c->req && c->parser.scanned == 0)
        set_deadline(c, s->o.header_timeout_ms);
    conn_process(c);
}

static void conn_on_io(weft_loop *loop, weft_io *io, unsigned events)
{
    conn *c = io->data;
    (void)loop;
    c->busy++;
    if (events & WEFT_IO_WRITE)
        conn_flush(c);
    if (!c->dead && (events & WEFT_IO_READ) && !c->read_paused &&
        !(c->req && c->req->body_paused))
        conn_read(c);
    /* Flush, then resume work that backpressure held back: body bytes or
     * pipelined requests already in the input buffer produce no new read
     * event, and if the flush drained everything no write event will come
     * either. Repeat while that makes progress. */
    for (int i = 0; i < 64 && !c->dead; i++) {
        conn_flush(c);
        /* a response completed inside a callback of this connection (e.g.
         * its on_drain) still has to be finished even with no input */
        bool finished = c->req && c->req->resp_done;
        if (c->dead || c->read_paused || c->state == C_LINGER ||
            (!weft_buf_used(&c->in) && !finished))
            break;
        size_t in_before = weft_buf_used(&c->in);
        weft_http_req *req_before = c->req;
        size_t out_before = weft_buf_used(&c->out);
        conn_process(c);
        if (weft_buf_used(&c->in) == in_before && c->req == req_before &&
            weft_buf_used(&c->out) == out_before)
            break;
    }
    c->busy--;
    if (c->dead && c->busy == 0)
        conn_release(c);
}

static void conn_on_timer(weft_loop *loop, weft_timer *t)
{
    conn *c = t->data;
    uint64_t now = weft_loop_now_ms(loop);
    if (c->deadline_ms > now) {
        weft_timer_start(loop, t, c->deadline_ms - now);
        return;
    }
    c->busy++;
    if (c->req && c->req->body_paused && !c->req->body_done) {
        /* our own backpressure, not a slow client */
        set_deadline(c, c->w->srv->o.body_timeout_ms);
    } else if (c->state == C_LINGER) {
        conn_close(c);
    } else if (c->state == C_HEAD && !c->req && weft_buf_used(&c->in) == 0 &&
               c->parser.scanned == 0) {
        conn_close(c); /* idle keep-alive connection */
    } else if (c->state == C_HEAD || (c->state == C_BODY && c->req && !c->req->resp_started)) {
        if (c->state == C_HEAD)
            reject(c, 408, "request header timeout");
        else
            body_failed(c, c->req, WEFT_ETIMEDOUT, 408, "request body timeout");
        conn_process(c);
        conn_flush(c);
    } else if (weft_buf_used(&c->out) || (c->req && !c->req->body_done)) {
        conn_close(c); /* a stalled reader or writer mid-response */
    } else {
        set_deadline(c, c->w->srv->o.idle_timeout_ms); /* waiting for the handler */
    }
    c->busy--;
    if (c->dead && c->busy == 0)
        conn_release(c);
}

static void run_pending(weft_loop *loop, weft_timer *t)
{
    wstate *w = t->data;
    (void)loop;
    /* pop one at a time: work done for one connection may release or
     * queue others, and conn_release unlinks from this list */
    conn *c;
    while ((c = w->pending) != NULL) {
        w->pending = c->next_pending;
        c->queued = false;
        c->next_pending = NULL;
        after_async(c);
    }
}

/* ------------------------------------------------------------------ */
/* accept, workers, drain                                               */

static void accept_one(wstate *w, int fd, struct sockaddr_storage *sa, socklen_t salen)
{
    weft_http_server *s = w->srv;
    if (w->nconns >= s->o.max_connections) {
        close(fd);
        return;
    }
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->w = w;
    c->peer = *sa;
    c->keep_alive = true;
    c->state = C_HEAD;
    weft_buf_init(&c->in, s->lim.max_header_bytes + BODY_READ_MAX);
    weft_buf_init(&c->out, SIZE_MAX / 2);
    weft_http_parser_init(&c->parser);
    weft_io_init(&c->io, fd, conn_on_io, c);
    weft_timer_init(&c->timer, conn_on_timer, c);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    weft_metric_gauge_add(s->m, s->m_conns, 1);
    weft_metric_inc(s->m, s->m_conns_total);
    set_deadline(c, w->draining ? DRAIN_IDLE_GRACE_MS : s->o.header_timeout_ms);
    if (weft_io_start(w->loop, &c->io, WEFT_IO_READ) < 0)
        conn_release(c);
}

/* Accept up to max queued connections; true once the queue is empty. */
static bool accept_batch(wstate *w, int lfd, int max)
{
    for (int i = 0; i < max; i++) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int fd = accept4(lfd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                weft_log(WEFT_LOG_WARN, "accept failed", WEFT_KV_STR("error", strerror(errno)));
            return true;
        }
        accept_one(w, fd, &sa, salen);
    }
    return false;
}

static void on_accept(weft_loop *loop, weft_io *io, unsigned events)
{
    (void)loop;
    (void)events;
    accept_batch(io->data, io->fd, 64); /* a bounded round: other events wait */
}

int weft_http_server_start_worker(weft_http_server *s, weft_loop *loop)
{
    int idx = weft_loop_index(loop);
    if (idx < 0 || idx >= s->workers)
        return WEFT_EINVAL;
    wstate *w = calloc(1, sizeof *w);
    if (!w)
        return WEFT_ENOMEM;
    w->srv = s;
    w->loop = loop;
    w->lio = calloc(s->naddrs ? s->naddrs : 1, sizeof *w->lio);
    if (!w->lio) {
        free(w);
        return WEFT_ENOMEM;
    }
    if (getrandom(&w->rng, sizeof w->rng, 0) != sizeof w->rng || w->rng == 0)
        w->rng = weft_now_us() ^ ((uint64_t)(uintptr_t)w << 16) ^ 0x9e3779b97f4a7c15ULL;
    weft_timer_init(&w->pending_timer, run_pending, w);
    weft_timer_init(&w->listen_timer, listen_closed, w);
    w->listening = true;
    s->ws[idx] = w;
    for (size_t i = 0; i < s->naddrs; i++) {
        weft_io_init(&w->lio[i], s->addrs[i].fds[idx], on_accept, w);
        int rc = weft_io_start(loop, &w->lio[i], WEFT_IO_READ);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Closing a listening socket resets every connection in its accept queue:
 * the client's handshake completed, it sent its request, and then it reads
 * ECONNRESET. Taking the queue just before close(2) leaves a window (a
 * preempted worker makes it milliseconds) in which a client reconnecting
 * after its Connection: close answer lands in the queue and is reset. So a
 * draining listener first gets a socket filter that drops bare SYNs (SYN
 * set, ACK clear; the kernel runs a TCP socket's filter with the packet
 * starting at the TCP header, whose byte 13 holds the flags): no new
 * handshake can start, the ones under way complete and are accepted as
 * usual, and a client whose SYN was dropped retries it a second later and
 * is refused by then. Established connections created before the filter
 * never see it; those created after inherit it and never get a bare SYN. */
static int refuse_new_handshakes(int fd)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof code / sizeof code[0]), .filter = code};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}

/* The drain's listener grace is over: take what is queued, close. */
static void listen_closed(weft_loop *loop, weft_timer *t)
{
    wstate *w = t->data;
    weft_http_server *s = w->srv;
    int idx = weft_loop_index(loop);
    for (size_t i = 0; i < s->naddrs; i++) {
        if (s->addrs[i].fds[idx] < 0)
            continue;
        /* the whole queue: at most the backlog */
        for (int round = 0; round <= LISTEN_BACKLOG / 64; round++)
            if (accept_batch(w, s->addrs[i].fds[idx], 64))
                break;
        weft_io_stop(loop, &w->lio[i]);
        close(s->addrs[i].fds[idx]);
        s->addrs[i].fds[idx] = -1;
    }
    w->listening = false;
    if (w->nconns == 0)
        weft_loop_stop(loop);
}

void weft_http_server_drain(weft_http_server *s, weft_loop *loop)
{
    int idx = weft_loop_index(loop);
    wstate *w = s->ws[idx];
    if (!w || w->draining)
        return;
    w->draining = true;
    /* Stop new handshakes first, keep accepting the ones already under way
     * for a short grace, then close (listen_closed). If the filter cannot
     * be set, take what is queued and close at once. */
    bool filtered = true;
    for (size_t i = 0; i < s->naddrs; i++)
        if (refuse_new_handshakes(s->addrs[i].fds[idx]) < 0)
            filtered = false;
    if (filtered)
        weft_timer_start(loop, &w->listen_timer, DRAIN_LISTEN_GRACE_MS);
    else
        listen_closed(loop, &w->listen_timer);
    for (conn *c = w->conns; c; c = c->next) {
        if (c->state == C_HEAD && !c->req && weft_buf_used(&c->in) == 0 && c->parser.scanned == 0)
            set_deadline(c, DRAIN_IDLE_GRACE_MS);
        /* active ones get Connection: close on their response (write_head) */
    }
}

void weft_http_server_stop_worker(weft_http_server *s, weft_loop *loop)
{
    int idx = weft_loop_index(loop);
    wstate *w = s->ws[idx];
    if (!w)
        return;
    weft_timer_stop(loop, &w->pending_timer);
    weft_timer_stop(loop, &w->listen_timer);
    while (w->conns) {
        conn *c = w->conns;
        c->busy = 0;
        c->dead = true;
        conn_release(c);
    }
    for (size_t i = 0; i < s->naddrs; i++) {
        if (s->addrs[i].fds && s->addrs[i].fds[idx] >= 0) {
            weft_io_stop(loop, &w->lio[i]);
            close(s->addrs[i].fds[idx]);
            s->addrs[i].fds[idx] = -1;
        }
    }
    while (w->free_reqs) {
        weft_http_req *r = w->free_reqs;
        w->free_reqs = r->next_free;
        weft_arena_release(&r->arena);
        weft_buf_release(&r->body);
        free(r);
    }
    free(w->lio);
    free(w);
    s->ws[idx] = NULL;
}
