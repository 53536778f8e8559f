/*
 * proxy.c — the gateway's request path: route, pick, forward, retry,
 * stream back.
 *
 * Everything a request touches is worker-local: the generation (config
 * snapshot + balancers, breakers, outlier counters, retry budgets), the
 * connection pool (one weft_http_client per worker) and the metrics slots.
 * A reload builds each worker a new generation on that worker's thread,
 * carrying over from the one it replaces only the endpoints' health
 * verdicts and outlier ejections (see gen_new).
 *
 * One downstream request may make several upstream attempts. Each attempt
 * passes, in order: the cluster's circuit breaker (a short-circuit costs no
 * upstream work: 503 + X-Weft-Circuit: open, or the route's fallback), the
 * concurrency limits (static max_requests, optional adaptive limit), and the
 * balancer, which skips endpoints this request already tried. Retries need
 * (1) a matching condition, (2) an idempotent method unless configured,
 * (3) attempts left, (4) a token from the route's retry budget, and (5) a
 * full-jitter backoff plus the endpoint's expected latency that still ends
 * before the request's deadline — so an outage cannot multiply load and no
 * retry is started that could not finish.
 *
 * The request head sent upstream is serialised once per downstream request
 * (hop-by-hop headers dropped, configured header edits applied,
 * X-Forwarded-*, Via and X-Request-Id added); each attempt adds only its
 * own deadline header. The response streams back with backpressure: when
 * the client's socket falls behind, the upstream read is paused.
 */
#include "gwrt.h"

#include "cache.h"
#include "http/codec.h"
#include "weft/log.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


static const weft_str HOP_BY_HOP[] = {
    {"Connection", 10},        {"Keep-Alive", 10}, {"Proxy-Connection", 16},
    {"TE", 2},                 {"Trailer", 7},     {"Transfer-Encoding", 17},
    {"Upgrade", 7},            {"Content-Length", 14}, {"Expect", 6},
    {"Proxy-Authorization", 19},
};

static bool is_hop_by_hop(weft_str name)
{
    /* lengths of the names above: skip the compares for everything else */
    switch (name.n) {
    case 2: case 6: case 7: case 10: case 14: case 16: case 17: case 19: break;
    default: return false;
    }
    for (size_t i = 0; i < sizeof HOP_BY_HOP / sizeof HOP_BY_HOP[0]; i++)
        if (HOP_BY_HOP[i].n == name.n && weft_str_ieq(name, HOP_BY_HOP[i]))
            return true;
    return false;
}

/* Is `name` listed in the Connection header's tokens? */
static bool named_in_connection(weft_str conn, weft_str name)
{
    size_t i = 0;
    while (i < conn.n) {
        while (i < conn.n && (conn.p[i] == ' ' || conn.p[i] == ','))
            i++;
        size_t s = i;
        while (i < conn.n && conn.p[i] != ',' && conn.p[i] != ' ')
            i++;
        if (i > s && weft_str_ieq((weft_str){conn.p + s, i - s}, name))
            return true;
    }
    return false;
}

static bool in_list(char **names, size_t n, weft_str name)
{
    for (size_t i = 0; i < n; i++)
        if (weft_str_ieq(name, weft_str_from(names[i])))
            return true;
    return false;
}

static bool in_ops(const gw_header_op *ops, size_t n, weft_str name)
{
    for (size_t i = 0; i < n; i++)
        if (weft_str_ieq(name, weft_str_from(ops[i].name)))
            return true;
    return false;
}

static bool in_ops_value(const gw_header_op *ops, size_t n, weft_str name)
{
    for (size_t i = 0; i < n; i++)
        if (weft_str_ieq(name, weft_str_from(ops[i].value)))
            return true;
    return false;
}

static bool idempotent(int m)
{
    return m == WEFT_METHOD_GET || m == WEFT_METHOD_HEAD || m == WEFT_METHOD_OPTIONS ||
           m == WEFT_METHOD_PUT || m == WEFT_METHOD_DELETE || m == WEFT_METHOD_TRACE;
}

static int append(weft_buf *b, weft_str a, weft_str sep, weft_str v)
{
    int rc = weft_buf_reserve(b, a.n + sep.n + v.n + 2);
    if (rc < 0)
        return rc;
    weft_buf_append(b, a.p, a.n);
    weft_buf_append(b, sep.p, sep.n);
    weft_buf_append(b, v.p, v.n);
    weft_buf_append(b, "\r\n", 2);
    return 0;
}

static const weft_str COLON = {": ", 2};

/* "<head><list>, <v>\r\n" as one reservation. The line must go in whole or
 * not at all, and the error must stay negative: a head cut off after
 * "<name>: " would be sent with the client's Content-Length glued onto that
 * line, and the upstream would read the body as a second request. */
static int append_list(weft_buf *b, weft_str head, weft_str list, weft_str v)
{
    int rc = weft_buf_reserve(b, head.n + list.n + 2 + v.n + 2);
    if (rc < 0)
        return rc;
    weft_buf_append(b, head.p, head.n);
    return append(b, list, WEFT_STR(", "), v);
}

/* Peer IP without the port. */
static weft_str peer_ip(weft_http_req *r)
{
    const char *p = weft_http_req_peer(r);
    size_t n = strlen(p);
    if (p[0] == '[') {
        const char *e = strchr(p, ']');
        return e ? (weft_str){p + 1, (size_t)(e - p - 1)} : weft_str_from(p);
    }
    const char *c = strrchr(p, ':');
    return (weft_str){p, c ? (size_t)(c - p) : n};
}

/* Append value to a comma-separated list held in buf (bounded). */
static void list_add(char *buf, size_t cap, weft_str *list, weft_str value)
{
    size_t need = (list->n ? 2 : 0) + value.n;
    if (list->n + need > cap)
        return; /* absurdly long: keep what fits */
    char *p = buf + list->n;
    if (list->n) {
        *p++ = ',';
        *p++ = ' ';
    }
    memcpy(p, value.p, value.n);
    list->n += need;
}

/* Serialise the forwarded header block into the worker's scratch buffer
 * (rebuilt for each attempt: the client copies it at submit, so nothing is
 * allocated per request). */
