/*
 * client.c — calling services by name (see include/weft/client.h).
 *
 * Per service, per loop, a `svc`: the registry watch (src/sdk/regwatch.c,
 * the gateway's discovery code), the current endpoint generation, one
 * breaker and one retry budget. Nothing is shared between loops, so
 * nothing locks.
 *
 * Endpoint generations. Each watch answer that changes the instance list
 * builds a new `cset` (balancer + outlier state) that carries over the
 * latency estimates and ejections of instances that stay. A call holds a
 * reference to the generation its attempt picked from, so its accounting
 * (inflight, EWMA, outlier record) lands on the indices it used even if
 * the list changes meanwhile; the old generation is freed with its last
 * call.
 *
 * A call: breaker admission → wait for the first instance list if the
 * service is new (bounded by the deadline) → attempt: pick (excluding
 * instances already tried; ejected ones are unhealthy to the balancer) →
 * send with the remaining deadline in a header → record latency, outlier
 * outcome → retry (connect failures always, since nothing was sent; resets,
 * timeouts and 502/503/504 for idempotent calls) after full-jitter backoff
 * if the attempts, the budget and the deadline allow → complete: one
 * breaker outcome per call, metrics, callback. Callbacks always run from
 * the loop, never inside weft_client_call.
 */
#include "weft/client.h"

#include "regwatch.h"
#include "weft/buf.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TRIED 16

typedef struct cep {
    char *host;
    uint16_t port;
    uint32_t weight;
    char id[272];
} cep;

typedef struct cset {
    int refs;
    size_t n;
    cep *eps;
    weft_lb *lb;
    weft_outlier_host *out;
} cset;

typedef struct svc svc;

struct weft_call {
    weft_call *next, *prev; /* svc's calls (in flight or waiting) */
    svc *s;
    cset *set; /* generation of the current attempt (referenced) */
    int idx;
    weft_call_cb cb;
    void *ud;
    char *method, *target, *hdrs; /* hdrs: "Name: value\r\n" lines, fixed part */
    size_t hdrs_len, hdrs_room; /* room after the fixed part: the deadline line */
    char *body;
    size_t body_len;
    uint64_t hash;
    bool idempotent, waiting, admitted;
    uint64_t deadline_ms, start_us, try_us;
    int tried[MAX_TRIED];
    size_t ntried;
    uint32_t attempts;
    weft_http_creq *q;
    weft_timer timer;  /* backoff, or a deferred completion */
    weft_timer dtimer; /* the deadline */
    int pending_err;   /* deferred completion */
    int status;
    char ctype[128];
    weft_buf resp;
    weft_http_req *parent;
    weft_http_req_hook hook;
};

struct svc {
    svc *next;
    weft_client *c;
    char *name;
    regwatch *w;
    cset *set;
    bool known; /* the first watch answer (or failure) arrived */
    weft_breaker br;
    weft_retry_budget budget;
    weft_call *calls;
    weft_metric m_ok, m_err, m_circuit, m_nohost, m_timeout, m_retries, m_budget, m_dur, m_open;
};

struct weft_client {
    weft_loop *loop;
    weft_client_opts o;
    char *reg_host, *zone, *deadline_header;
    uint16_t reg_port;
    weft_http_client *http;
    weft_rng rng;
    svc *svcs;
    weft_metrics *m;
};

void weft_client_opts_default(weft_client_opts *o)
{
    memset(o, 0, sizeof *o);
    o->lb = WEFT_LB_P2C_EWMA;
    o->timeout_ms = 5000;
    o->try_timeout_ms = 2000;
    o->connect_timeout_ms = 1000;
    o->attempts = 3;
    o->backoff_base_ms = 25;
    o->backoff_max_ms = 250;
    o->budget_percent = 0.2;
    o->budget_min_per_sec = 10;
    o->max_response = 8u << 20;
    weft_breaker_opts_default(&o->breaker);
    weft_outlier_opts_default(&o->outlier);
    o->deadline_header = "X-Weft-Deadline-Ms";
}

/* ---- endpoint generations ---- */

static void cset_unref(cset *cs)
{
    if (!cs || --cs->refs > 0)
        return;
    for (size_t i = 0; i < cs->n; i++)
        free(cs->eps[i].host);
    free(cs->eps);
    free(cs->out);
    weft_lb_free(cs->lb);
    free(cs);
}

static bool cset_same(const cset *cs, const regwatch_ep *eps, size_t n)
{
    if (!cs || cs->n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(cs->eps[i].id, eps[i].id) != 0 || cs->eps[i].weight != eps[i].weight)
            return false;
    return true;
}

static cset *cset_build(weft_client *c, const cset *old, const regwatch_ep *eps, size_t n)
{
    cset *cs = calloc(1, sizeof *cs);
    weft_lb_endpoint *lbe = calloc(n ? n : 1, sizeof *lbe);
    if (!cs || !lbe)
        goto fail;
    cs->refs = 1;
    cs->eps = calloc(n ? n : 1, sizeof *cs->eps);
    cs->out = calloc(n ? n : 1, sizeof *cs->out);
    if (!cs->eps || !cs->out)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        cep *e = &cs->eps[cs->n];
        if (!(e->host = strdup(eps[i].host)))
            goto fail;
        cs->n++;
        e->port = eps[i].port;
        e->weight = eps[i].weight;
        snprintf(e->id, sizeof e->id, "%s", eps[i].id);
        lbe[i] = (weft_lb_endpoint){.id = e->id, .weight = e->weight, .healthy = true};
    }
    if (weft_lb_new(c->o.lb, lbe, n, &cs->lb) < 0)
        goto fail;
    free(lbe);
    /* carry over what we learnt about instances that stay */
    weft_lb_endpoint *ne = weft_lb_endpoints(cs->lb);
    for (size_t i = 0; old && i < n; i++)
        for (size_t j = 0; j < old->n; j++)
            if (strcmp(cs->eps[i].id, old->eps[j].id) == 0) {
                const weft_lb_endpoint *oe = &weft_lb_endpoints(old->lb)[j];
                ne[i].ewma_us = oe->ewma_us;
                ne[i].ewma_stamp_us = oe->ewma_stamp_us;
                cs->out[i] = old->out[j];
                break;
            }
    return cs;
fail:
    free(lbe);
    if (cs) {
        cs->refs = 1;
        cset_unref(cs);
    }
    return NULL;
}

/* ---- calls ---- */

static void attempt(weft_call *k);

static void call_free(weft_call *k)
{
    svc *s = k->s;
    if (k->prev)
        k->prev->next = k->next;
    else
        s->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    weft_timer_stop(s->c->loop, &k->timer);
    weft_timer_stop(s->c->loop, &k->dtimer);
    if (k->parent)
        weft_http_req_hook_remove(k->parent, &k->hook);
    if (k->q) {
        weft_http_creq_cancel(k->q);
        if (k->set)
            weft_lb_on_done(k->set->lb, k->idx, 0, weft_loop_now_us(s->c->loop));
    }
    if (k->admitted)
        weft_breaker_release(&s->br);
    cset_unref(k->set);
    weft_buf_release(&k->resp);
    free(k->method);
    free(k->target);
    free(k->hdrs);
    free(k->body);
    free(k);
}