static int build_upstream_head(gw_req *g, weft_buf *b)
{
    weft_http_req *r = g->r;
    const gw_route_conf *rt = g->route;
    const gw_config *cfg = g->gen->cfg;
    weft_buf_clear(b);
    weft_str conn = weft_http_req_header(r, WEFT_STR("Connection"));
    /* repeated X-Forwarded-For / Via lines form one list (RFC 9110 5.3) */
    char xffbuf[2048], viabuf[1024];
    weft_str xff = {xffbuf, 0}, via = {viabuf, 0};
    weft_str dl = cfg->deadline_header[0] ? weft_str_from(cfg->deadline_header) : WEFT_STR_NULL;
    int rc = 0;
    bool saw_host = false;
    size_t n = weft_http_req_header_count(r);
    for (size_t i = 0; i < n && rc == 0; i++) {
        weft_str name, value;
        weft_http_req_header_at(r, i, &name, &value);
        if (is_hop_by_hop(name) || (conn.n && named_in_connection(conn, name)))
            continue;
        if (weft_str_ieq(name, WEFT_STR("X-Forwarded-For")) && cfg->xff) {
            list_add(xffbuf, sizeof xffbuf, &xff, value);
            continue;
        }
        if (weft_str_ieq(name, WEFT_STR("Via")) && cfg->via) {
            list_add(viabuf, sizeof viabuf, &via, value);
            continue;
        }
        if (weft_str_ieq(name, WEFT_STR("X-Request-Id")) ||
            (dl.n && weft_str_ieq(name, dl)) ||
            (cfg->xff && (weft_str_ieq(name, WEFT_STR("X-Forwarded-Proto")) ||
                          weft_str_ieq(name, WEFT_STR("X-Forwarded-Host")))))
            continue;
        if (in_list(rt->req_ops.remove, rt->req_ops.nremove, name) ||
            in_ops(rt->req_ops.set, rt->req_ops.nset, name))
            continue;
        /* identity headers the gateway sets from verified credentials are
         * never taken from the client */
        if (rt->auth && (weft_str_ieq(name, WEFT_STR("X-Weft-Consumer")) ||
                         in_ops_value(rt->auth->forward, rt->auth->nforward, name)))
            continue;
        if (name.n == 4 && weft_str_ieq(name, WEFT_STR("Host"))) {
            /* the host routed by: an absolute-form target's authority
             * replaces the Host header (RFC 9112 3.2.2) */
            value = weft_http_req_host(r);
            saw_host = true;
        }
        rc = append(b, name, COLON, value);
    }
    if (rc == 0 && !saw_host && weft_http_req_host(r).n) /* HTTP/1.0, absolute-form */
        rc = append(b, WEFT_STR("Host"), COLON, weft_http_req_host(r));
    if (rc == 0 && g->auth_hdrs.n)
        rc = weft_buf_append(b, g->auth_hdrs.p, g->auth_hdrs.n);
    for (size_t i = 0; i < rt->req_ops.nset && rc == 0; i++)
        rc = append(b, weft_str_from(rt->req_ops.set[i].name), COLON,
                    weft_str_from(rt->req_ops.set[i].value));
    for (size_t i = 0; i < rt->req_ops.nadd && rc == 0; i++)
        rc = append(b, weft_str_from(rt->req_ops.add[i].name), COLON,
                    weft_str_from(rt->req_ops.add[i].value));
    if (cfg->xff && rc == 0) {
        weft_str ip = peer_ip(r);
        if (xff.n) /* "X-Forwarded-For: <existing>, <client>" */
            rc = append_list(b, WEFT_STR("X-Forwarded-For: "), xff, ip);
        else
            rc = append(b, WEFT_STR("X-Forwarded-For"), COLON, ip);
        weft_str host = weft_http_req_host(r);
        if (rc == 0)
            rc = append(b, WEFT_STR("X-Forwarded-Proto"), COLON, WEFT_STR("http"));
        if (rc == 0 && host.n)
            rc = append(b, WEFT_STR("X-Forwarded-Host"), COLON, host);
    }
    if (cfg->via && rc == 0) {
        if (via.n) /* "Via: <existing>, 1.1 weft" */
            rc = append_list(b, WEFT_STR("Via: "), via, WEFT_STR("1.1 weft"));
        else
            rc = append(b, WEFT_STR("Via"), COLON, WEFT_STR("1.1 weft"));
    }
    if (rc == 0)
        rc = append(b, WEFT_STR("X-Request-Id"), COLON, weft_http_req_id(r));
    return rc;
}

/* Rewritten request target (path prefix strip/rewrite, query kept). */
static char *build_target(gw_req *g)
{
    weft_str path = weft_http_req_path(g->r);
    weft_str query = weft_http_req_query(g->r);
    const gw_route_conf *rt = g->route;
    if (rt->strip_prefix) {
        size_t sl = strlen(rt->strip_prefix);
        if (path.n >= sl && memcmp(path.p, rt->strip_prefix, sl) == 0) {
            path.p += sl;
            path.n -= sl;
        }
    }
    const char *pre = rt->prefix_rewrite ? rt->prefix_rewrite : "";
    size_t pl = strlen(pre);
    bool need_slash = (pl == 0 || pre[pl - 1] != '/') && (path.n == 0 || path.p[0] != '/');
    if (pl && pre[pl - 1] == '/' && path.n && path.p[0] == '/') {
        path.p++;
        path.n--;
    }
    size_t len = pl + need_slash + path.n + (query.n ? query.n + 1 : 0);
    char *t = weft_http_req_alloc(g->r, len + 1);
    if (!t)
        return NULL;
    char *p = t;
    memcpy(p, pre, pl);
    p += pl;
    if (need_slash)
        *p++ = '/';
    memcpy(p, path.p, path.n);
    p += path.n;
    if (query.n) {
        *p++ = '?';
        memcpy(p, query.p, query.n);
        p += query.n;
    }
    *p = '\0';
    if (t[0] != '/') {
        /* prefix_rewrite without a leading slash: keep the target valid */
        char *t2 = weft_http_req_alloc(g->r, len + 2);
        if (!t2)
            return NULL;
        t2[0] = '/';
        memcpy(t2 + 1, t, len + 1);
        t = t2;
    }
    return t;
}

static uint64_t hash_key(gw_req *g)
{
    const gw_cluster_conf *cc = g->cl->conf;
    weft_str v = WEFT_STR_NULL;
    switch (cc->hash_on) {
    case GW_HASH_SOURCE_IP:
        v = peer_ip(g->r);
        break;
    case GW_HASH_HEADER:
        v = weft_http_req_header(g->r, weft_str_from(cc->hash_name));
        break;
    case GW_HASH_COOKIE: {
        weft_str ck = weft_http_req_header(g->r, WEFT_STR("Cookie"));
        if (!gw_cookie_get(ck, cc->hash_name, &v))
            v = WEFT_STR_NULL;
        break;
    }
    default:
        break;
    }
    if (!v.p)
        return weft_rng_next(&g->w->rng);
    return weft_hash64(v.p, v.n, 0x5765667448617368ULL);
}

static int choose_cluster(gw_req *g)
{
    const gw_route_conf *rt = g->route;
    for (size_t i = 0; i < rt->nsplits; i++) {
        const gw_split *s = &rt->splits[i];
        if (s->when_header) {
            weft_str v = weft_http_req_header(g->r, weft_str_from(s->when_header->name));
            if (gw_kv_matches(s->when_header, v))
                return s->cluster;
        } else if (s->when_cookie) {
            weft_str ck = weft_http_req_header(g->r, WEFT_STR("Cookie")), v;
            if (gw_cookie_get(ck, s->when_cookie, &v) &&
                (!s->when_cookie_value ||
                 weft_str_eq(v, weft_str_from(s->when_cookie_value))))
                return s->cluster;
        }
    }
    if (rt->nsplits == 1)
        return rt->splits[0].cluster;
    uint64_t x = weft_rng_below(&g->w->rng, rt->split_total);
    for (size_t i = 0; i < rt->nsplits; i++) {
        const gw_split *s = &rt->splits[i];
        if (s->when_header || s->when_cookie)
            continue;
        if (x < s->weight)
            return s->cluster;
        x -= s->weight;
    }
    return rt->splits[0].cluster;
}

/* ---- lifecycle ---- */

static void gen_unref(gw_gen *gen);

void gw_req_free(gw_req *g)
{
    if (g->body_mode != GW_BODY_NONE) {
        /* the server discards whatever body is still to come */
        weft_http_req_on_body(g->r, NULL, NULL, NULL);
        weft_http_req_pause_body(g->r, false);
    }
    weft_buf_release(&g->body);
    gw_edge_cache_cancel(g);
    gw_edge_gzip_free(g);
    gw_edge_aggregate_cancel(g);
    weft_timer_stop(g->w->loop, &g->timer);
    g->w->inflight--;
    gen_unref(g->gen);
    free(g);
}

static int class_index(int status)
{
    int c = status / 100;
    return c >= 1 && c <= 5 ? c : 0;
}

#define ALOG_FLUSH_BYTES (32 * 1024)
#define ALOG_FLUSH_MS 1000

static void alog_flush(gw_worker *w)
{
    int fd = weft_log_fd();
    while (weft_buf_used(&w->alog)) {
        ssize_t n = write(fd, weft_buf_rptr(&w->alog), weft_buf_used(&w->alog));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            weft_buf_clear(&w->alog); /* log sink broken: drop, never block requests */
            break;
        }
        weft_buf_consume(&w->alog, (size_t)n);
    }
    w->alog_flushed_ms = weft_loop_now_ms(w->loop);
}

/* One JSON/logfmt line per request, in the same format as every other log
 * line, appended to a per-worker buffer: one write per 32 KiB or second
 * instead of one per request. */