static void finish(weft_call *k, int err)
{
    svc *s = k->s;
    weft_client *c = s->c;
    uint64_t now_us = weft_loop_now_us(c->loop);
    if (k->q) { /* deadline while an attempt was out */
        weft_http_creq_cancel(k->q);
        k->q = NULL;
        weft_lb_on_done(k->set->lb, k->idx, 0, now_us);
    }
    bool ok = err == 0 && k->status < 500;
    if (k->admitted && k->attempts > 0) {
        weft_breaker_record(&s->br, now_us / 1000, ok, now_us - k->start_us);
        k->admitted = false;
    }
    weft_metric id = err == 0 ? (ok ? s->m_ok : s->m_err)
                     : err == WEFT_ECIRCUIT ? s->m_circuit
                     : err == WEFT_ENOHOST  ? s->m_nohost
                     : err == WEFT_ETIMEDOUT ? s->m_timeout
                                             : s->m_err;
    weft_metric_inc(c->m, id);
    weft_metric_observe(c->m, s->m_dur, (double)(now_us - k->start_us) / 1e6);
    weft_metric_gauge_set(c->m, s->m_open, weft_breaker_state(&s->br, now_us / 1000) == WEFT_BREAKER_OPEN);
    weft_call_result res = {
        .err = err,
        .status = err ? 0 : k->status,
        .body = err ? WEFT_STR_NULL : (weft_str){weft_buf_rptr(&k->resp), weft_buf_used(&k->resp)},
        .content_type = err ? WEFT_STR_NULL : weft_str_from(k->ctype),
        .endpoint = k->set && k->attempts ? k->set->eps[k->idx].id : "",
        .attempts = k->attempts,
    };
    weft_call_cb cb = k->cb;
    void *ud = k->ud;
    /* unlink from the parent first: the callback may finish the parent */
    if (k->parent) {
        weft_http_req_hook_remove(k->parent, &k->hook);
        k->parent = NULL;
    }
    cb(&res, ud);
    call_free(k);
}

/* Complete from the loop, not from the caller's stack. */
static void finish_later(weft_call *k, int err)
{
    k->pending_err = err;
    weft_timer_start(k->s->c->loop, &k->timer, 0);
}

static void timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    weft_call *k = t->data;
    if (k->pending_err)
        finish(k, k->pending_err);
    else
        attempt(k);
}

static void deadline_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    finish(t->data, WEFT_ETIMEDOUT);
}

static void parent_gone(weft_http_req *r, weft_http_req_hook *h)
{
    (void)r;
    weft_call *k = (weft_call *)((char *)h - offsetof(weft_call, hook));
    k->parent = NULL; /* already unlinked by the server */
    call_free(k);
}

static int outcome_of(int err, int status)
{
    if (err)
        return err == WEFT_ETOOBIG ? WEFT_OUTCOME_SUCCESS : WEFT_OUTCOME_CONNECT_FAIL;
    if (status == 502 || status == 503 || status == 504)
        return WEFT_OUTCOME_GATEWAY;
    return status >= 500 ? WEFT_OUTCOME_5XX : WEFT_OUTCOME_SUCCESS;
}

/* Schedule another attempt if everything allows it. */
static bool maybe_retry(weft_call *k, bool sent)
{
    svc *s = k->s;
    weft_client *c = s->c;
    if (k->attempts >= c->o.attempts || k->ntried >= MAX_TRIED || (sent && !k->idempotent))
        return false;
    uint64_t backoff;
    enum weft_retry_verdict v =
        weft_retry_admit(&c->rng, &s->budget, k->attempts, c->o.backoff_base_ms,
                         c->o.backoff_max_ms, weft_loop_now_ms(c->loop), 0, k->deadline_ms, &backoff);
    if (v == WEFT_RETRY_BUDGET)
        weft_metric_inc(c->m, s->m_budget);
    if (v != WEFT_RETRY_GO)
        return false;
    weft_metric_inc(c->m, s->m_retries);
    weft_timer_start(c->loop, &k->timer, backoff);
    return true;
}

static void on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    weft_call *k = ud;
    k->status = resp->status;
    k->ctype[0] = '\0';
    for (size_t i = 0; i < resp->nheaders; i++)
        if (weft_str_ieq(resp->names[i], WEFT_STR("Content-Type")) &&
            resp->values[i].n < sizeof k->ctype) {
            memcpy(k->ctype, resp->values[i].p, resp->values[i].n);
            k->ctype[resp->values[i].n] = '\0';
        }
    (void)q;
}

static void on_body(weft_http_creq *q, weft_str data, void *ud)
{
    weft_call *k = ud;
    if (weft_buf_append(&k->resp, data.p, data.n) < 0) {
        k->q = NULL;
        weft_http_creq_cancel(q);
        weft_lb_on_done(k->set->lb, k->idx, 0, weft_loop_now_us(k->s->c->loop));
        finish(k, WEFT_ETOOBIG);
    }
}