static void access_log(gw_req *g, int status)
{
    if (!g->gen->cfg->access_log)
        return;
    gw_worker *w = g->w;
    uint64_t now = weft_loop_now_us(w->loop);
    const gw_cluster_rt *cl = g->cl;
    weft_str id = weft_http_req_id(g->r);
    if (weft_buf_reserve(&w->alog, 4096) < 0)
        alog_flush(w);
    if (weft_buf_reserve(&w->alog, 4096) < 0)
        return;
    const weft_kv fields[] = {WEFT_KV_SLICE("request_id", id),
                              WEFT_KV_STR("route", g->route->name),
             WEFT_KV_SLICE("method", weft_http_req_method_str(g->r)),
             WEFT_KV_SLICE("path", weft_http_req_path(g->r)),
             WEFT_KV_STR("client", weft_http_req_peer(g->r)),
             WEFT_KV_STR("cluster", cl ? cl->conf->name : ""),
             WEFT_KV_STR("upstream", g->upstream),
             WEFT_KV_INT("status", status), WEFT_KV_UINT("attempts", g->attempt),
             WEFT_KV_MS("duration_ms", now - g->start_us),
             WEFT_KV_MS("upstream_ms", g->upstream_us),
             WEFT_KV_STR("error", g->error ? g->error : ""), {.key = NULL}};
    size_t n = weft_log_format(weft_buf_wptr(&w->alog), weft_buf_avail(&w->alog), WEFT_LOG_INFO,
                               "access", fields);
    weft_buf_commit(&w->alog, n);
    if (weft_buf_used(&w->alog) >= ALOG_FLUSH_BYTES)
        alog_flush(w);
}

void gw_count_final(gw_req *g, int status)
{
    weft_metrics *m = g->w->rt->m;
    weft_metric_inc(m, g->rrt->m_req[class_index(status)]);
    weft_metric_observe(m, g->rrt->m_dur,
                        (double)(weft_loop_now_us(g->w->loop) - g->start_us) / 1e6);
    access_log(g, status);
}

/* Answer the client ourselves (errors, fallback, short-circuit) and free. */
void gw_respond_local(gw_req *g, int status, const char *reason, const char *extra_name,
                      const char *extra_value)
{
    weft_http_req *r = g->r;
    if (g->cache_fill)
        gw_edge_cache_done(g, false);
    const gw_route_conf *rt = g->route;
    gw_count_final(g, status);
    weft_http_req_on_abort(r, NULL, NULL);
    weft_http_resp_header(r, WEFT_STR("X-Request-Id"), weft_http_req_id(r));
    if (extra_name)
        weft_http_resp_header(r, weft_str_from(extra_name), weft_str_from(extra_value));
    bool fallback = rt->fallback && (status == 503 || status == 502 || status == 504);
    if (fallback) {
        weft_http_resp_header(r, WEFT_STR("X-Weft-Fallback"), WEFT_STR("true"));
        gw_req_free(g);
        weft_http_respond(r, rt->fallback_status, weft_str_from(rt->fallback_type),
                          rt->fallback_body, rt->fallback_body_len);
        return;
    }
    gw_req_free(g);
    weft_http_respond_error(r, status, reason);
}

/* Account the end of one upstream attempt. */
static void attempt_done(gw_req *g, int outcome, bool success, bool have_outcome)
{
    gw_cluster_rt *cl = g->cl;
    uint64_t now_us = weft_loop_now_us(g->w->loop);
    uint64_t now_ms = now_us / 1000;
    uint64_t lat = now_us - g->try_start_us;
    g->upstream_us += lat;
    if (g->breaker_taken) {
        if (have_outcome)
            weft_breaker_record(&cl->breaker, now_ms, success, lat);
        else
            weft_breaker_release(&cl->breaker);
        g->breaker_taken = false;
    }
    gw_epset *set = g->set;
    if (g->inflight_taken) {
        cl->inflight--;
        g->inflight_taken = false;
        if (g->ep >= 0 && set) {
            gw_epset_on_done(set, g->ep, lat, now_us);
            g->last_ewma_us = weft_lb_endpoints(set->lb)[g->ep].ewma_us;
        }
    }
    if (g->adaptive_taken) {
        weft_adaptive_release(&cl->adaptive, lat, !success);
        g->adaptive_taken = false;
    }
    if (have_outcome && cl->conf->outlier_enabled && g->ep >= 0 && set) {
        if (weft_outlier_record(&cl->conf->outlier, set->outlier, set->n, (size_t)g->ep,
                                outcome, now_ms)) {
            cl->ejections++;
            weft_metric_inc(g->w->rt->m, cl->m_ejections);
            weft_log(WEFT_LOG_WARN, "endpoint ejected", WEFT_KV_STR("cluster", cl->conf->name),
                     WEFT_KV_STR("endpoint", set->eps[g->ep].id),
                     WEFT_KV_UINT("times", set->outlier[g->ep].times_ejected),
                     WEFT_KV_UINT("until_ms", set->outlier[g->ep].ejected_until_ms - now_ms));
            if (set == cl->set)
                gw_cluster_refresh_health(cl, now_ms);
        }
    }
    if (set) {
        g->set = NULL;
        gw_epset_unref(set);
    }
}


static void retry_fire(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    gw_start_attempt(t->data);
}

/* May this failure be retried? On yes, schedules the retry and returns true. */
static bool maybe_retry(gw_req *g, unsigned cond)
{
    const gw_retry_conf *rc = &g->route->retry;
    if (!(rc->on & cond) || g->attempt >= rc->attempts || g->ntried >= 16 ||
        g->body_mode == GW_BODY_STREAM)
        return false; /* a streamed body cannot be sent again */
    if (!rc->all_methods && !idempotent(weft_http_req_method(g->r)))
        return false;
    /* Expected duration of the retry: the best latency estimate we have. */
    uint64_t backoff, expect_ms = (uint64_t)(g->last_ewma_us / 1000.0);
    enum weft_retry_verdict v = weft_retry_admit(
        &g->w->rng, rc->budget_enabled ? &g->rrt->budget : NULL, g->retries + 1,
        rc->backoff_base_ms, rc->backoff_max_ms, weft_now_us() / 1000, expect_ms, g->deadline_ms,
        &backoff);
    if (v == WEFT_RETRY_BUDGET)
        weft_metric_inc(g->w->rt->m, g->rrt->m_budget_exhausted);
    if (v != WEFT_RETRY_GO)
        return false;
    g->retries++;
    weft_metric_inc(g->w->rt->m, g->rrt->m_retries);
    weft_timer_start(g->w->loop, &g->timer, backoff);
    return true;
}

static int err_outcome(int err)
{
    return err == WEFT_EREFUSED || err == WEFT_ETIMEDOUT || err == WEFT_ERESET ||
                   err == WEFT_ENOTFOUND || err == WEFT_EADDR
               ? WEFT_OUTCOME_CONNECT_FAIL
               : WEFT_OUTCOME_GATEWAY;
}

static unsigned err_cond(int err)
{
    switch (err) {
    case WEFT_EREFUSED:
    case WEFT_ENOTFOUND:
    case WEFT_EADDR: return GW_RETRY_CONNECT | GW_RETRY_GATEWAY;
    case WEFT_ERESET:
    case WEFT_ECLOSED:
    case WEFT_EPROTO: return GW_RETRY_RESET;
    case WEFT_ETIMEDOUT: return GW_RETRY_TIMEOUT;
    default: return GW_RETRY_RESET;
    }
}

static bool status_retriable(const gw_retry_conf *rc, int status, unsigned *cond)
{
    *cond = 0;
    if (status >= 500)
        *cond |= GW_RETRY_5XX;
    if (status == 502 || status == 503 || status == 504)
        *cond |= GW_RETRY_GATEWAY;
    for (size_t i = 0; i < rc->nstatuses; i++)
        if (rc->statuses[i] == status)
            *cond |= GW_RETRY_STATUS;
    return *cond != 0;
}

static void on_drain(weft_http_req *r, void *ud)
{
    gw_req *g = ud;
    (void)r;
    if (g->paused && g->q) {
        g->paused = false;
        weft_http_creq_pause(g->q, false);
    }
}

/* The upstream's Connection header when it names other headers (which are
 * then hop-by-hop too), else empty. */