static void on_done(weft_http_creq *q, int err, void *ud)
{
    weft_call *k = ud;
    weft_client *c = k->s->c;
    bool sent = weft_http_creq_connected(q);
    k->q = NULL;
    uint64_t now_us = weft_loop_now_us(c->loop);
    weft_lb_on_done(k->set->lb, k->idx, now_us - k->try_us, now_us);
    weft_outlier_record(&c->o.outlier, k->set->out, k->set->n, (size_t)k->idx,
                        outcome_of(err, k->status), now_us / 1000);
    bool retriable = err ? err != WEFT_ETOOBIG && err != WEFT_ECANCELED
                         : k->status == 502 || k->status == 503 || k->status == 504;
    if (retriable && maybe_retry(k, sent || !err))
        return;
    finish(k, err);
}

static void attempt(weft_call *k)
{
    svc *s = k->s;
    weft_client *c = s->c;
    uint64_t now_us = weft_loop_now_us(c->loop), now_ms = now_us / 1000;
    if (now_ms >= k->deadline_ms) {
        finish(k, WEFT_ETIMEDOUT);
        return;
    }
    cset *set = s->set;
    if (!set || set->n == 0) {
        finish(k, WEFT_ENOHOST);
        return;
    }
    if (k->set != set) { /* a new generation: earlier picks do not apply to it */
        cset_unref(k->set);
        k->set = set;
        set->refs++;
        k->ntried = 0;
    }
    weft_outlier_tick(set->out, set->n, now_ms);
    weft_lb_endpoint *le = weft_lb_endpoints(set->lb);
    for (size_t i = 0; i < set->n; i++)
        le[i].healthy = !weft_outlier_ejected(&set->out[i], now_ms);
    int idx = weft_lb_pick(set->lb, k->hash, k->tried, k->ntried, &c->rng);
    if (idx < 0) {
        finish(k, WEFT_ENOHOST);
        return;
    }
    k->idx = idx;
    k->tried[k->ntried++] = idx;
    k->attempts++;
    k->try_us = now_us;
    weft_buf_clear(&k->resp);
    weft_lb_on_start(set->lb, idx);
    uint64_t left = k->deadline_ms - now_ms;
    uint32_t per_try = c->o.try_timeout_ms && c->o.try_timeout_ms < left ? c->o.try_timeout_ms
                                                                         : (uint32_t)left;
    /* the deadline line goes after the fixed part, in the room
     * build_headers left for it: the block is sent whole, however large */
    size_t hn = k->hdrs_len;
    if (c->deadline_header[0]) {
        int n = snprintf(k->hdrs + hn, k->hdrs_room, "%s: %llu\r\n", c->deadline_header,
                         (unsigned long long)left);
        hn += n > 0 && (size_t)n < k->hdrs_room ? (size_t)n : 0;
    }
    const cep *e = &set->eps[idx];
    weft_http_creq_opts o = {
        .method = k->method,
        .host = e->host,
        .port = e->port,
        .target = k->target,
        .raw_headers = {k->hdrs, hn},
        .body = k->body,
        .body_len = k->body_len,
        .timeout_ms = per_try,
        /* the HTTP client resends a request lost on a stale pooled
         * connection, but the server may have run it: not a POST */
        .no_replay = !k->idempotent,
        .on_response = on_response,
        .on_body = on_body,
        .on_done = on_done,
        .ud = k,
    };
    if (weft_http_client_request(c->http, &o, &k->q) < 0) {
        k->q = NULL;
        weft_lb_on_done(set->lb, idx, 0, now_us);
        if (!maybe_retry(k, false))
            finish_later(k, WEFT_ENOMEM);
    }
}

/* ---- services ---- */

static void start_waiting(svc *s, int err)
{
    for (weft_call *k = s->calls; k; k = k->next)
        if (k->waiting) {
            k->waiting = false;
            if (err)
                finish_later(k, err);
            else
                weft_timer_start(s->c->loop, &k->timer, 0);
        }
}

static void svc_update(void *ud, const regwatch_ep *eps, size_t n, uint64_t revision)
{
    svc *s = ud;
    (void)revision;
    if (n == 0) {
        /* No instance left. A balancer cannot be built over nothing, so the
         * generation goes away (calls holding it keep their reference);
         * keeping it would send calls to instances that have left. */
        if (s->set)
            weft_log(WEFT_LOG_DEBUG, "client endpoints updated", WEFT_KV_STR("service", s->name),
                     WEFT_KV_UINT("endpoints", 0));
        cset_unref(s->set);
        s->set = NULL;
    } else if (!cset_same(s->set, eps, n)) {
        cset *ns = cset_build(s->c, s->set, eps, n);
        if (ns) {
            cset_unref(s->set);
            s->set = ns;
            weft_log(WEFT_LOG_DEBUG, "client endpoints updated", WEFT_KV_STR("service", s->name),
                     WEFT_KV_UINT("endpoints", n));
        }
    }
    if (!s->known) {
        s->known = true;
        start_waiting(s, 0);
    }
}

static void svc_error(void *ud, const char *why, bool first)
{
    svc *s = ud;
    if (first)
        weft_log(WEFT_LOG_WARN, "registry unreachable; keeping the last instances",
                 WEFT_KV_STR("service", s->name), WEFT_KV_STR("error", why));
    if (!s->known) { /* nothing to keep: calls waiting for a first list fail */
        s->known = true;
        start_waiting(s, WEFT_ENOHOST);
    }
}

static void svc_metrics(weft_client *c, svc *s)
{
    char l[300];
    const char *h = "Calls made through the service client, by result.";
#define RES(field, res)                                                                          \
    snprintf(l, sizeof l, "service=\"%s\",result=\"" res "\"", s->name);                        \
    weft_metrics_counter(c->m, "weft_client_calls_total", h, l, &s->field)
    RES(m_ok, "ok");
    RES(m_err, "error");
    RES(m_circuit, "circuit_open");
    RES(m_nohost, "no_instance");
    RES(m_timeout, "timeout");
#undef RES
    snprintf(l, sizeof l, "service=\"%s\"", s->name);
    weft_metrics_counter(c->m, "weft_client_retries_total", "Retries made by the service client.",
                         l, &s->m_retries);
    weft_metrics_counter(c->m, "weft_client_retry_budget_exhausted_total",
                         "Retries refused by the retry budget.", l, &s->m_budget);
    weft_metrics_histogram(c->m, "weft_client_call_duration_seconds",
                           "Duration of calls, retries included.", l, weft_latency_buckets,
                           weft_latency_nbuckets, &s->m_dur);
    weft_metrics_gauge(c->m, "weft_client_circuit_open",
                       "Workers whose circuit breaker for the service is open.", l, &s->m_open);
}

static svc *svc_get(weft_client *c, const char *name)
{
    for (svc *s = c->svcs; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    svc *s = calloc(1, sizeof *s);
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return NULL;
    }
    s->c = c;
    weft_breaker_init(&s->br, &c->o.breaker);
    weft_retry_budget_init(&s->budget, c->o.budget_percent, c->o.budget_min_per_sec, 10000);
    svc_metrics(c, s);
    regwatch_cbs cbs = {.on_update = svc_update, .on_error = svc_error, .ud = s};
    s->w = regwatch_start(c->loop, c->reg_host, c->reg_port, name, c->zone, &cbs);
    if (!s->w) {
        free(s->name);
        free(s);
        return NULL;
    }
    s->next = c->svcs;
    c->svcs = s;
    return s;
}

static bool idempotent_method(const char *m)
{
    static const char *const ok[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(ok); i++)
        if (strcmp(m, ok[i]) == 0)
            return true;
    return false;
}