weft_str gw_resp_conn_tokens(const weft_str *names, const weft_str *values, size_t n)
{
    weft_str uconn = WEFT_STR_NULL;
    for (size_t i = 0; i < n; i++)
        if (weft_str_ieq(names[i], WEFT_STR("Connection")))
            uconn = values[i];
    if (weft_str_ieq(uconn, WEFT_STR("keep-alive")) || weft_str_ieq(uconn, WEFT_STR("close")))
        uconn = WEFT_STR_NULL; /* names no other header: skip the per-header scan */
    return uconn;
}

/* Whether an upstream response header is passed on (or stored for cache
 * hits) at all: not hop-by-hop, by the list or by uconn (see
 * gw_resp_conn_tokens), and not Date or Server, which the gateway sets. */
bool gw_resp_forwardable(weft_str uconn, weft_str name)
{
    return !is_hop_by_hop(name) && !(uconn.n && named_in_connection(uconn, name)) &&
           !weft_str_ieq(name, WEFT_STR("Date")) && !weft_str_ieq(name, WEFT_STR("Server"));
}

/* Whether an upstream response header (other than Content-Type, which goes
 * with the status line) reaches the client, the upstream's Connection
 * tokens already applied. Proxied answers and cache hits both use this, so
 * a hit carries exactly what the miss that stored it did. */
bool gw_resp_header_passes(const gw_req *g, weft_str name)
{
    const gw_route_conf *rt = g->route;
    return gw_resp_forwardable(WEFT_STR_NULL, name) &&
           !in_list(rt->resp_ops.remove, rt->resp_ops.nremove, name) &&
           !in_ops(rt->resp_ops.set, rt->resp_ops.nset, name);
}

/* The route's response_headers set/add, after the upstream's headers. */
void gw_resp_header_ops(gw_req *g)
{
    const gw_route_conf *rt = g->route;
    for (size_t i = 0; i < rt->resp_ops.nset; i++)
        weft_http_resp_header(g->r, weft_str_from(rt->resp_ops.set[i].name),
                              weft_str_from(rt->resp_ops.set[i].value));
    for (size_t i = 0; i < rt->resp_ops.nadd; i++)
        weft_http_resp_header(g->r, weft_str_from(rt->resp_ops.add[i].name),
                              weft_str_from(rt->resp_ops.add[i].value));
}

static void up_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    gw_req *g = ud;
    const gw_route_conf *rt = g->route;
    unsigned cond;
    g->status = resp->status;
    weft_metric_inc(g->w->rt->m, g->cl->m_upstream[class_index(resp->status)]);
    if (status_retriable(&rt->retry, resp->status, &cond)) {
        int outcome = (cond & GW_RETRY_GATEWAY) ? WEFT_OUTCOME_GATEWAY
                      : resp->status >= 500     ? WEFT_OUTCOME_5XX
                                                : WEFT_OUTCOME_SUCCESS;
        /* maybe_retry schedules the retry only if every condition holds;
         * only then is this response dropped */
        if (maybe_retry(g, cond)) {
            attempt_done(g, outcome, outcome == WEFT_OUTCOME_SUCCESS, true);
            weft_http_creq_cancel(q);
            g->q = NULL;
            return;
        }
    }
    /* Forward the head. */
    weft_http_req *r = g->r;
    weft_str ctype = WEFT_STR_NULL, cenc = WEFT_STR_NULL, etag = WEFT_STR_NULL;
    if (g->cache_fill)
        gw_edge_cache_response(g, resp);
    weft_str uconn = gw_resp_conn_tokens(resp->names, resp->values, resp->nheaders);
    for (size_t i = 0; i < resp->nheaders; i++) {
        weft_str name = resp->names[i];
        if (uconn.n && named_in_connection(uconn, name))
            continue; /* hop-by-hop by the upstream's own declaration */
        if (weft_str_ieq(name, WEFT_STR("Content-Type"))) {
            ctype = resp->values[i];
            continue;
        }
        if (weft_str_ieq(name, WEFT_STR("Content-Encoding")))
            cenc = resp->values[i];
        if (!gw_resp_header_passes(g, name))
            continue;
        if (rt->compress && weft_str_ieq(name, WEFT_STR("ETag"))) {
            etag = resp->values[i]; /* after the gzip decision */
            continue;
        }
        weft_http_resp_header(r, name, resp->values[i]);
    }
    gw_resp_header_ops(g);
    int status = resp->status < 200 ? 502 : resp->status;
    int64_t clen = resp->content_length;
    if (weft_http_req_method(r) == WEFT_METHOD_HEAD || status == 204 || status == 304)
        clen = resp->content_length >= 0 ? resp->content_length : 0;
    else if (g->route->compress)
        clen = gw_edge_gzip_start(g, status, ctype, cenc, clen);
    if (etag.n)
        gw_edge_etag(g, etag);
    if (g->route->cache)
        weft_http_resp_header(r, WEFT_STR("X-Cache"), WEFT_STR("MISS"));
    if (weft_http_resp_start(r, status, ctype, clen) < 0) {
        /* the client is gone; on_abort already cleaned up or will */
        return;
    }
    g->resp_started = true;
    weft_http_resp_on_drain(r, on_drain, g);
}

static void up_body(weft_http_creq *q, weft_str data, void *ud)
{
    gw_req *g = ud;
    if (!g->resp_started)
        return;
    if (g->cache_fill)
        gw_edge_cache_body(g, data);
    int rc = g->gz ? gw_edge_gzip_write(g, data) : weft_http_resp_write(g->r, data.p, data.n);
    if (rc == 1 && !g->paused) {
        g->paused = true;
        weft_http_creq_pause(q, true);
    }
}

/* End a request whose response head already went out: the status can no
 * longer change, so the client's connection is closed to show the answer
 * is incomplete. The attempt must already be accounted for. */
static void abort_started(gw_req *g)
{
    if (g->cache_fill)
        gw_edge_cache_done(g, false);
    gw_count_final(g, g->status);
    weft_http_req *r = g->r;
    weft_http_req_on_abort(r, NULL, NULL);
    gw_req_free(g);
    weft_http_resp_abort(r);
}

static void up_done(weft_http_creq *q, int err, void *ud)
{
    gw_req *g = ud;
    g->q = NULL;
    if (err == 0) {
        int st = g->status;
        int outcome = st >= 500 ? ((st == 502 || st == 503 || st == 504) ? WEFT_OUTCOME_GATEWAY
                                                                        : WEFT_OUTCOME_5XX)
                                : WEFT_OUTCOME_SUCCESS;
        attempt_done(g, outcome, st < 500, true);
        gw_count_final(g, st);
        if (g->gz)
            gw_edge_gzip_end(g);
        if (g->cache_fill)
            gw_edge_cache_done(g, true);
        weft_http_req *r = g->r;
        weft_http_req_on_abort(r, NULL, NULL);
        weft_http_resp_on_drain(r, NULL, NULL);
        gw_req_free(g);
        weft_http_resp_end(r);
        return;
    }
    bool waited = err == WEFT_ETIMEDOUT && weft_http_creq_waited(q);
    if ((err == WEFT_ETOOBIG || waited) && !g->resp_started) {
        /* the cluster's pending queue is full, or the request timed out in
         * it: local overload, not the endpoint's fault (no outlier or
         * breaker outcome, as Envoy's pending overflow); at the route's
         * deadline it is the route timing out */
        attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
        weft_metric_inc(g->w->rt->m, g->cl->m_overload);
        g->error = waited ? "timed out waiting for an upstream connection"
                          : "upstream pending queue full";
        if (waited && weft_loop_now_ms(g->w->loop) >= g->deadline_ms)
            gw_respond_local(g, 504, "upstream timeout", NULL, NULL);
        else
            gw_respond_local(g, 503, "upstream connection limit reached", "X-Weft-Overloaded",
                             "true");
        return;
    }
    /* a connect timeout is a connect failure (Envoy's connect-failure) */
    bool connect_failed = err == WEFT_ETIMEDOUT && !weft_http_creq_connected(q);
    attempt_done(g, err_outcome(err), false, true);
    g->error = connect_failed ? "connect timeout" : weft_strerror(err);
    if (g->resp_started) {
        abort_started(g); /* failed mid-body: the client must see a truncated response */
        return;
    }
    if (maybe_retry(g, err_cond(err) | (connect_failed ? GW_RETRY_CONNECT : 0)))
        return;
    /* a connect cut short by the route's deadline is the route timing out */
    bool deadline = weft_loop_now_ms(g->w->loop) >= g->deadline_ms;
    int status = err == WEFT_ETIMEDOUT && (!connect_failed || deadline) ? 504 : 502;
    gw_respond_local(g, status, err == WEFT_ETIMEDOUT ? "upstream timeout" : "upstream unavailable",
                  NULL, NULL);
}

static void on_client_abort(weft_http_req *r, void *ud)
{
    gw_req *g = ud;
    (void)r;
    if (g->q) {
        weft_http_creq_cancel(g->q);
        g->q = NULL;
        attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
    }
    g->error = "client closed";
    access_log(g, 499);
    gw_req_free(g);
}

static void up_send_drain(weft_http_creq *q, void *ud)
{
    (void)q;
    gw_req *g = ud;
    weft_http_req_pause_body(g->r, false);
}

void gw_start_attempt(gw_req *g)
{
    gw_worker *w = g->w;
    gw_cluster_rt *cl = g->cl;
    uint64_t now_ms = weft_loop_now_ms(w->loop);
    g->attempt++;
    g->ep = -1;
    if (now_ms >= g->deadline_ms) {
        gw_respond_local(g, 504, "request deadline exceeded", NULL, NULL);
        return;
    }
    if (cl->conf->breaker_enabled && !weft_breaker_allow(&cl->breaker, now_ms)) {
        weft_metric_inc(w->rt->m, cl->m_breaker_reject);
        g->error = "circuit open";
        gw_respond_local(g, 503, "circuit open", "X-Weft-Circuit", "open");
        return;
    }
    g->breaker_taken = cl->conf->breaker_enabled;
    if ((cl->conf->max_requests && cl->inflight >= cl->conf->max_requests) ||
        (cl->conf->adaptive && !weft_adaptive_acquire(&cl->adaptive))) {
        if (g->breaker_taken) {
            weft_breaker_release(&cl->breaker);
            g->breaker_taken = false;
        }
        weft_metric_inc(w->rt->m, cl->m_overload);
        g->error = "overloaded";
        gw_respond_local(g, 503, "upstream concurrency limit reached", "X-Weft-Overloaded", "true");
        return;
    }
    g->adaptive_taken = cl->conf->adaptive;
    gw_epset *set = cl->set;
    if (g->tried_serial != set->serial) {
        g->ntried = 0; /* the endpoints changed: earlier indices mean nothing now */
        g->tried_serial = set->serial;
    }
    int ep = set->lb ? weft_lb_pick(set->lb, g->hash_key, g->tried, g->ntried, &w->rng) : -1;
    if (ep < 0) {
        attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
        g->error = "no healthy endpoint";
        gw_respond_local(g, 503, "no healthy upstream", NULL, NULL);
        return;
    }
    g->ep = ep;
    g->set = set;
    gw_epset_ref(set);
    if (g->ntried < 16)
        g->tried[g->ntried++] = ep;
    size_t idn = strnlen(set->eps[ep].id, sizeof g->upstream - 1);
    memcpy(g->upstream, set->eps[ep].id, idn);
    g->upstream[idn] = '\0';
    weft_lb_on_start(set->lb, ep);
    cl->inflight++;
    g->inflight_taken = true;
    g->try_start_us = weft_loop_now_us(w->loop);

    uint64_t remaining = g->deadline_ms - now_ms;
    uint32_t per_try = g->route->per_try_timeout_ms ? g->route->per_try_timeout_ms
                                                    : (uint32_t)remaining;
    if (per_try > remaining)
        per_try = (uint32_t)remaining;
    char dline[96];
    const char *hdr_list[2] = {NULL, NULL};
    const gw_config *cfg = g->gen->cfg;
    if (cfg->deadline_header[0]) {
        /* "<name>: <remaining ms>" without snprintf on the hot path */
        size_t hl = strlen(cfg->deadline_header);
        if (hl + 24 < sizeof dline) {
            memcpy(dline, cfg->deadline_header, hl);
            dline[hl] = ':';
            dline[hl + 1] = ' ';
            char num[24], *np = num + sizeof num;
            uint64_t v = remaining;
            *--np = '\0';
            do {
                *--np = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            memcpy(dline + hl + 2, np, (size_t)(num + sizeof num - np));
            hdr_list[0] = dline;
        }
    }
    const gw_endpoint_conf *e = &set->eps[ep];
    weft_str body = {weft_buf_rptr(&g->body), weft_buf_used(&g->body)};
    if (build_upstream_head(g, &w->hdrs) < 0) {
        attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
        g->error = "request headers too large to forward";
        gw_respond_local(g, 431, "request headers too large to forward", NULL, NULL);
        return;
    }
    weft_http_creq_opts o = {
        .method = NULL,
        .host = e->host,
        .port = e->port,
        .target = g->target,
        .headers = hdr_list,
        .raw_headers = {weft_buf_rptr(&w->hdrs), weft_buf_used(&w->hdrs)},
        .body = body.n ? body.p : NULL,
        .body_len = body.n,
        .timeout_ms = per_try ? per_try : 1,
        .on_response = up_response,
        .on_body = up_body,
        .on_done = up_done,
        .ud = g,
        .body_stream = g->body_mode == GW_BODY_STREAM,
        .stream_length = g->stream_length,
        .on_send_drain = up_send_drain,
        /* the pool's stale-connection resend is a retry like ours: a
         * method we may not retry must not be sent twice behind our back */
        .no_replay = !g->route->retry.all_methods && !idempotent(weft_http_req_method(g->r)),
    };
    char method[32];
    weft_str ms = weft_http_req_method_str(g->r);
    size_t ml = ms.n < sizeof method - 1 ? ms.n : sizeof method - 1;
    memcpy(method, ms.p, ml);
    method[ml] = '\0';
    o.method = method;
    int rc = weft_http_client_request(cl->client, &o, &g->q);
    if (rc < 0) {
        attempt_done(g, WEFT_OUTCOME_GATEWAY, false, true);
        g->error = weft_strerror(rc);
        gw_respond_local(g, 502, "cannot forward request", NULL, NULL);
    }
}

/* ---- request bodies ---- */

static void body_too_large(gw_req *g)
{
    if (g->q) {
        weft_http_creq_cancel(g->q);
        g->q = NULL;
        attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
    }
    g->error = "request body too large";
    gw_respond_local(g, 413, "request body too large", NULL, NULL);
}

static void body_buffer(weft_http_req *r, weft_str data, void *ud)
{
    (void)r;
    gw_req *g = ud;
    g->body_seen += data.n;
    if (weft_buf_append(&g->body, data.p, data.n) < 0)
        body_too_large(g);
}

static void body_stream(weft_http_req *r, weft_str data, void *ud)
{
    gw_req *g = ud;
    g->body_seen += data.n;
    if (g->body_seen > g->w->rt->max_body) {
        /* a chunked body that outgrew the limit */
        if (!g->resp_started) {
            body_too_large(g);
            return;
        }
        /* the upstream already answers: too late for a 413, but the limit
         * still holds, so stop both sides instead of streaming on */
        if (g->q) {
            weft_http_creq_cancel(g->q);
            g->q = NULL;
            attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
        }
        g->error = "request body too large";
        abort_started(g);
        return;
    }
    if (!g->q)
        return; /* the attempt already ended; its outcome is being answered */
    int rc = weft_http_creq_write(g->q, data.p, data.n);
    if (rc == 1)
        weft_http_req_pause_body(r, true); /* resumed by up_send_drain */
}

static void body_end(weft_http_req *r, int err, void *ud)
{
    gw_req *g = ud;
    if (err != 0) {
        /* the client's body broke (malformed chunk, client gone): the server
         * answers or closes; stop the upstream side and let go */
        if (g->q) {
            weft_http_creq_cancel(g->q);
            g->q = NULL;
            attempt_done(g, WEFT_OUTCOME_SUCCESS, true, false);
        }
        /* the server answers 408 for a body timeout, else 400 (or closes) */
        g->error = err == WEFT_ETIMEDOUT ? "client body timeout" : "client body error";
        gw_count_final(g, err == WEFT_ETIMEDOUT ? 408 : 400); /* counted and logged */
        weft_http_req_on_abort(r, NULL, NULL);
        g->body_mode = GW_BODY_NONE; /* callbacks are being torn down by the server */
        gw_req_free(g);
        return;
    }
    if (g->body_mode == GW_BODY_STREAM) {
        if (g->q)
            weft_http_creq_end(g->q);
        return;
    }
    gw_start_attempt(g); /* buffered: the whole body is here */
}

/* ---- direct / redirect ---- */

static void do_direct(weft_http_req *r, const gw_route_conf *rt)
{
    weft_http_respond(r, rt->status, weft_str_from(rt->content_type), rt->body, rt->body_len);
}

static void do_redirect(weft_http_req *r, const gw_route_conf *rt)
{
    weft_http_resp_header(r, WEFT_STR("Location"), weft_str_from(rt->location));
    weft_http_respond(r, rt->status, WEFT_STR_NULL, NULL, 0);
}

/* ---- generations ---- */

static void gen_free(gw_gen *gen)
{
    for (size_t i = 0; i < gen->cfg->nclusters; i++) {
        gw_cluster_rt *cl = &gen->clusters[i];
        gw_dns_stop(cl);
        gw_discovery_stop(cl);
        gw_epset_unref(cl->set);
        cl->set = NULL;
        weft_http_client_free(cl->client);
    }
    free(gen->clusters);
    free(gen->routes);
    gw_config_unref(gen->cfg);
    free(gen);
}

static void reap_gens(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    gw_worker *w = t->data;
    while (w->dead_gens) {
        gw_gen *gen = w->dead_gens;
        w->dead_gens = gen->next_dead;
        gen_free(gen);
    }
}

/* A generation replaced by a reload only finishes the requests it has: its
 * endpoint sets stay as they are, without health checks or discovery (which
 * would otherwise run, a full round more per interval for each replaced
 * generation, until its last request ended). */
static void gen_retire(gw_gen *gen)
{
    gen->current = false;
    for (size_t i = 0; i < gen->cfg->nclusters; i++) {
        gw_cluster_rt *cl = &gen->clusters[i];
        gw_dns_stop(cl);
        gw_discovery_stop(cl);
        gw_health_stop(cl->set);
    }
}

/* The last reference to an old generation is often dropped from inside a
 * callback of one of its own clients (a request's on_done): freeing the
 * clients right there would pull them from under that callback. Park it
 * and free it from a zero-delay timer, outside every callback (and at
 * worker stop, whatever is still parked). */
static void gen_unref(gw_gen *gen)
{
    if (--gen->refs > 0)
        return;
    gw_worker *w = gen->w;
    if (w->stopping) {
        gen_free(gen);
        return;
    }
    gen->next_dead = w->dead_gens;
    w->dead_gens = gen;
    weft_timer_start(w->loop, &w->reap_timer, 0);
}

/* key="value" for a label set, the value escaped for the exposition format:
 * route and cluster names come from the config and may hold any character.
 * Room is left for a ",code=\"other\"" suffix. NULL when out of memory
 * (then the series are not registered and their ids are WEFT_METRIC_NONE). */
static char *label_of(const char *key, const char *val)
{
    size_t n = strlen(key) + 4 + 2 * strlen(val) + 16;
    char *out = malloc(n), *p = out;
    if (!out)
        return NULL;
    p += sprintf(p, "%s=\"", key);
    for (; *val; val++) {
        if (*val == '\\' || *val == '"')
            *p++ = '\\';
        if (*val == '\n') {
            *p++ = '\\';
            *p++ = 'n';
            continue;
        }
        *p++ = *val;
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

/* A label set the registry refuses, for when one could not be built. */
#define NO_LABELS "!"

/* id, preset to name no series: a registration the registry refuses (a
 * route or cluster beyond its capacity) leaves the id untouched, and
 * updates to it are then dropped instead of landing on series 0, which
 * the zeroed id would otherwise name. */
static weft_metric *unset(weft_metric *id)
{
    *id = WEFT_METRIC_NONE;
    return id;
}

static void reg_classes(weft_metrics *m, const char *name, const char *help, char *labels,
                        weft_metric ids[6])
{
    static const char *const cls[] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    size_t base = labels ? strlen(labels) : 0;
    for (int i = 0; i < 6; i++) {
        if (!labels) { /* could not be built: left out */
            unset(&ids[i]);
            continue;
        }
        sprintf(labels + base, ",code=\"%s\"", cls[i]);
        weft_metrics_counter(m, name, help, labels, unset(&ids[i]));
    }
    if (labels)
        labels[base] = '\0';
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether two cluster configs take their endpoints from the same DNS name or
 * registry service (same resolver, type, port; same registry and zone). */
static bool same_discovery(const gw_cluster_conf *a, const gw_cluster_conf *b)
{
    if (a->dns_name)
        return str_eq(a->dns_name, b->dns_name) && a->dns_srv == b->dns_srv &&
               a->dns_family == b->dns_family && a->dns_port == b->dns_port &&
               str_eq(a->dns_resolver, b->dns_resolver);
    if (a->disc_service)
        return str_eq(a->disc_service, b->disc_service) && str_eq(a->disc_host, b->disc_host) &&
               a->disc_port == b->disc_port && str_eq(a->disc_zone, b->disc_zone);
    return false;
}

/* Whether two clusters' active health checks would judge an endpoint the
 * same way, so a verdict reached under a's settings still holds under b's. */
static bool same_health(const gw_health_conf *a, const gw_health_conf *b)
{
    return a->enabled && b->enabled && a->tcp == b->tcp && str_eq(a->path, b->path) &&
           a->interval_ms == b->interval_ms && a->timeout_ms == b->timeout_ms &&
           a->healthy_threshold == b->healthy_threshold &&
           a->unhealthy_threshold == b->unhealthy_threshold;
}

/* The previous generation's cluster of this name, or NULL. */
static const gw_cluster_rt *prev_cluster(const gw_gen *prev, const char *name)
{
    if (!prev)
        return NULL;
    for (size_t i = 0; i < prev->cfg->nclusters; i++)
        if (strcmp(prev->clusters[i].conf->name, name) == 0 && prev->clusters[i].set)
            return &prev->clusters[i];
    return NULL;
}

/* The endpoints a cluster of the new generation starts with. A static list is
 * the config's; a discovered cluster of the same name and source starts from
 * what the previous generation last discovered, so a reload does not leave
 * it empty (every request 503) until DNS or the registry answers again. */
static void initial_endpoints(const gw_cluster_rt *pc, const gw_cluster_conf *cc,
                              const gw_endpoint_conf **eps, size_t *n)
{
    *eps = cc->eps;
    *n = cc->neps;
    if (pc && (cc->dns_name || cc->disc_service) && same_discovery(cc, pc->conf)) {
        *eps = pc->set->eps;
        *n = pc->set->n;
    }
}

/* prev: the generation being replaced (NULL at worker start). Everything is
 * built anew except per-endpoint health verdicts and outlier ejections,
 * carried over from prev's cluster of the same name (gw_epset_inherit). */
static gw_gen *gen_new(gw_worker *w, gw_config *cfg, const gw_gen *prev)
{
    weft_metrics *m = w->rt->m;
    gw_gen *gen = calloc(1, sizeof *gen);
    if (!gen)
        return NULL;
    gen->refs = 1;
    gen->cfg = cfg;
    gw_config_ref(cfg);
    gen->w = w;
    gen->clusters = calloc(cfg->nclusters ? cfg->nclusters : 1, sizeof *gen->clusters);
    gen->routes = calloc(cfg->nroutes, sizeof *gen->routes);
    if (!gen->clusters || !gen->routes)
        goto fail;
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const gw_cluster_conf *cc = &cfg->clusters[i];
        gw_cluster_rt *cl = &gen->clusters[i];
        cl->conf = cc;
        cl->gen = gen;
        weft_http_client_opts co;
        weft_http_client_opts_default(&co);
        co.connect_timeout_ms = cc->connect_timeout_ms ? cc->connect_timeout_ms : 1;
        co.idle_timeout_ms = cc->idle_timeout_ms ? cc->idle_timeout_ms : 1;
        co.max_idle_per_host = cc->max_idle;
        co.max_conns_per_host = cc->max_connections;
        co.max_pending_per_host = cc->max_pending;
        co.response_timeout_ms = 0; /* set per attempt from the route */
        cl->client = weft_http_client_new(w->loop, &co);
        const gw_endpoint_conf *eps;
        size_t neps;
        const gw_cluster_rt *pc = prev_cluster(prev, cc->name);
        initial_endpoints(pc, cc, &eps, &neps);
        cl->set = gw_epset_new(cl, eps, neps);
        if (!cl->set || !cl->client)
            goto fail;
        /* what the replaced generation learned about endpoints still
         * configured: verdicts, if judged the same way; ejections */
        if (pc)
            gw_epset_inherit(cl->set, pc->set, same_health(&cc->health, &pc->conf->health),
                             cc->outlier_enabled && pc->conf->outlier_enabled);
        weft_breaker_init(&cl->breaker, &cc->breaker);
        weft_adaptive_init(&cl->adaptive, &cc->adaptive_opts);
        /* a NULL label set (out of memory) is refused: ids WEFT_METRIC_NONE */
        char *lbuf = label_of("cluster", cc->name);
        const char *labels = lbuf ? lbuf : NO_LABELS;
        reg_classes(m, "weft_gateway_upstream_responses_total",
                    "Upstream responses by cluster and status class.", lbuf, cl->m_upstream);
        weft_metrics_counter(m, "weft_gateway_breaker_rejections_total",
                             "Requests short-circuited by an open circuit breaker.", labels,
                             unset(&cl->m_breaker_reject));
        weft_metrics_counter(m, "weft_gateway_ejections_total",
                             "Endpoints ejected by outlier detection.", labels,
                             unset(&cl->m_ejections));
        weft_metrics_counter(m, "weft_gateway_overload_rejections_total",
                             "Requests shed by concurrency limits.", labels,
                             unset(&cl->m_overload));
        weft_metrics_counter(m, "weft_gateway_health_check_failures_total",
                             "Failed active health checks.", labels, unset(&cl->m_hc_fail));
        weft_metrics_counter(m, "weft_gateway_dns_failures_total",
                             "DNS discovery failures (the last endpoints are kept).", labels,
                             unset(&cl->m_dns_fail));
        weft_metrics_counter(m, "weft_gateway_dns_updates_total",
                             "Endpoint set changes from DNS discovery.", labels,
                             unset(&cl->m_dns_updates));
        weft_metrics_gauge(m, "weft_gateway_breaker_open",
                           "Workers whose circuit breaker for the cluster is open.", labels,
                           unset(&cl->m_breaker_open));
        weft_metrics_gauge(m, "weft_gateway_breaker_half_open",
                           "Workers whose circuit breaker for the cluster is half-open.", labels,
                           unset(&cl->m_breaker_half_open));
        weft_metrics_gauge(m, "weft_gateway_discovery_stale",
                           "Workers serving the last known endpoints because the registry "
                           "is unreachable.",
                           labels, unset(&cl->m_disc_stale));
        weft_metrics_counter(m, "weft_gateway_discovery_updates_total",
                             "Endpoint set changes from registry discovery.", labels,
                             unset(&cl->m_disc_updates));
        weft_metrics_counter(m, "weft_gateway_discovery_failures_total",
                             "Failed registry queries (the last endpoints are kept).", labels,
                             unset(&cl->m_disc_fail));
        weft_metrics_gauge(
            m, "weft_gateway_ejected_endpoints",
            "Endpoints currently ejected by outlier detection (summed over workers).", labels,
            unset(&cl->m_ejected_now));
        free(lbuf);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gw_route_conf *rc = &cfg->routes[i];
        gw_route_rt *rr = &gen->routes[i];
        weft_retry_budget_init(&rr->budget, rc->retry.budget_percent, rc->retry.budget_min_per_sec,
                               rc->retry.budget_ttl_ms);
        char *lbuf = label_of("route", rc->name);
        const char *labels = lbuf ? lbuf : NO_LABELS;
        reg_classes(m, "weft_gateway_requests_total",
                    "Requests answered by the gateway, by route and status class.", lbuf,
                    rr->m_req);
        weft_metrics_histogram(m, "weft_gateway_request_duration_seconds",
                               "Gateway request latency (including retries).", labels,
                               weft_latency_buckets, weft_latency_nbuckets, unset(&rr->m_dur));
        weft_metrics_counter(m, "weft_gateway_retries_total", "Retries started.", labels,
                             unset(&rr->m_retries));
        weft_metrics_counter(m, "weft_gateway_retry_budget_exhausted_total",
                             "Retries refused because the retry budget was spent.", labels,
                             unset(&rr->m_budget_exhausted));
        weft_metrics_counter(m, "weft_gateway_rate_limited_total",
                             "Requests answered 429 by the route's rate limit.", labels,
                             unset(&rr->m_ratelimited));
        free(lbuf);
    }
    for (size_t i = 0; i < cfg->nclusters; i++) {
        gw_health_start(gen->clusters[i].set);
        if (cfg->clusters[i].dns_name && gw_dns_start(&gen->clusters[i]) < 0)
            weft_log(WEFT_LOG_ERROR, "dns discovery could not start",
                     WEFT_KV_STR("cluster", cfg->clusters[i].name));
        if (cfg->clusters[i].disc_service && gw_discovery_start(&gen->clusters[i]) < 0)
            weft_log(WEFT_LOG_ERROR, "registry discovery could not start",
                     WEFT_KV_STR("cluster", cfg->clusters[i].name));
    }
    return gen;
fail:
    gen->refs = 0;
    for (size_t i = 0; i < cfg->nclusters; i++) {
        gw_epset_unref(gen->clusters[i].set);
        weft_http_client_free(gen->clusters[i].client);
    }
    free(gen->clusters);
    free(gen->routes);
    gw_config_unref(cfg);
    free(gen);
    return NULL;
}

/* ---- handler ---- */

void gw_handle(weft_http_req *r, void *ud)
{
    gw_runtime *rt = ud;
    gw_worker *w = rt->workers[weft_loop_index(weft_http_req_loop(r))];
    gw_gen *gen = w->gen;
    /* route, authorize and forward the path the origin will see (see
     * src/http/path.c): /a/../admin, /%61dmin and //admin are /admin */
    weft_str path = weft_http_req_path(r);
    if (!weft_http_path_normal(path, true)) {
        char *np = weft_http_req_alloc(r, path.n);
        if (!np) {
            weft_http_respond_error(r, 503, "out of memory");
            return;
        }
        weft_http_req_set_path(r, (weft_str){np, weft_http_path_normalize(path, true, np)});
    }
    int ri = gw_route_match(gen->cfg, r);
    if (ri < 0) {
        weft_http_respond_error(r, 404, "no route");
        return;
    }
    const gw_route_conf *route = &gen->cfg->routes[ri];
    if (route->action == GW_ACT_DIRECT || route->action == GW_ACT_REDIRECT) {
        /* answered here: count and log like any request, then reply */
        gw_req local = {.r = r, .w = w, .gen = gen, .route = route, .rrt = &gen->routes[ri],
                        .ep = -1, .start_us = weft_loop_now_us(w->loop)};
        gw_count_final(&local, route->status);
        if (route->action == GW_ACT_DIRECT)
            do_direct(r, route);
        else
            do_redirect(r, route);
        return;
    }
    gw_req *g = calloc(1, sizeof *g);
    if (!g) {
        weft_http_respond_error(r, 503, "out of memory");
        return;
    }
    weft_buf_init(&g->cache_body, 0);
    weft_buf_init(&g->body, 0);
    g->r = r;
    g->w = w;
    g->gen = gen;
    gen->refs++;
    w->inflight++;
    g->route = route;
    g->rrt = &gen->routes[ri];
    g->ep = -1;
    g->start_us = weft_loop_now_us(w->loop);
    g->deadline_ms = g->start_us / 1000 + route->timeout_ms;
    weft_timer_init(&g->timer, retry_fire, g);
    weft_http_req_on_abort(r, on_client_abort, g);
    if (route->ratelimit && !gw_edge_ratelimit(g))
        return;
    if (route->auth && !gw_edge_auth(g))
        return;
    if (route->action == GW_ACT_AGGREGATE) {
        gw_edge_aggregate(g);
        return;
    }
    g->cl = &gen->clusters[choose_cluster(g)];
    g->hash_key = hash_key(g);
    g->target = build_target(g);
    if (!g->target) {
        gw_respond_local(g, 503, "out of memory", NULL, NULL);
        return;
    }
    if (route->retry.budget_enabled)
        weft_retry_budget_deposit(&g->rrt->budget, g->start_us / 1000);
    weft_http_resp_header(r, WEFT_STR("X-Request-Id"), weft_http_req_id(r));
    int64_t clen = weft_http_req_content_length(r);
    if (clen > 0 && (uint64_t)clen > rt->max_body) {
        g->error = "request body too large";
        gw_respond_local(g, 413, "request body too large", NULL, NULL);
        return;
    }
    if (clen == 0) {
        if (route->cache && !gw_edge_cache_lookup(g))
            return;
        gw_start_attempt(g);
        return;
    }
    if (clen > 0 && clen <= GW_BUFFER_BODY_MAX) {
        g->body_mode = GW_BODY_BUFFER;
        weft_buf_init(&g->body, (size_t)clen);
        weft_http_req_on_body(r, body_buffer, body_end, g);
        return;
    }
    g->body_mode = GW_BODY_STREAM;
    g->stream_length = clen;
    weft_http_req_on_body(r, body_stream, body_end, g);
    gw_start_attempt(g);
}

/* ---- workers ---- */

static void tick(weft_loop *loop, weft_timer *t)
{
    gw_worker *w = t->data;
    uint64_t now_ms = weft_loop_now_ms(loop);
    gw_gen *gen = w->gen;
    for (size_t i = 0; i < gen->cfg->nclusters; i++) {
        gw_cluster_rt *cl = &gen->clusters[i];
        if (weft_outlier_tick(cl->set->outlier, cl->set->n, now_ms))
            gw_cluster_refresh_health(cl, now_ms);
        /* state gauges: this worker's slot holds 0 or 1 (or its count) */
        int st = weft_breaker_state(&cl->breaker, now_ms);
        weft_metrics *m = w->rt->m;
        weft_metric_gauge_set(m, cl->m_breaker_open, st == WEFT_BREAKER_OPEN);
        weft_metric_gauge_set(m, cl->m_breaker_half_open, st == WEFT_BREAKER_HALF_OPEN);
        int64_t ejected = 0;
        for (size_t k = 0; k < cl->set->n; k++)
            ejected += weft_outlier_ejected(&cl->set->outlier[k], now_ms);
        weft_metric_gauge_set(m, cl->m_ejected_now, ejected);
    }
    if (weft_buf_used(&w->alog) && now_ms - w->alog_flushed_ms >= ALOG_FLUSH_MS)
        alog_flush(w);
    weft_timer_start(loop, t, 100);
}

gw_runtime *gw_runtime_new(gw_config *cfg, weft_http_server *srv, int nworkers)
{
    gw_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    pthread_mutex_init(&rt->mu, NULL);
    rt->cfg = cfg;
    rt->srv = srv;
    rt->nworkers = nworkers;
    rt->m = weft_metrics_global();
    return rt;
}

void gw_runtime_free(gw_runtime *rt)
{
    if (!rt)
        return;
    gw_config_unref(rt->cfg);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
}

gw_config *gw_runtime_config(gw_runtime *rt)
{
    pthread_mutex_lock(&rt->mu);
    gw_config *c = rt->cfg;
    gw_config_ref(c);
    pthread_mutex_unlock(&rt->mu);
    return c;
}

int gw_worker_start(gw_runtime *rt, weft_loop *loop)
{
    int idx = weft_loop_index(loop);
    gw_worker *w = calloc(1, sizeof *w);
    if (!w)
        return WEFT_ENOMEM;
    w->loop = loop;
    w->rt = rt;
    weft_buf_init(&w->alog, 1u << 20);
    weft_buf_init(&w->hdrs, 256 * 1024);
    {
        gw_config *c0 = gw_runtime_config(rt);
        w->cache = weft_cache_new(c0->cache_max_bytes, c0->cache_policy);
        weft_metrics_counter(rt->m, "weft_gateway_cache_lookups_total",
                             "Response cache lookups by result.", "result=\"hit\"",
                             unset(&w->m_cache_hit));
        weft_metrics_counter(rt->m, "weft_gateway_cache_lookups_total",
                             "Response cache lookups by result.", "result=\"miss\"",
                             unset(&w->m_cache_miss));
        weft_metrics_counter(rt->m, "weft_gateway_cache_lookups_total",
                             "Response cache lookups by result.", "result=\"coalesced\"",
                             unset(&w->m_cache_coalesced));
        gw_config_unref(c0);
        if (!w->cache)
            return WEFT_ENOMEM;
    }
    weft_rng_seed(&w->rng, weft_now_us() ^ ((uint64_t)idx << 32) ^ (uint64_t)(uintptr_t)w);
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.max_idle_per_host = 4;
    w->hc_client = weft_http_client_new(loop, &co);
    if (!w->hc_client)
        return WEFT_ENOMEM;
    rt->workers[idx] = w;
    gw_config *cfg = gw_runtime_config(rt);
    w->gen = gen_new(w, cfg, NULL);
    gw_config_unref(cfg);
    if (!w->gen)
        return WEFT_ENOMEM;
    w->gen->current = true;
    weft_timer_init(&w->tick, tick, w);
    weft_timer_init(&w->reap_timer, reap_gens, w);
    weft_timer_start(loop, &w->tick, 100);
    return 0;
}

void gw_worker_stop(gw_runtime *rt, weft_loop *loop)
{
    int idx = weft_loop_index(loop);
    gw_worker *w = rt->workers[idx];
    if (!w)
        return;
    w->stopping = true;
    weft_timer_stop(loop, &w->tick);
    weft_timer_stop(loop, &w->reap_timer);
    reap_gens(loop, &w->reap_timer);
    alog_flush(w);
    weft_buf_release(&w->alog);
    weft_buf_release(&w->hdrs);
    /* connections were closed by the server: requests freed via on_abort */
    gw_gen *gen = w->gen;
    w->gen = NULL;
    if (gen)
        gen_unref(gen);
    weft_http_client_free(w->hc_client);
    weft_cache_free(w->cache);
    gw_router_thread_done();
    rt->workers[idx] = NULL;
    free(w);
}

typedef struct install_msg {
    gw_runtime *rt;
    gw_config *cfg;
} install_msg;

static void install_on_worker(weft_loop *loop, void *arg)
{
    install_msg *msg = arg;
    gw_worker *w = msg->rt->workers[weft_loop_index(loop)];
    if (w) {
        gw_gen *ng = gen_new(w, msg->cfg, w->gen);
        if (ng) {
            gw_gen *old = w->gen;
            ng->current = true;
            w->gen = ng;
            gen_retire(old);
            gen_unref(old); /* freed now, or when its last request ends */
        } else {
            weft_log(WEFT_LOG_ERROR, "reload: out of memory on a worker; old config kept");
        }
    }
    gw_config_unref(msg->cfg);
    free(msg);
}

void gw_runtime_install(gw_runtime *rt, gw_config *cfg)
{
    pthread_mutex_lock(&rt->mu);
    gw_config *old = rt->cfg;
    rt->cfg = cfg;
    atomic_fetch_add(&rt->reloads, 1);
    for (int i = 0; i < rt->nworkers; i++) {
        gw_worker *w = rt->workers[i];
        if (!w)
            continue;
        install_msg *msg = malloc(sizeof *msg);
        if (!msg)
            continue;
        msg->rt = rt;
        msg->cfg = cfg;
        gw_config_ref(cfg);
        if (weft_loop_post(w->loop, install_on_worker, msg) < 0) {
            gw_config_unref(cfg);
            free(msg);
        }
    }
    pthread_mutex_unlock(&rt->mu);
    gw_config_unref(old);
}