/* Parent's remaining time, from the deadline header it arrived with. */
static uint64_t parent_deadline_ms(weft_client *c, weft_http_req *p)
{
    if (!c->deadline_header[0])
        return UINT64_MAX;
    weft_str v = weft_http_req_header(p, weft_str_from(c->deadline_header));
    if (!v.n || v.n > 12)
        return UINT64_MAX;
    uint64_t ms = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return UINT64_MAX;
        ms = ms * 10 + (uint64_t)(v.p[i] - '0');
    }
    return weft_http_req_start_us(p) / 1000 + ms;
}

static int build_headers(weft_call *k, const weft_call_opts *o)
{
    weft_buf b;
    weft_buf_init(&b, 64 * 1024);
    int rc = 0;
    char line[512];
    snprintf(line, sizeof line, "Host: %s\r\n", o->service);
    rc |= weft_buf_append(&b, line, strlen(line));
    if (o->parent) {
        weft_str id = weft_http_req_id(o->parent);
        rc |= weft_buf_append(&b, "X-Request-Id: ", 14);
        rc |= weft_buf_append(&b, id.p, id.n);
        rc |= weft_buf_append(&b, "\r\n", 2);
    }
    if (o->body_len) {
        const char *ct = o->content_type ? o->content_type : "application/json";
        if (strpbrk(ct, "\r\n"))
            rc = WEFT_EINVAL;
        /* appended, not formatted into `line`: a long type would lose its CRLF
         * and swallow the next header */
        rc |= weft_buf_append(&b, "Content-Type: ", 14);
        rc |= weft_buf_append(&b, ct, strlen(ct));
        rc |= weft_buf_append(&b, "\r\n", 2);
    }
    for (const char *const *h = o->headers; h && *h && rc == 0; h++) {
        if (strpbrk(*h, "\r\n") || !strchr(*h, ':'))
            rc = WEFT_EINVAL;
        rc |= weft_buf_append(&b, *h, strlen(*h));
        rc |= weft_buf_append(&b, "\r\n", 2);
    }
    /* "Name: 18446744073709551615\r\n" and a NUL, written by each attempt */
    size_t room = strlen(k->s->c->deadline_header) + 2 + 20 + 2 + 1;
    if (rc == 0 && (k->hdrs = malloc(weft_buf_used(&b) + room))) {
        k->hdrs_len = weft_buf_used(&b);
        k->hdrs_room = room;
        memcpy(k->hdrs, weft_buf_rptr(&b), k->hdrs_len);
    } else if (rc == 0) {
        rc = WEFT_ENOMEM;
    }
    weft_buf_release(&b);
    return rc < 0 ? (rc == WEFT_EINVAL ? rc : WEFT_ENOMEM) : 0;
}

int weft_client_call(weft_client *c, const weft_call_opts *o, weft_call_cb cb, void *ud,
                     weft_call **out)
{
    /* service names follow the registry's rule */
    if (!c || !o || !cb || !o->service || !weft_name_ok(weft_str_from(o->service), 200) ||
        !o->path || o->path[0] != '/' || strpbrk(o->path, " \r\n"))
        return WEFT_EINVAL;
    const char *method = o->method ? o->method : "GET";
    if (strpbrk(method, " \r\n:") || !method[0])
        return WEFT_EINVAL;
    svc *s = svc_get(c, o->service);
    if (!s)
        return WEFT_ENOMEM;
    weft_call *k = calloc(1, sizeof *k);
    if (!k)
        return WEFT_ENOMEM;
    k->s = s;
    k->cb = cb;
    k->ud = ud;
    k->method = strdup(method);
    k->target = strdup(o->path);
    if (o->body_len && (k->body = malloc(o->body_len)))
        memcpy(k->body, o->body, o->body_len);
    int rc = build_headers(k, o);
    if (rc < 0 || !k->method || !k->target || (o->body_len && !k->body)) {
        free(k->hdrs);
        free(k->method);
        free(k->target);
        free(k->body);
        free(k);
        return rc < 0 ? rc : WEFT_ENOMEM;
    }
    k->body_len = o->body_len;
    k->idempotent = o->retry_non_idempotent || idempotent_method(method);
    k->hash = o->hash_key ? weft_hash64(o->hash_key, strlen(o->hash_key), 0) : 0;
    weft_buf_init(&k->resp, c->o.max_response);
    weft_timer_init(&k->timer, timer_cb, k);
    weft_timer_init(&k->dtimer, deadline_cb, k);
    k->start_us = weft_loop_now_us(c->loop);
    uint64_t now_ms = k->start_us / 1000;
    uint32_t tmo = o->timeout_ms ? o->timeout_ms : c->o.timeout_ms;
    k->deadline_ms = now_ms + tmo;
    if (o->parent) {
        uint64_t pd = parent_deadline_ms(c, o->parent);
        if (pd < k->deadline_ms)
            k->deadline_ms = pd > now_ms ? pd : now_ms;
        k->parent = o->parent;
        k->hook.cb = parent_gone;
        weft_http_req_hook_add(o->parent, &k->hook);
    }
    k->next = s->calls;
    if (s->calls)
        s->calls->prev = k;
    s->calls = k;
    weft_retry_budget_deposit(&s->budget, now_ms);
    if (out)
        *out = k;
    if (!weft_breaker_allow(&s->br, now_ms)) {
        finish_later(k, WEFT_ECIRCUIT);
        return 0;
    }
    k->admitted = true;
    weft_timer_start(c->loop, &k->dtimer, k->deadline_ms - now_ms);
    if (s->known)
        weft_timer_start(c->loop, &k->timer, 0);
    else
        k->waiting = true; /* the first list is on its way */
    return 0;
}

void weft_call_cancel(weft_call *k)
{
    if (k)
        call_free(k);
}

size_t weft_client_endpoints(weft_client *c, const char *service, char *buf, size_t len)
{
    size_t n = 0, off = 0;
    if (len)
        buf[0] = '\0';
    for (svc *s = c->svcs; s; s = s->next) {
        if (strcmp(s->name, service) != 0 || !s->set)
            continue;
        for (size_t i = 0; i < s->set->n; i++, n++)
            if (off < len) {
                int w = snprintf(buf + off, len - off, "%s%s", i ? "," : "", s->set->eps[i].id);
                off += w > 0 ? (size_t)w : 0;
            }
    }
    return n;
}

weft_client *weft_client_new(weft_loop *loop, const weft_client_opts *o)
{
    weft_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->o = *o;
    c->m = weft_metrics_global();
    if (c->o.attempts == 0)
        c->o.attempts = 1;
    if (regwatch_parse_url(o->registry, &c->reg_host, &c->reg_port) < 0) {
        weft_log(WEFT_LOG_ERROR, "client: bad registry URL (expected http://HOST:PORT)",
                 WEFT_KV_STR("registry", o->registry ? o->registry : ""));
        goto fail;
    }
    c->zone = o->zone && *o->zone ? strdup(o->zone) : NULL;
    c->deadline_header = strdup(o->deadline_header ? o->deadline_header : "");
    c->o.registry = c->o.zone = c->o.deadline_header = NULL; /* not kept: ours are above */
    weft_http_client_opts ho;
    weft_http_client_opts_default(&ho);
    ho.connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 1000;
    c->http = weft_http_client_new(loop, &ho);
    if (!c->deadline_header || (o->zone && *o->zone && !c->zone) || !c->http)
        goto fail;
    weft_rng_seed(&c->rng, weft_now_us() ^ (uint64_t)(uintptr_t)c);
    return c;
fail:
    weft_client_free(c);
    return NULL;
}

void weft_client_free(weft_client *c)
{
    if (!c)
        return;
    while (c->svcs) {
        svc *s = c->svcs;
        c->svcs = s->next;
        while (s->calls)
            call_free(s->calls);
        regwatch_stop(s->w);
        cset_unref(s->set);
        free(s->name);
        free(s);
    }
    weft_http_client_free(c->http);
    free(c->reg_host);
    free(c->zone);
    free(c->deadline_header);
    free(c);
}
