/*
 * api.c — the registry's native HTTP/JSON API on top of store.c.
 *
 * The registry's state lives on one event loop (one worker): registrations
 * and heartbeats are cheap in-memory updates, and a single owner needs no
 * locks. Watchers are served from the same loop:
 *
 * - Blocking queries (Consul semantics): GET /v1/services/NAME?index=N&wait=D
 *   answers at once if the service's revision is past N, otherwise parks
 *   the request until the service changes or D (default 5 min, max 10 min,
 *   plus up to D/16 jitter) passes. X-Weft-Index carries the revision.
 * - Streaming watch: GET /v1/watch?since=N[&service=NAME] is a server-sent
 *   event stream of every change after N, in order, each with its revision
 *   as the SSE id, so a client resumes with since=<last id>. A watcher that
 *   falls behind is paced by its socket (the stream stops, then resumes on
 *   drain); if the history it needs was overwritten it gets an explicit
 *   "relist" event (or 410 before the stream starts) — never a silent gap.
 *   A Last-Event-ID header (an EventSource reconnecting) wins over since.
 *
 * A sweep every 100 ms expires leases (with self-preservation, store.c)
 * and starts the active checks that are due (see "active checks" below).
 *
 * The Consul (/v1/agent|catalog|health, consul.c) and Eureka (/eureka/v2/
 * and /eureka/, eureka.c) subsets are translations routed from here onto
 * the same handlers, so every API sees and changes one store.
 */
#include "registry.h"

#include "consul.h"
#include "dns.h"
#include "etcd.h"
#include "eureka.h"
#include "persist.h"
#include "store.h"
#include "weft/log.h"
#include "weft/metrics.h"
#include "weft/service.h" /* weft_json_respond */
#include "weft/sse.h"

#include "http/http_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_MS 100
#define PING_MS 15000
#define MAX_WAIT_MS (10 * 60 * 1000)
#define DEFAULT_WAIT_MS (5 * 60 * 1000)

typedef struct waiter {
    struct waiter *next, *prev;
    reg_server *rs;
    weft_http_req *r;
    char *service; /* NULL: waits on the service list (global revision) */
    uint64_t index;
    bool healthy_only;
    int view; /* REG_CONSUL_*: answer in Consul's format; 0: native */
    char *tag, *zone;
    weft_timer timer;
} waiter;

typedef struct watcher {
    struct watcher *next, *prev;
    reg_server *rs;
    char *service; /* NULL = all */
    uint64_t cursor;
    weft_sse sse;
} watcher;

typedef struct session {
    struct session *next, *prev;
    reg_server *rs;
    weft_sse sse;
    char *service, *id;
    uint64_t next_keepalive_ms; /* etcd store: when to renew the lease next */
} session;

typedef struct pending {
    struct pending *next, *prev;
    reg_server *rs;
    weft_http_req *r;
    int status;
    char *body;
    uint64_t index;
} pending;

typedef struct probe {
    struct probe *next, *prev;
    struct reg_server *rs;
    uint64_t id;
    char *service, *inst;
    uint64_t deadline_ms;
    weft_http_creq *q; /* HTTP check */
    bool resp_ok;
    int fd; /* TCP check */
    weft_io io;
} probe;

struct reg_server {
    reg_store *store;
    reg_persist *persist; /* NULL without --data */
    reg_etcd_url etcd_url;
    bool use_etcd;
    reg_etcd *etcd; /* with --store etcd://: the state is in etcd, the store mirrors it */
    const char *data_dir;
    const char *dns_addr;
    reg_dns_server *dns;
    weft_timer commit_timer; /* group commit at the end of each loop iteration */
    pending *pend;            /* answers waiting for their changes to be durable */
    bool notify_after_commit;
    weft_loop *loop;
    bool draining; /* answer blocking queries at once, open no new streams */
    weft_timer sweep;
    weft_timer ping;
    waiter *waiters;
    watcher *watchers;
    session *sessions; /* connection-bound leases */
    probe *probes;     /* active checks in flight */
    uint64_t probe_seq;
    weft_http_client *hc;
    size_t nwaiters, nwatchers;
    weft_metrics *m;
    weft_metric m_regs, m_deregs, m_beats, m_expired, m_instances, m_rev, m_preserve,
        m_watchers, m_waiters, m_check_pass, m_check_fail;
    uint64_t rng;
};

static const weft_str JSON = {"application/json", 16};

static uint64_t now_ms(reg_server *rs) { return weft_loop_now_ms(rs->loop); }

static void respond_err(weft_http_req *r, int status, const char *msg)
{
    weft_json_respond(r, status, json_pack("{s:s, s:i}", "error", msg, "status", status));
}

/* Who is asking: answers to the native and Consul APIs are JSON; Eureka
 * clients get Eureka's shapes (see fail()). */
enum dialect { NATIVE = 0, EUREKA = 1 };

/* An error in the caller's dialect. Eureka answers 404 with no body (its
 * clients decode any body of a heartbeat answer as an InstanceInfo, and
 * re-register on a plain 404) and other errors as a text message. */
static void fail(weft_http_req *r, int dialect, int status, const char *msg)
{
    if (dialect == NATIVE)
        respond_err(r, status, msg);
    else if (status == 404)
        weft_http_respond(r, 404, WEFT_STR_NULL, NULL, 0);
    else
        weft_http_respond(r, status, WEFT_STR("text/plain; charset=utf-8"), msg, strlen(msg));
}

static void set_index(weft_http_req *r, uint64_t idx)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)idx);
    weft_http_resp_header(r, WEFT_STR("X-Weft-Index"), (weft_str){b, (size_t)n});
}

/* Query parameter as a NUL-terminated copy in the request arena (NULL if absent). */
static char *qparam(weft_http_req *r, const char *name)
{
    weft_str v;
    if (!weft_http_req_query_param(r, name, &v))
        return NULL;
    char *s = weft_http_req_alloc(r, v.n + 1);
    if (s) {
        memcpy(s, v.p, v.n);
        s[v.n] = '\0';
    }
    return s;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s)
        return false;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return true;
}

/* "30s", "500ms", "2m", or seconds as a bare number. Zero means the
 * default, as in Consul (a blocking query always blocks: wait=0 answering
 * at once would turn a watch loop into a busy poll); anything above zero
 * waits at least 1 ms. */
static bool parse_wait(const char *s, uint64_t *ms)
{
    double secs;
    if (!reg_duration_text(s, true, &secs))
        return false;
    *ms = secs <= 0 ? DEFAULT_WAIT_MS : secs < 0.001 ? 1 : (uint64_t)(secs * 1000);
    return true;
}

/* ---- listing ---- */

static json_t *instances_json(reg_server *rs, const char *service, bool healthy_only,
                              const char *tag, const char *zone)
{
    const reg_instance **v;
    size_t n = reg_instances(rs->store, service, &v);
    uint64_t now = now_ms(rs);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const reg_instance *in = v[i];
        if (healthy_only && !reg_instance_healthy(in, now))
            continue;
        if (zone && (!in->zone || strcmp(in->zone, zone) != 0))
            continue;
        if (tag) {
            bool has = false;
            for (size_t k = 0; k < in->ntags && !has; k++)
                has = strcmp(in->tags[k], tag) == 0;
            if (!has)
                continue;
        }
        json_array_append_new(arr, reg_instance_json(in, now));
    }
    return arr;
}

static void answer_service(reg_server *rs, weft_http_req *r, const char *service,
                           bool healthy_only, const char *tag, const char *zone)
{
    uint64_t rev = reg_service_revision(rs->store, service);
    set_index(r, rev);
    weft_json_respond(r, 200,
                 json_pack("{s:s, s:I, s:o}", "service", service, "revision", (json_int_t)rev,
                           "instances", instances_json(rs, service, healthy_only, tag, zone)));
}

static void answer_services(reg_server *rs, weft_http_req *r)
{
    json_t *svcs = json_object();
    uint64_t now = now_ms(rs);
    for (size_t i = 0; i < reg_service_count(rs->store); i++) {
        size_t n;
        const char *name = reg_service_at(rs->store, i, &n);
        if (n == 0)
            continue; /* a service is listed while it has instances */
        const reg_instance **v;
        reg_instances(rs->store, name, &v);
        size_t healthy = 0;
        for (size_t k = 0; k < n; k++)
            healthy += reg_instance_healthy(v[k], now);
        json_object_set_new(svcs, name,
                            json_pack("{s:I, s:I, s:I}", "instances", (json_int_t)n, "healthy",
                                      (json_int_t)healthy, "revision",
                                      (json_int_t)reg_service_revision(rs->store, name)));
    }
    uint64_t rev = reg_revision(rs->store);
    set_index(r, rev);
    weft_json_respond(r, 200, json_pack("{s:I, s:o, s:b}", "revision", (json_int_t)rev, "services",
                                   svcs, "self_preservation",
                                   reg_self_preservation(rs->store)));
}

static void answer_consul(reg_server *rs, weft_http_req *r, int view, const char *service,
                          bool passing, const char *tag)
{
    uint64_t rev = service ? reg_service_revision(rs->store, service) : reg_revision(rs->store);
    char v[24];
    int n = snprintf(v, sizeof v, "%llu", (unsigned long long)(rev ? rev : 1));
    weft_http_resp_header(r, WEFT_STR("X-Consul-Index"), (weft_str){v, (size_t)n});
    weft_http_resp_header(r, WEFT_STR("X-Consul-KnownLeader"), WEFT_STR("true"));
    weft_http_resp_header(r, WEFT_STR("X-Consul-LastContact"), WEFT_STR("0"));
    weft_json_respond(r, 200, reg_consul_view(rs->store, view, service, passing, tag, now_ms(rs)));
}

/* ---- blocking queries ---- */

static void waiter_free(waiter *w)
{
    reg_server *rs = w->rs;
    weft_timer_stop(rs->loop, &w->timer);
    if (w->prev)
        w->prev->next = w->next;
    else
        rs->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    rs->nwaiters--;
    weft_metric_gauge_add(rs->m, rs->m_waiters, -1);
    free(w->service);
    free(w->tag);
    free(w->zone);
    free(w);
}

static void waiter_answer(waiter *w)
{
    reg_server *rs = w->rs;
    weft_http_req *r = w->r;
    weft_http_req_on_abort(r, NULL, NULL);
    if (w->view)
        answer_consul(rs, r, w->view, w->service, w->healthy_only, w->tag);
    else if (w->service)
        answer_service(rs, r, w->service, w->healthy_only, w->tag, w->zone);
    else
        answer_services(rs, r);
    waiter_free(w);
}

static void waiter_timeout(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    waiter_answer(t->data); /* no change: the same answer, as Consul does */
}

static void waiter_abort(weft_http_req *r, void *ud)
{
    (void)r;
    waiter_free(ud);
}

static char *dup_opt(const char *s) { return s ? strdup(s) : NULL; }

static bool park(reg_server *rs, weft_http_req *r, const char *service, uint64_t index,
                 bool healthy_only, const char *tag, const char *zone, int view)
{
    uint64_t current = service ? reg_service_revision(rs->store, service) : reg_revision(rs->store);
    if (index == 0 || current > index || rs->draining)
        return false;
    uint64_t wait = DEFAULT_WAIT_MS;
    char *ws = qparam(r, "wait");
    if (ws && !parse_wait(ws, &wait)) {
        respond_err(r, 400, "wait: expected a duration like 30s or 500ms");
        return true;
    }
    if (wait > MAX_WAIT_MS)
        wait = MAX_WAIT_MS;
    /* Consul-style jitter (up to wait/16) so parked clients do not return together */
    rs->rng = rs->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    if (wait >= 16)
        wait += (rs->rng >> 33) % (wait / 16 + 1);
    waiter *w = calloc(1, sizeof *w);
    if (!w) {
        respond_err(r, 503, "out of memory");
        return true;
    }
    w->rs = rs;
    w->r = r;
    w->service = dup_opt(service);
    w->index = index;
    w->healthy_only = healthy_only;
    w->view = view;
    w->tag = dup_opt(tag);
    w->zone = dup_opt(zone);
    w->next = rs->waiters;
    if (rs->waiters)
        rs->waiters->prev = w;
    rs->waiters = w;
    rs->nwaiters++;
    weft_metric_gauge_add(rs->m, rs->m_waiters, 1);
    weft_timer_init(&w->timer, waiter_timeout, w);
    weft_timer_start(rs->loop, &w->timer, wait);
    weft_http_req_on_abort(r, waiter_abort, w);
    weft_http_req_close_on_eof(r);
    return true;
}

/* ---- streaming watch ---- */

static void watcher_free(watcher *w)
{
    reg_server *rs = w->rs;
    if (w->prev)
        w->prev->next = w->next;
    else
        rs->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    rs->nwatchers--;
    weft_metric_gauge_add(rs->m, rs->m_watchers, -1);
    free(w->service);
    free(w);
}

static void watcher_end(watcher *w)
{
    weft_sse_end(&w->sse);
    watcher_free(w);
}

/* Send every retained change after the cursor until the socket pushes back. */
static void watcher_pump(watcher *w)
{
    reg_server *rs = w->rs;
    for (;;) {
        const reg_event *ev[64];
        int64_t n = reg_changes(rs->store, w->cursor, ev, 64);
        if (n == WEFT_ETOOBIG) {
            char data[48];
            int k = snprintf(data, sizeof data, "{\"revision\":%llu}",
                             (unsigned long long)reg_revision(rs->store));
            weft_sse_event(&w->sse, WEFT_SSE_NO_ID, WEFT_STR("relist"),
                           (weft_str){data, (size_t)k});
            watcher_end(w);
            return;
        }
        if (n <= 0)
            return;
        for (int64_t i = 0; i < n; i++) {
            const reg_event *e = ev[i];
            w->cursor = e->rev;
            if (w->service && strcmp(w->service, e->service) != 0)
                continue;
            int rc = weft_sse_event(&w->sse, e->rev,
                                    e->kind == REG_EV_PUT ? WEFT_STR("put") : WEFT_STR("delete"),
                                    weft_str_from(e->json ? e->json : "{}"));
            if (rc == WEFT_ECLOSED)
                return; /* on_abort frees the watcher */
            if (rc < 0) {
                watcher_end(w); /* the client resumes after its last id: no gap */
                return;
            }
            if (rc == 1)
                return; /* paused: resumed by on_drain */
        }
    }
}

static void watcher_drain(weft_http_req *r, void *ud)
{
    (void)r;
    watcher_pump(ud);
}

static void watcher_abort(weft_http_req *r, void *ud)
{
    (void)r;
    watcher_free(ud);
}

static void h_watch(reg_server *rs, weft_http_req *r)
{
    if (rs->draining) {
        respond_err(r, 503, "draining");
        return;
    }
    uint64_t since = reg_revision(rs->store);
    char *s = qparam(r, "since");
    if (s && !parse_u64(s, &since)) {
        respond_err(r, 400, "since: expected a revision number");
        return;
    }
    /* an EventSource reconnecting sends the last id it got: resume there */
    weft_str lei = weft_http_req_header(r, WEFT_STR("Last-Event-ID"));
    if (lei.p && lei.n) {
        char *l = weft_http_req_alloc(r, lei.n + 1);
        if (!l) {
            respond_err(r, 503, "out of memory");
            return;
        }
        memcpy(l, lei.p, lei.n);
        l[lei.n] = '\0';
        if (!parse_u64(l, &since)) {
            respond_err(r, 400, "Last-Event-ID: expected a revision number");
            return;
        }
    }
    char *svc = qparam(r, "service");
    const reg_event *first[1];
    if (reg_changes(rs->store, since, first, 1) == WEFT_ETOOBIG) {
        /* explicit: the history no longer reaches back that far */
        set_index(r, reg_revision(rs->store));
        weft_json_respond(r, 410, json_pack("{s:s, s:I, s:s}", "error", "relist", "revision",
                                       (json_int_t)reg_revision(rs->store), "detail",
                                       "the requested revision is no longer retained: list the "
                                       "services again and watch from the listed revision"));
        return;
    }
    watcher *w = calloc(1, sizeof *w);
    if (!w) {
        respond_err(r, 503, "out of memory");
        return;
    }
    w->rs = rs;
    w->service = dup_opt(svc);
    w->cursor = since;
    w->next = rs->watchers;
    if (rs->watchers)
        rs->watchers->prev = w;
    rs->watchers = w;
    rs->nwatchers++;
    weft_metric_gauge_add(rs->m, rs->m_watchers, 1);
    set_index(r, reg_revision(rs->store));
    if (weft_sse_start(&w->sse, r, watcher_drain, watcher_abort, w) < 0) {
        watcher_free(w);
        return;
    }
    weft_sse_comment(&w->sse, WEFT_STR("weft registry watch"));
    watcher_pump(w);
}

static void ping_watchers(weft_loop *loop, weft_timer *t)
{
    reg_server *rs = t->data;
    for (watcher *w = rs->watchers, *next; w; w = next) {
        next = w->next; /* a write may end w (its on_drain can relist) */
        weft_sse_ping(&w->sse);
    }
    for (session *se = rs->sessions, *next; se; se = next) {
        next = se->next;
        weft_sse_ping(&se->sse);
    }
    weft_timer_start(loop, t, PING_MS);
}

/* ---- change notification ---- */

static void notify(reg_server *rs)
{
    for (waiter *w = rs->waiters, *next; w; w = next) {
        next = w->next;
        uint64_t cur = w->service ? reg_service_revision(rs->store, w->service)
                                  : reg_revision(rs->store);
        if (cur > w->index)
            waiter_answer(w);
    }
    for (watcher *w = rs->watchers, *next; w; w = next) {
        next = w->next;
        if (!w->sse.paused)
            watcher_pump(w);
    }
    weft_metric_gauge_set(rs->m, rs->m_instances, (int64_t)reg_instance_total(rs->store));
    weft_metric_gauge_set(rs->m, rs->m_rev, (int64_t)reg_revision(rs->store));
    weft_metric_gauge_set(rs->m, rs->m_preserve, reg_self_preservation(rs->store));
}

static void schedule_commit(reg_server *rs);
static void etcd_keep_sessions(reg_server *rs);

/* ---- active checks ----
 *
 * Each instance registered with a "check" is probed every interval: an
 * HTTP GET (2xx passes; pooled keep-alive connections through the loop's
 * client) or a TCP connect. `failures` consecutive failed probes make the
 * check critical and the instance unhealthy; `successes` consecutive passes
 * make it passing again. Only flips are changes: they bump the revision,
 * wake watchers and are journaled; steady results cost nothing else.
 *
 * A probe is identified by a sequence number stored in the check; a probe
 * whose instance was deregistered or re-registered with another check
 * meanwhile finds a different number (or none) and is discarded. Deadlines
 * are enforced by the 100 ms sweep, so a check's timeout is rounded up to
 * the next sweep. Probes start with a random offset within the first
 * interval so that many checks registered together do not fire together.
 */
static void probe_free(probe *p)
{
    reg_server *rs = p->rs;
    if (p->q)
        weft_http_creq_cancel(p->q);
    if (p->fd >= 0) {
        weft_io_stop(rs->loop, &p->io);
        close(p->fd);
    }
    if (p->prev)
        p->prev->next = p->next;
    else
        rs->probes = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p->service);
    free(p->inst);
    free(p);
}

static void probe_verdict(probe *p, bool ok)
{
    reg_server *rs = p->rs;
    uint64_t now = now_ms(rs);
    weft_metric_inc(rs->m, ok ? rs->m_check_pass : rs->m_check_fail);
    reg_instance *in = reg_find_mut(rs->store, p->service, p->inst);
    if (in && in->check && in->check->probe_id == p->id) {
        reg_check *c = in->check;
        c->probe_id = 0;
        c->next_ms = now + c->interval_ms;
        bool flip = false;
        if (ok) {
            c->fail_streak = 0;
            if (c->ok_streak < 255)
                c->ok_streak++;
            flip = !c->passing && c->ok_streak >= c->successes;
        } else {
            c->ok_streak = 0;
            if (c->fail_streak < 255)
                c->fail_streak++;
            flip = c->passing && c->fail_streak >= c->failures;
        }
        if (flip)
            c->critical_since_ms = ok ? 0 : now;
        if (flip && reg_set_check(rs->store, p->service, p->inst, ok, now) > 0) {
            weft_log(ok ? WEFT_LOG_INFO : WEFT_LOG_WARN,
                     ok ? "check passing" : "check critical",
                     WEFT_KV_STR("service", p->service), WEFT_KV_STR("id", p->inst));
            if (rs->persist) {
                reg_persist_put(rs->persist, reg_find_mut(rs->store, p->service, p->inst), now);
                schedule_commit(rs);
            }
            notify(rs);
        }
    }
    probe_free(p);
}

static void probe_http_resp(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    probe *p = ud;
    p->resp_ok = resp->status >= 200 && resp->status <= 299;
}

static void probe_http_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    probe *p = ud;
    p->q = NULL; /* finished: nothing to cancel */
    probe_verdict(p, err == 0 && p->resp_ok);
}

static void probe_tcp_ready(weft_loop *loop, weft_io *io, unsigned events)
{
    (void)loop;
    (void)events;
    probe *p = io->data;
    probe_verdict(p, weft_tcp_connect_result(p->fd) == 0);
}

/* Start a probe; false if it failed before it could start. */
static bool probe_start(reg_server *rs, probe *p, const reg_instance *in)
{
    const reg_check *c = in->check;
    char host[256];
    uint16_t port;
    const char *path;
    if (c->kind == REG_CHECK_HTTP) {
        if (reg_check_http_split(c->target, in->address, in->port, host, sizeof host, &port,
                                 &path) < 0)
            return false;
        weft_http_creq_opts o = {
            .method = "GET",
            .host = host,
            .port = port,
            .target = path,
            .timeout_ms = c->timeout_ms,
            .on_response = probe_http_resp,
            .on_done = probe_http_done,
            .ud = p,
        };
        return weft_http_client_request(rs->hc, &o, &p->q) == 0;
    }
    char spec[300];
    if (*c->target)
        snprintf(spec, sizeof spec, "%s", c->target);
    else
        weft_http_join_hostport(in->address, in->port, spec, sizeof spec);
    int fd = weft_tcp_connect_start(spec);
    if (fd < 0)
        return false;
    p->fd = fd;
    weft_io_init(&p->io, p->fd, probe_tcp_ready, p);
    return weft_io_start(rs->loop, &p->io, WEFT_IO_WRITE) == 0;
}

static void run_checks(reg_server *rs)
{
    uint64_t now = now_ms(rs);
    /* probes past their deadline have failed */
    for (probe *p = rs->probes, *n; p; p = n) {
        n = p->next;
        if (now >= p->deadline_ms)
            probe_verdict(p, false);
    }
    if (rs->draining || !rs->hc)
        return;
    size_t nsvc = reg_service_count(rs->store);
    for (size_t i = 0; i < nsvc; i++) {
        size_t ninst;
        const char *svc = reg_service_at(rs->store, i, &ninst);
        const reg_instance **insts;
        size_t n = reg_instances(rs->store, svc, &insts);
        for (size_t j = 0; j < n; j++) {
            reg_check *c = insts[j]->check;
            if (!c || c->probe_id)
                continue;
            if (!c->passing && !c->critical_since_ms)
                c->critical_since_ms = now; /* new, or restored critical */
            if (c->deregister_after_ms && !c->passing &&
                now - c->critical_since_ms >= c->deregister_after_ms) {
                /* Consul's deregister_critical_service_after: give up on it */
                char name[256], id[256];
                snprintf(name, sizeof name, "%s", svc);
                snprintf(id, sizeof id, "%s", insts[j]->id);
                weft_log(WEFT_LOG_WARN, "deregistering an instance critical for too long",
                         WEFT_KV_STR("service", name), WEFT_KV_STR("id", id));
                if (reg_delete(rs->store, name, id) >= 0) {
                    weft_metric_inc(rs->m, rs->m_deregs);
                    if (rs->persist) {
                        reg_persist_del(rs->persist, name, id);
                        schedule_commit(rs);
                    }
                    notify(rs);
                }
                svc = reg_service_at(rs->store, i, &ninst);
                n = reg_instances(rs->store, svc, &insts);
                j--; /* the array changed: look at this slot again */
                continue;
            }
            if (c->next_ms == 0) { /* new: first probe soon, spread over the interval */
                rs->rng = rs->rng * 6364136223846793005ULL + 1442695040888963407ULL;
                uint64_t spread = c->interval_ms < 1000 ? c->interval_ms : 1000;
                c->next_ms = now + (rs->rng >> 33) % (spread + 1);
            }
            if (now < c->next_ms)
                continue;
            probe *p = calloc(1, sizeof *p);
            if (!p)
                return;
            p->rs = rs;
            p->fd = -1;
            p->id = ++rs->probe_seq;
            p->deadline_ms = now + c->timeout_ms;
            p->service = strdup(svc);
            p->inst = strdup(insts[j]->id);
            p->next = rs->probes;
            if (rs->probes)
                rs->probes->prev = p;
            rs->probes = p;
            if (!p->service || !p->inst) {
                probe_free(p);
                return;
            }
            c->probe_id = p->id;
            if (!probe_start(rs, p, insts[j]))
                probe_verdict(p, false);
            /* verdicts may change the store: re-read this service's array */
            n = reg_instances(rs->store, svc, &insts);
        }
    }
}

static void sweep(weft_loop *loop, weft_timer *t)
{
    reg_server *rs = t->data;
    uint64_t before = reg_revision(rs->store);
    bool was = reg_self_preservation(rs->store);
    const reg_event *evs[256];
    if (rs->etcd) { /* etcd expires leases; open sessions keep theirs alive */
        etcd_keep_sessions(rs);
        weft_timer_start(loop, t, SWEEP_MS);
        return;
    }
    for (session *se = rs->sessions; se; se = se->next)
        reg_heartbeat(rs->store, se->service, se->id, weft_loop_now_ms(loop)); /* the open connection is the heartbeat */
    size_t removed = reg_sweep(rs->store, weft_loop_now_ms(loop));
    if (removed)
        weft_metric_add(rs->m, rs->m_expired, removed);
    if (rs->persist && reg_revision(rs->store) != before) {
        /* journal what the sweep changed (expiries, self-preservation holds) */
        uint64_t since = before;
        int64_t n;
        while ((n = reg_changes(rs->store, since, evs, 256)) > 0) {
            for (int64_t i = 0; i < n; i++) {
                if (evs[i]->kind == REG_EV_DELETE)
                    reg_persist_del(rs->persist, evs[i]->service, evs[i]->id);
                since = evs[i]->rev;
            }
        }
        if (n == WEFT_ETOOBIG) /* more changes than the history holds: write it all */
            reg_persist_resync(rs->persist);
        schedule_commit(rs);
    }
    bool is = reg_self_preservation(rs->store);
    if (was != is)
        weft_log(is ? WEFT_LOG_WARN : WEFT_LOG_INFO,
                 is ? "self-preservation on: too many leases expired at once, not evicting"
                    : "self-preservation off: evicting expired leases again");
    if (reg_revision(rs->store) != before || was != is)
        notify(rs);
    run_checks(rs);
    weft_timer_start(loop, t, SWEEP_MS);
}

/* ---- durability: answer mutations after their fdatasync ---- */

static void pending_abort(weft_http_req *r, void *ud)
{
    (void)r;
    pending *p = ud;
    reg_server *rs = p->rs;
    if (p->prev)
        p->prev->next = p->next;
    else
        rs->pend = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p->body);
    free(p);
}

static void commit_now(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_server *rs = t->data;
    int rc = rs->persist ? reg_persist_commit(rs->persist, now_ms(rs)) : 0;
    pending *p = rs->pend;
    rs->pend = NULL;
    while (p) {
        pending *next = p->next;
        weft_http_req_on_abort(p->r, NULL, NULL);
        if (rc < 0) {
            respond_err(p->r, 503, "storage error: the change may not be durable");
        } else {
            set_index(p->r, p->index);
            weft_http_respond(p->r, p->status, p->body ? JSON : WEFT_STR_NULL, p->body,
                              p->body ? strlen(p->body) : 0);
        }
        free(p->body);
        free(p);
        p = next;
    }
    if (rs->notify_after_commit) {
        rs->notify_after_commit = false;
        notify(rs);
    }
}

static void schedule_commit(reg_server *rs)
{
    if (!weft_timer_active(&rs->commit_timer))
        weft_timer_start(rs->loop, &rs->commit_timer, 0);
}

/* Answer a mutation: at once without persistence, else after the commit
 * that makes it durable (watchers are told after it too). o NULL: no body. */
static void answer_change(reg_server *rs, weft_http_req *r, int status, json_t *o, bool changed)
{
    if (!rs->persist) {
        set_index(r, reg_revision(rs->store));
        if (o)
            weft_json_respond(r, status, o);
        else
            weft_http_respond(r, status, WEFT_STR_NULL, NULL, 0);
        if (changed)
            notify(rs);
        return;
    }
    pending *p = calloc(1, sizeof *p);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    bool unrendered = o && !body;
    json_decref(o);
    if (!p || unrendered) {
        free(p);
        free(body);
        respond_err(r, 503, "out of memory");
        return;
    }
    p->rs = rs;
    p->r = r;
    p->status = status;
    p->body = body;
    p->index = reg_revision(rs->store);
    p->next = rs->pend;
    if (rs->pend)
        rs->pend->prev = p;
    rs->pend = p;
    weft_http_req_on_abort(r, pending_abort, p);
    if (changed)
        rs->notify_after_commit = true;
    schedule_commit(rs);
}

/* ---- connection-bound leases ---- */

static void session_unlink(session *se)
{
    reg_server *rs = se->rs;
    if (se->prev)
        se->prev->next = se->next;
    else
        rs->sessions = se->next;
    if (se->next)
        se->next->prev = se->prev;
    free(se->service);
    free(se->id);
    free(se);
}

/* The client's connection is gone: so is its instance (a crash is seen now,
 * not after a TTL). */
static void session_abort(weft_http_req *r, void *ud)
{
    (void)r;
    session *se = ud;
    reg_server *rs = se->rs;
    if (rs->etcd) {
        weft_log(WEFT_LOG_INFO, "session closed: deregistering the instance",
                 WEFT_KV_STR("service", se->service), WEFT_KV_STR("id", se->id));
        reg_etcd_deregister(rs->etcd, se->service, se->id, NULL, NULL);
        session_unlink(se);
        return;
    }
    int64_t rc = reg_delete(rs->store, se->service, se->id);
    if (rc > 0) {
        weft_metric_inc(rs->m, rs->m_deregs);
        weft_log(WEFT_LOG_INFO, "session closed: instance deregistered",
                 WEFT_KV_STR("service", se->service), WEFT_KV_STR("id", se->id));
        if (rs->persist) {
            reg_persist_del(rs->persist, se->service, se->id);
            rs->notify_after_commit = true;
            schedule_commit(rs);
        } else {
            notify(rs);
        }
    }
    session_unlink(se);
}

static void h_session(reg_server *rs, weft_http_req *r, const char *svc, const char *id)
{
    if (rs->draining) {
        respond_err(r, 503, "draining");
        return;
    }
    if (!reg_find(rs->store, svc, id)) {
        respond_err(r, 404, "no such instance: register it first");
        return;
    }
    for (session *se = rs->sessions; se; se = se->next)
        if (strcmp(se->service, svc) == 0 && strcmp(se->id, id) == 0) {
            respond_err(r, 409, "this instance already has a session");
            return;
        }
    session *se = calloc(1, sizeof *se);
    if (!se || !(se->service = strdup(svc)) || !(se->id = strdup(id))) {
        if (se)
            free(se->service);
        free(se);
        respond_err(r, 503, "out of memory");
        return;
    }
    se->rs = rs;
    se->next = rs->sessions;
    if (rs->sessions)
        rs->sessions->prev = se;
    rs->sessions = se;
    /* a closed client socket (EOF) is a gone client */
    if (weft_sse_start(&se->sse, r, NULL, session_abort, se) < 0) {
        session_unlink(se);
        return;
    }
    weft_sse_comment(&se->sse,
                     WEFT_STR("session open; closing this connection deregisters the instance"));
}

/* ---- the etcd store: mutations go to etcd (etcd.c), answered here ---- */

enum { EOP_REGISTER = 1, EOP_DEREGISTER, EOP_HEARTBEAT, EOP_STATUS };

typedef struct eop {
    reg_server *rs;
    weft_http_req *r; /* NULL once the client is gone */
    int kind;
} eop;

static void eop_abort(weft_http_req *r, void *ud)
{
    (void)r;
    ((eop *)ud)->r = NULL;
}

static eop *eop_new(reg_server *rs, weft_http_req *r, int kind)
{
    eop *o = calloc(1, sizeof *o);
    if (!o) {
        respond_err(r, 503, "out of memory");
        return NULL;
    }
    o->rs = rs;
    o->r = r;
    o->kind = kind;
    weft_http_req_on_abort(r, eop_abort, o);
    return o;
}

static void eop_done(void *ud, int rc, uint64_t rev, bool changed, uint64_t ttl_ms)
{
    eop *o = ud;
    weft_http_req *r = o->r;
    reg_server *rs = o->rs;
    int kind = o->kind;
    free(o);
    if (!r || rc == WEFT_ECANCELED)
        return; /* the client or the server is gone */
    weft_http_req_on_abort(r, NULL, NULL);
    if (rc == WEFT_ENOTFOUND) {
        respond_err(r, 404, kind == EOP_HEARTBEAT ? "no such instance: register again"
                                                  : "no such instance");
        return;
    }
    if (rc == WEFT_EAGAIN) {
        respond_err(r, 503, "concurrent updates of this instance: try again");
        return;
    }
    if (rc < 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "etcd unavailable: %s", weft_strerror(rc));
        respond_err(r, 503, msg);
        return;
    }
    if (kind != EOP_STATUS)
        weft_metric_inc(rs->m, kind == EOP_REGISTER     ? rs->m_regs
                               : kind == EOP_DEREGISTER ? rs->m_deregs
                                                        : rs->m_beats);
    if (kind == EOP_HEARTBEAT) {
        weft_json_respond(r, 200, json_pack("{s:I}", "ttl_ms", (json_int_t)ttl_ms));
        return;
    }
    set_index(r, rev);
    weft_json_respond(r, 200, kind == EOP_DEREGISTER
                             ? json_pack("{s:I}", "revision", (json_int_t)rev)
                             : json_pack("{s:I, s:b}", "revision", (json_int_t)rev, "changed",
                                         changed));
}

static void etcd_register(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                          json_t *j, const reg_input *in)
{
    if (in->check.kind != REG_CHECK_NONE) {
        respond_err(r, 400, "check: active checks are not supported with the etcd store "
                            "(--store etcd://): use a ttl and heartbeats, or a session");
        return;
    }
    eop *o = eop_new(rs, r, EOP_REGISTER);
    if (o)
        reg_etcd_register(rs->etcd, svc, id, j, in, eop_done, o);
}

/* Renew the leases of instances whose session is open, every third of
 * their TTL. */
static void etcd_keep_sessions(reg_server *rs)
{
    uint64_t now = now_ms(rs);
    for (session *se = rs->sessions; se; se = se->next) {
        const reg_instance *in = reg_find(rs->store, se->service, se->id);
        if (!in || !in->lease_id || now < se->next_keepalive_ms)
            continue;
        uint64_t every = in->ttl_ms / 3;
        se->next_keepalive_ms = now + (every > 500 ? every : 500);
        reg_etcd_heartbeat(rs->etcd, se->service, se->id, NULL, NULL);
    }
}

/* ---- handlers ---- */

static void register_json(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                          json_t *j, int dialect);

/* The request body as JSON (new reference), or NULL with a message. */
static json_t *load_body(weft_http_req *r, char *why, size_t whylen)
{
    weft_str body = weft_http_req_body(r);
    json_error_t je;
    json_t *j = json_loadb(body.p ? body.p : "", body.n, 0, &je);
    if (!j)
        snprintf(why, whylen, "invalid JSON at line %d column %d: %s", je.line, je.column,
                 je.text);
    return j;
}

static void h_register(reg_server *rs, weft_http_req *r, const char *svc, const char *id)
{
    char why[200];
    json_t *j = load_body(r, why, sizeof why);
    if (!j) {
        respond_err(r, 400, why);
        return;
    }
    register_json(rs, r, svc, id, j, NATIVE);
}

/* Register from a parsed native body (consumed). Eureka: 204, no body. */
static void register_json(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                          json_t *j, int dialect)
{
    reg_input in;
    char why[200];
    const char *tagv[64];
    if (reg_input_from_json(j, &in, why, sizeof why) < 0) {
        json_decref(j);
        fail(r, dialect, 400, why);
        return;
    }
    json_t *tags = json_object_get(j, "tags");
    for (size_t i = 0; i < in.ntags; i++)
        tagv[i] = json_string_value(json_array_get(tags, i));
    in.tags = tagv;
    if (rs->etcd) {
        etcd_register(rs, r, svc, id, j, &in);
        json_decref(j);
        return;
    }
    int64_t rc = reg_put(rs->store, svc, id, &in, now_ms(rs));
    json_decref(j);
    if (rc < 0) {
        fail(r, dialect, 503, "out of memory");
        return;
    }
    weft_metric_inc(rs->m, rs->m_regs);
    uint64_t rev = reg_revision(rs->store);
    if (rs->persist)
        reg_persist_put(rs->persist, reg_find_mut(rs->store, svc, id), now_ms(rs));
    if (dialect == EUREKA)
        answer_change(rs, r, 204, NULL, rc > 0);
    else
        answer_change(rs, r, 200,
                      json_pack("{s:I, s:b}", "revision", (json_int_t)rev, "changed", rc > 0),
                      rc > 0);
}

/* Eureka: 200, no body. */
static void deregister(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                       int dialect)
{
    if (rs->etcd) {
        eop *o = eop_new(rs, r, EOP_DEREGISTER);
        if (o)
            reg_etcd_deregister(rs->etcd, svc, id, eop_done, o);
        return;
    }
    int64_t rc = reg_delete(rs->store, svc, id);
    if (rc < 0) {
        fail(r, dialect, 404, "no such instance");
        return;
    }
    weft_metric_inc(rs->m, rs->m_deregs);
    if (rs->persist)
        reg_persist_del(rs->persist, svc, id);
    answer_change(rs, r, 200,
                  dialect == EUREKA ? NULL : json_pack("{s:I}", "revision", (json_int_t)rc),
                  true);
}

/* Eureka: 200, no body. */
static void heartbeat(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                      int dialect)
{
    uint64_t now = now_ms(rs);
    if (rs->etcd) {
        eop *o = eop_new(rs, r, EOP_HEARTBEAT);
        if (o)
            reg_etcd_heartbeat(rs->etcd, svc, id, eop_done, o);
        return;
    }
    if (reg_heartbeat(rs->store, svc, id, now) < 0) {
        fail(r, dialect, 404, "no such instance: register again");
        return;
    }
    weft_metric_inc(rs->m, rs->m_beats);
    reg_instance *in = reg_find_mut(rs->store, svc, id);
    if (rs->persist) {
        /* not waited for: a restart restores the lease conservatively */
        reg_persist_lease(rs->persist, in, now);
        if (reg_persist_dirty(rs->persist))
            schedule_commit(rs);
    }
    if (dialect == EUREKA)
        weft_http_respond(r, 200, WEFT_STR_NULL, NULL, 0);
    else
        weft_json_respond(r, 200, json_pack("{s:I}", "ttl_ms", (json_int_t)in->ttl_ms));
    notify(rs); /* only does work if the heartbeat ended a self-preservation hold */
}

/* Set the status (native PUT .../status, Eureka's status override). */
static void set_status(reg_server *rs, weft_http_req *r, const char *svc, const char *id, int st,
                       int dialect)
{
    uint64_t now = now_ms(rs);
    if (rs->etcd) { /* answered in the native format whatever the dialect */
        eop *o = eop_new(rs, r, EOP_STATUS);
        if (o)
            reg_etcd_set_status(rs->etcd, svc, id, st, eop_done, o);
        return;
    }
    int64_t rc = reg_set_status(rs->store, svc, id, st, now);
    if (rc < 0) {
        fail(r, dialect, 404, "no such instance");
        return;
    }
    if (rs->persist && rc > 0)
        reg_persist_put(rs->persist, reg_find_mut(rs->store, svc, id), now);
    answer_change(rs, r, 200,
                  dialect == EUREKA ? NULL
                                    : json_pack("{s:I, s:b}", "revision",
                                                (json_int_t)reg_revision(rs->store), "changed",
                                                rc > 0),
                  rc > 0);
}

static void h_instance(reg_server *rs, weft_http_req *r, const char *svc, const char *id,
                       const char *action)
{
    int m = weft_http_req_method(r);
    uint64_t now = now_ms(rs);
    if (!action) {
        if (m == WEFT_METHOD_PUT) {
            h_register(rs, r, svc, id);
        } else if (m == WEFT_METHOD_DELETE) {
            deregister(rs, r, svc, id, NATIVE);
        } else if (m == WEFT_METHOD_GET || m == WEFT_METHOD_HEAD) {
            const reg_instance *in = reg_find(rs->store, svc, id);
            if (!in) {
                respond_err(r, 404, "no such instance");
                return;
            }
            set_index(r, in->mod_rev);
            weft_json_respond(r, 200, reg_instance_json(in, now));
        } else {
            weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET, HEAD, PUT, DELETE"));
            respond_err(r, 405, "method not allowed");
        }
        return;
    }
    if (strcmp(action, "session") == 0) {
        if (m != WEFT_METHOD_GET) {
            weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET"));
            respond_err(r, 405, "method not allowed");
            return;
        }
        h_session(rs, r, svc, id);
        return;
    }
    if (m != WEFT_METHOD_PUT) {
        weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("PUT"));
        respond_err(r, 405, "method not allowed");
        return;
    }
    if (strcmp(action, "heartbeat") == 0) {
        heartbeat(rs, r, svc, id, NATIVE);
        return;
    }
    if (strcmp(action, "status") == 0) {
        weft_str body = weft_http_req_body(r);
        json_t *j = json_loadb(body.p ? body.p : "", body.n, 0, NULL);
        json_t *sv = j ? json_object_get(j, "status") : NULL;
        int st = json_is_string(sv) ? reg_status_from(json_string_value(sv)) : -1;
        bool extra = j && json_object_size(j) != 1;
        json_decref(j);
        if (st < 0 || extra) {
            respond_err(r, 400, "expected {\"status\": \"UP|DOWN|OUT_OF_SERVICE|STARTING\"}");
            return;
        }
        set_status(rs, r, svc, id, st, NATIVE);
        return;
    }
    respond_err(r, 404, "unknown action");
}

static bool flag_true(const char *v) { return v && (!*v || strcmp(v, "true") == 0 || strcmp(v, "1") == 0); }

/* ---- Prometheus HTTP service discovery ----
 *
 * GET /v1/prometheus/targets[?service=S] answers in the http_sd_configs
 * format: one target group per instance, with __meta_weft_* labels (tags
 * as ",a,b," like Consul's, each meta key as __meta_weft_meta_<key> with
 * characters outside [A-Za-z0-9_] turned into '_'). Every instance is
 * listed, with __meta_weft_healthy, so relabelling decides what to keep. */
static json_t *prom_group(const reg_instance *in, uint64_t now)
{
    char target[300], tags[4096];
    weft_http_join_hostport(in->address, in->port, target, sizeof target);
    size_t tl = 0;
    tags[tl++] = ',';
    for (size_t i = 0; i < in->ntags && tl < sizeof tags - 1; i++) {
        int w = snprintf(tags + tl, sizeof tags - tl, "%s,", in->tags[i]);
        if (w < 0 || (size_t)w >= sizeof tags - tl)
            break;
        tl += (size_t)w;
    }
    tags[tl] = 0;
    json_t *labels = json_pack("{s:s, s:s, s:s, s:s, s:s}", "__meta_weft_service", in->service,
                               "__meta_weft_id", in->id, "__meta_weft_tags", tags,
                               "__meta_weft_healthy",
                               reg_instance_healthy(in, now) ? "true" : "false",
                               "__meta_weft_status", reg_status_name(in->status));
    if (in->zone)
        json_object_set_new(labels, "__meta_weft_zone", json_string(in->zone));
    if (in->version)
        json_object_set_new(labels, "__meta_weft_version", json_string(in->version));
    const char *k;
    json_t *v;
    json_object_foreach(in->meta, k, v) {
        char name[200];
        int n = snprintf(name, sizeof name, "__meta_weft_meta_%s", k);
        for (int i = 17; i < n && i < (int)sizeof name; i++)
            if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
                  (name[i] >= '0' && name[i] <= '9') || name[i] == '_'))
                name[i] = '_';
        json_object_set(labels, name, v);
    }
    return json_pack("{s:[s], s:o}", "targets", target, "labels", labels);
}

static void h_prometheus(reg_server *rs, weft_http_req *r)
{
    const char *only = qparam(r, "service");
    uint64_t now = now_ms(rs);
    json_t *groups = json_array();
    for (size_t i = 0; i < reg_service_count(rs->store); i++) {
        size_t n;
        const char *name = reg_service_at(rs->store, i, &n);
        if (only && strcmp(only, name) != 0)
            continue;
        const reg_instance **v;
        reg_instances(rs->store, name, &v);
        for (size_t k = 0; k < n; k++)
            json_array_append_new(groups, prom_group(v[k], now));
    }
    set_index(r, reg_revision(rs->store));
    weft_json_respond(r, 200, groups);
}

/* ---- Consul-compatible subset (consul.c builds the bodies) ---- */

/* Find the service of a Consul service ID (unique across services there). */
static const char *service_of_id(reg_server *rs, const char *id)
{
    for (size_t i = 0; i < reg_service_count(rs->store); i++) {
        size_t n;
        const char *name = reg_service_at(rs->store, i, &n);
        if (n && reg_find(rs->store, name, id))
            return name;
    }
    return NULL;
}

static void h_consul(reg_server *rs, weft_http_req *r, char **seg, size_t nseg)
{
    int m = weft_http_req_method(r);
    bool get = m == WEFT_METHOD_GET || m == WEFT_METHOD_HEAD;
    const char *a = seg[1], *b = nseg > 2 ? seg[2] : "";
    int view = REG_CONSUL_NONE;
    if (strcmp(a, "catalog") == 0 && nseg == 3 && strcmp(b, "services") == 0)
        view = REG_CONSUL_SERVICES;
    else if (strcmp(a, "catalog") == 0 && nseg == 4 && strcmp(b, "service") == 0)
        view = REG_CONSUL_CATALOG;
    else if (strcmp(a, "health") == 0 && nseg == 4 && strcmp(b, "service") == 0)
        view = REG_CONSUL_HEALTH;
    if (view) {
        if (!get) {
            weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET, HEAD"));
            respond_err(r, 405, "method not allowed");
            return;
        }
        const char *svc = view == REG_CONSUL_SERVICES ? NULL : seg[3];
        if (svc && !reg_name_ok(svc)) {
            respond_err(r, 400, "service: 1-200 characters of letters, digits, '.', '_', '-', ':'");
            return;
        }
        uint64_t index = 0;
        char *idx = qparam(r, "index");
        if (idx && !parse_u64(idx, &index)) {
            respond_err(r, 400, "index: expected a number");
            return;
        }
        bool passing = flag_true(qparam(r, "passing"));
        const char *tag = qparam(r, "tag");
        if (!park(rs, r, svc, index, passing, tag, NULL, view))
            answer_consul(rs, r, view, svc, passing, tag);
        return;
    }
    if (strcmp(a, "agent") == 0 && nseg == 3 && strcmp(b, "self") == 0 && get) {
        weft_json_respond(r, 200,
                     json_pack("{s:{s:s, s:s, s:s, s:b, s:s}, s:{s:s, s:s, s:i, s:{}}}",
                               "Config", "Datacenter", REG_CONSUL_DC, "NodeName",
                               REG_CONSUL_NODE, "NodeID", "", "Server", 1, "Version", "weft",
                               "Member", "Name", REG_CONSUL_NODE, "Addr", "127.0.0.1", "Port",
                               0, "Tags"));
        return;
    }
    if (strcmp(a, "status") == 0 && nseg == 3 && strcmp(b, "leader") == 0 && get) {
        weft_json_respond(r, 200, json_string("127.0.0.1:8300"));
        return;
    }
    if (strcmp(a, "catalog") == 0 && nseg == 3 && strcmp(b, "datacenters") == 0 && get) {
        weft_json_respond(r, 200, json_pack("[s]", REG_CONSUL_DC));
        return;
    }
    bool agent_svc = strcmp(a, "agent") == 0 && nseg >= 4 && strcmp(b, "service") == 0;
    bool agent_chk = strcmp(a, "agent") == 0 && nseg == 5 && strcmp(b, "check") == 0;
    /* Consul before 1.0 took GET for these (python-consul 0.7 still sends
     * GET for deregister and check updates); registration must be a PUT */
    bool reg_call = agent_svc && nseg == 4 && strcmp(seg[3], "register") == 0;
    if ((agent_svc || agent_chk) && m != WEFT_METHOD_PUT && (reg_call || m != WEFT_METHOD_GET)) {
        weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("PUT"));
        respond_err(r, 405, "method not allowed");
        return;
    }
    if (reg_call) {
        char svc[256], id[256], why[200];
        json_t *j = load_body(r, why, sizeof why), *native;
        if (!j) {
            respond_err(r, 400, why);
            return;
        }
        int rc = reg_consul_translate(j, &native, svc, sizeof svc, id, sizeof id, why,
                                      sizeof why);
        json_decref(j);
        if (rc < 0) {
            respond_err(r, 400, why);
            return;
        }
        /* a Consul ID is unique across services: moving it deregisters the old one,
         * but only once the new registration is known to be valid */
        reg_input valid;
        if (reg_input_from_json(native, &valid, why, sizeof why) < 0) {
            json_decref(native);
            respond_err(r, 400, why);
            return;
        }
        const char *old = service_of_id(rs, id);
        if (old && strcmp(old, svc) != 0) {
            char oldname[256];
            snprintf(oldname, sizeof oldname, "%s", old);
            if (rs->etcd)
                reg_etcd_deregister(rs->etcd, oldname, id, NULL, NULL);
            else if (reg_delete(rs->store, oldname, id) >= 0 && rs->persist)
                reg_persist_del(rs->persist, oldname, id);
        }
        register_json(rs, r, svc, id, native, NATIVE);
        return;
    }
    if (agent_svc && nseg == 5 && strcmp(seg[3], "deregister") == 0) {
        const char *svc = reg_name_ok(seg[4]) ? service_of_id(rs, seg[4]) : NULL;
        if (!svc) {
            respond_err(r, 404, "unknown service ID");
            return;
        }
        char name[256];
        snprintf(name, sizeof name, "%s", svc);
        deregister(rs, r, name, seg[4], NATIVE);
        return;
    }
    if (agent_chk && strcmp(seg[3], "pass") == 0) {
        /* TTL checks are the instance's lease: "service:ID", "service:ID:N"
         * (Consul's name when a service has several checks) or the ID */
        bool prefixed = strncmp(seg[4], "service:", 8) == 0;
        char id[256];
        snprintf(id, sizeof id, "%s", prefixed ? seg[4] + 8 : seg[4]);
        const char *svc = reg_name_ok(id) ? service_of_id(rs, id) : NULL;
        char *colon = strrchr(id, ':');
        if (!svc && prefixed && colon && colon[1] &&
            strspn(colon + 1, "0123456789") == strlen(colon + 1)) {
            *colon = '\0';
            svc = reg_name_ok(id) ? service_of_id(rs, id) : NULL;
        }
        if (!svc) {
            respond_err(r, 404, "unknown check ID");
            return;
        }
        char name[256];
        snprintf(name, sizeof name, "%s", svc);
        heartbeat(rs, r, name, id, NATIVE);
        return;
    }
    if (agent_chk && (strcmp(seg[3], "fail") == 0 || strcmp(seg[3], "warn") == 0)) {
        respond_err(r, 400, "TTL fail/warn are not supported: set the status with "
                            "PUT /v1/services/NAME/instances/ID/status");
        return;
    }
    respond_err(r, 404, "not found");
}

/* ---- Eureka-compatible subset (eureka.c builds the bodies) ----
 *
 * Under /eureka/v2/ (Netflix) and /eureka/ (Spring Cloud). Reads answer
 * XML unless the Accept header mentions "json", as Eureka does; writes
 * answer with empty bodies (204 for a registration), errors as fail()
 * says. */

static bool has_word(weft_str s, const char *w)
{
    size_t n = strlen(w);
    for (size_t i = 0; s.p && i + n <= s.n; i++)
        if (memcmp(s.p + i, w, n) == 0)
            return true;
    return false;
}

/* Decode %XX in place; false on a malformed escape or an encoded NUL. */
static bool pct_decode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p != '%') {
            *o++ = *p;
            continue;
        }
        int v = 0;
        for (int k = 1; k <= 2; k++) {
            char c = p[k];
            int d = c >= '0' && c <= '9' ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0)
                return false;
            v = v * 16 + d;
        }
        if (v == 0)
            return false;
        *o++ = (char)v;
        p += 2;
    }
    *o = 0;
    return true;
}

static void eureka_view(reg_server *rs, weft_http_req *r, int view, const char *name,
                        const char *id)
{
    bool json = has_word(weft_http_req_header(r, WEFT_STR("Accept")), "json");
    char *body;
    size_t len;
    int rc = reg_eureka_render(rs->store, view, name, id, json, now_ms(rs), &body, &len);
    if (rc < 0) {
        fail(r, EUREKA, rc == WEFT_ENOTFOUND ? 404 : 503,
             rc == WEFT_ENOTFOUND ? "not found" : "out of memory");
        return;
    }
    set_index(r, reg_revision(rs->store));
    weft_http_respond(r, 200, json ? JSON : WEFT_STR("application/xml"), body, len);
    free(body);
}

static void eureka_register(reg_server *rs, weft_http_req *r, const char *app)
{
    weft_str body = weft_http_req_body(r);
    size_t i = 0;
    while (i < body.n && (body.p[i] == ' ' || body.p[i] == '\t' || body.p[i] == '\r' ||
                          body.p[i] == '\n'))
        i++;
    char svc[256], id[256], why[200];
    json_t *j, *native;
    if (has_word(weft_http_req_header(r, WEFT_STR("Content-Type")), "xml") ||
        (i < body.n && body.p[i] == '<')) {
        if (reg_eureka_xml_parse(body.p ? body.p : "", body.n, &j, why, sizeof why) < 0)
            j = NULL;
    } else {
        j = load_body(r, why, sizeof why);
    }
    if (!j) {
        fail(r, EUREKA, 400, why);
        return;
    }
    int rc = reg_eureka_translate(rs->store, app, j, &native, svc, sizeof svc, id, sizeof id,
                                  why, sizeof why);
    json_decref(j);
    if (rc < 0) {
        fail(r, EUREKA, 400, why);
        return;
    }
    register_json(rs, r, svc, id, native, EUREKA);
}

/* Heartbeat, deregistration and status of one instance. */
static void eureka_instance(reg_server *rs, weft_http_req *r, const char *app, const char *id,
                            bool status_call)
{
    int m = weft_http_req_method(r);
    const char *found = reg_eureka_locate(rs->store, app, id);
    if (!found) {
        fail(r, EUREKA, 404, "no such instance");
        return;
    }
    char svc[256];
    snprintf(svc, sizeof svc, "%s", found); /* the store may free its copy */
    if (!status_call) {
        if (m == WEFT_METHOD_PUT)
            heartbeat(rs, r, svc, id, EUREKA);
        else
            deregister(rs, r, svc, id, EUREKA);
        return;
    }
    /* PUT sets an override; DELETE removes it: UP, or the value given */
    const char *value = qparam(r, "value");
    int st = value ? reg_eureka_status(value) : REG_UP;
    if (st < 0 || (m == WEFT_METHOD_PUT && !value)) {
        fail(r, EUREKA, 400, "value: expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN");
        return;
    }
    if (m == WEFT_METHOD_DELETE && strcmp(value ? value : "", "UNKNOWN") == 0)
        st = REG_UP;
    set_status(rs, r, svc, id, st, EUREKA);
}

static void handle_eureka(weft_http_req *r, void *ud)
{
    reg_server *rs = ud;
    weft_str path = weft_http_req_path(r);
    char buf[1024];
    if (path.n >= sizeof buf) {
        fail(r, EUREKA, 414, "path too long");
        return;
    }
    memcpy(buf, path.p, path.n);
    buf[path.n] = '\0';
    char *seg[8];
    size_t nseg = 0;
    char *save = NULL, *tok;
    for (char *p = buf + 1; (tok = strtok_r(p, "/", &save)); p = NULL) {
        if (nseg == 8 || !pct_decode(tok)) {
            fail(r, EUREKA, nseg == 8 ? 404 : 400, nseg == 8 ? "not found" : "bad escape in path");
            return;
        }
        seg[nseg++] = tok;
    }
    size_t base = nseg > 1 && strcmp(seg[1], "v2") == 0 ? 2 : 1;
    char **a = seg + base;
    size_t n = nseg - base;
    int m = weft_http_req_method(r);
    bool get = m == WEFT_METHOD_GET || m == WEFT_METHOD_HEAD;
    const char *allow = NULL;
    for (size_t i = 1; i < n && i < 3; i++)
        if (!reg_name_ok(a[i])) {
            fail(r, EUREKA, 400, "application and instance names: 1-200 characters of letters, "
                                 "digits, '.', '_', '-', ':'");
            return;
        }
    if (n >= 1 && strcmp(a[0], "apps") == 0) {
        if (n == 1 || (n == 2 && get && strcmp(a[1], "delta") == 0)) {
            /* no delta queue: the full registry, whose apps__hashcode a
             * client checks before it falls back to a full fetch anyway */
            if (get)
                eureka_view(rs, r, REG_EUREKA_APPS, NULL, NULL);
            else
                allow = "GET, HEAD";
        } else if (n == 2) {
            if (get)
                eureka_view(rs, r, REG_EUREKA_APP, a[1], NULL);
            else if (m == WEFT_METHOD_POST)
                eureka_register(rs, r, a[1]);
            else
                allow = "GET, HEAD, POST";
        } else if (n == 3) {
            if (get)
                eureka_view(rs, r, REG_EUREKA_INSTANCE, a[1], a[2]);
            else if (m == WEFT_METHOD_PUT || m == WEFT_METHOD_DELETE)
                eureka_instance(rs, r, a[1], a[2], false);
            else
                allow = "GET, HEAD, PUT, DELETE";
        } else if (n == 4 && strcmp(a[3], "status") == 0) {
            if (m == WEFT_METHOD_PUT || m == WEFT_METHOD_DELETE)
                eureka_instance(rs, r, a[1], a[2], true);
            else
                allow = "PUT, DELETE";
        } else if (n == 4 && strcmp(a[3], "metadata") == 0) {
            fail(r, EUREKA, 501, "metadata updates are not supported: register the instance "
                                 "again with the new metadata");
        } else {
            fail(r, EUREKA, 404, "not found");
        }
    } else if (n == 2 && (strcmp(a[0], "instances") == 0 || strcmp(a[0], "vips") == 0 ||
                          strcmp(a[0], "svips") == 0)) {
        if (!get)
            allow = "GET, HEAD";
        else if (a[0][0] == 'i')
            eureka_view(rs, r, REG_EUREKA_INSTANCE, NULL, a[1]);
        else
            eureka_view(rs, r, a[0][0] == 'v' ? REG_EUREKA_VIP : REG_EUREKA_SVIP, a[1], NULL);
    } else {
        fail(r, EUREKA, 404, "not found");
    }
    if (allow) {
        weft_http_resp_header(r, WEFT_STR("Allow"), (weft_str){allow, strlen(allow)});
        fail(r, EUREKA, 405, "method not allowed");
    }
}

static void handle(weft_http_req *r, void *ud)
{
    reg_server *rs = ud;
    weft_str path = weft_http_req_path(r);
    char buf[512];
    if (path.n >= sizeof buf) {
        respond_err(r, 414, "path too long");
        return;
    }
    memcpy(buf, path.p, path.n);
    buf[path.n] = '\0';
    /* split "/v1/a/b/c/d" */
    char *seg[8];
    size_t nseg = 0;
    for (char *p = buf + 1, *save = NULL, *tok; (tok = strtok_r(p, "/", &save)) && nseg < 8;
         p = NULL)
        seg[nseg++] = tok;
    int m = weft_http_req_method(r);
    bool get = m == WEFT_METHOD_GET || m == WEFT_METHOD_HEAD;
    if (nseg < 2 || strcmp(seg[0], "v1") != 0) {
        respond_err(r, 404, "not found");
        return;
    }
    if (rs->etcd && !reg_etcd_ready(rs->etcd)) {
        respond_err(r, 503, "loading the registry from etcd");
        return;
    }
    if (nseg == 2 && (strcmp(seg[1], "watch") == 0 || strcmp(seg[1], "status") == 0 ||
                      strcmp(seg[1], "services") == 0) && !get) {
        weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET, HEAD"));
        respond_err(r, 405, "method not allowed");
        return;
    }
    if (nseg == 2 && strcmp(seg[1], "watch") == 0) {
        h_watch(rs, r);
        return;
    }
    if (nseg == 2 && strcmp(seg[1], "status") == 0) {
        weft_json_respond(r, 200, json_pack("{s:I, s:I, s:I, s:b, s:I, s:I}", "revision",
                                       (json_int_t)reg_revision(rs->store), "services",
                                       (json_int_t)reg_service_count(rs->store), "instances",
                                       (json_int_t)reg_instance_total(rs->store),
                                       "self_preservation", reg_self_preservation(rs->store),
                                       "watchers", (json_int_t)rs->nwatchers, "waiters",
                                       (json_int_t)rs->nwaiters));
        return;
    }
    if (nseg == 3 && strcmp(seg[1], "prometheus") == 0 && strcmp(seg[2], "targets") == 0) {
        if (!get) {
            weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET, HEAD"));
            respond_err(r, 405, "method not allowed");
            return;
        }
        h_prometheus(rs, r);
        return;
    }
    if (strcmp(seg[1], "services") != 0) {
        h_consul(rs, r, seg, nseg);
        return;
    }
    uint64_t index = 0;
    char *idx = qparam(r, "index");
    if (idx && !parse_u64(idx, &index)) {
        respond_err(r, 400, "index: expected a revision number");
        return;
    }
    if (nseg == 2) {
        if (!park(rs, r, NULL, index, false, NULL, NULL, 0))
            answer_services(rs, r);
        return;
    }
    const char *svc = seg[2];
    if (!reg_name_ok(svc)) {
        respond_err(r, 400, "service: 1-200 characters of letters, digits, '.', '_', '-', ':'");
        return;
    }
    if (nseg == 3) {
        if (!get) {
            weft_http_resp_header(r, WEFT_STR("Allow"), WEFT_STR("GET, HEAD"));
            respond_err(r, 405, "method not allowed");
            return;
        }
        bool healthy = flag_true(qparam(r, "healthy")) || flag_true(qparam(r, "passing"));
        const char *tag = qparam(r, "tag"), *zone = qparam(r, "zone");
        if (!park(rs, r, svc, index, healthy, tag, zone, 0))
            answer_service(rs, r, svc, healthy, tag, zone);
        return;
    }
    if (strcmp(seg[3], "instances") != 0 || nseg < 5 || nseg > 6) {
        respond_err(r, 404, "not found");
        return;
    }
    if (!reg_name_ok(seg[4])) {
        respond_err(r, 400, "id: 1-200 characters of letters, digits, '.', '_', '-', ':'");
        return;
    }
    h_instance(rs, r, svc, seg[4], nseg == 6 ? seg[5] : NULL);
}

/* ---- lifecycle ---- */

reg_server *reg_server_new(const reg_store_opts *o)
{
    reg_server *rs = calloc(1, sizeof *rs);
    if (!rs)
        return NULL;
    rs->store = reg_store_new(o);
    if (!rs->store) {
        free(rs);
        return NULL;
    }
    rs->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)rs;
    weft_metrics *m = rs->m = weft_metrics_global();
    weft_metrics_counter(m, "weft_registry_registrations_total", "Register calls.", NULL, &rs->m_regs);
    weft_metrics_counter(m, "weft_registry_deregistrations_total", "Deregister calls.", NULL,
                         &rs->m_deregs);
    weft_metrics_counter(m, "weft_registry_heartbeats_total", "Lease renewals.", NULL, &rs->m_beats);
    weft_metrics_counter(m, "weft_registry_expirations_total", "Instances removed by lease expiry.",
                         NULL, &rs->m_expired);
    weft_metrics_gauge(m, "weft_registry_instances", "Registered instances.", NULL,
                       &rs->m_instances);
    weft_metrics_gauge(m, "weft_registry_revision", "Current registry revision.", NULL, &rs->m_rev);
    weft_metrics_gauge(m, "weft_registry_self_preservation",
                       "1 while eviction is suspended because too many leases expired at once.",
                       NULL, &rs->m_preserve);
    weft_metrics_gauge(m, "weft_registry_watchers", "Open streaming watches.", NULL,
                       &rs->m_watchers);
    weft_metrics_gauge(m, "weft_registry_blocking_queries", "Parked blocking queries.", NULL,
                       &rs->m_waiters);
    weft_metrics_counter(m, "weft_registry_check_probes_total", "Active check probes by result.",
                         "result=\"pass\"", &rs->m_check_pass);
    weft_metrics_counter(m, "weft_registry_check_probes_total", "Active check probes by result.",
                         "result=\"fail\"", &rs->m_check_fail);
    return rs;
}

int reg_server_routes(reg_server *rs, weft_http_server *srv)
{
    int rc = weft_http_server_route(srv, 0, "/v1/", WEFT_ROUTE_PREFIX, handle, rs);
    if (rc == 0)
        rc = weft_http_server_route(srv, 0, "/eureka/", WEFT_ROUTE_PREFIX, handle_eureka, rs);
    return rc;
}

int reg_server_set_data_dir(reg_server *rs, const char *dir)
{
    rs->data_dir = dir;
    return 0;
}

void reg_server_set_dns(reg_server *rs, const char *hostport) { rs->dns_addr = hostport; }

void reg_server_set_etcd(reg_server *rs, const reg_etcd_url *url)
{
    rs->etcd_url = *url;
    rs->use_etcd = true;
}

static void etcd_changed(void *ud) { notify(ud); }

int reg_server_start(reg_server *rs, weft_loop *loop)
{
    rs->loop = loop;
    weft_timer_init(&rs->commit_timer, commit_now, rs);
    if (rs->data_dir) {
        weft_loop_update_time(loop);
        int rc = reg_persist_open(rs->data_dir, rs->store, weft_loop_now_ms(loop), &rs->persist);
        if (rc < 0) {
            weft_log(WEFT_LOG_ERROR, "cannot open the registry data directory",
                     WEFT_KV_STR("dir", rs->data_dir), WEFT_KV_STR("error", weft_strerror(rc)));
            return rc;
        }
    }
    if (rs->use_etcd) {
        int rc = reg_etcd_start(&rs->etcd_url, rs->store, loop, etcd_changed, rs, &rs->etcd);
        if (rc < 0)
            return rc;
    }
    if (rs->dns_addr) {
        int rc = reg_dns_server_start(rs->dns_addr, rs->store, loop, &rs->dns);
        if (rc < 0)
            return rc;
    }
    weft_http_client_opts ho;
    weft_http_client_opts_default(&ho);
    ho.max_idle_per_host = 2;
    rs->hc = weft_http_client_new(loop, &ho);
    if (!rs->hc)
        return WEFT_ENOMEM;
    weft_timer_init(&rs->sweep, sweep, rs);
    weft_timer_start(loop, &rs->sweep, SWEEP_MS);
    weft_timer_init(&rs->ping, ping_watchers, rs);
    weft_timer_start(loop, &rs->ping, PING_MS);
    return 0;
}

void reg_server_drain(reg_server *rs)
{
    rs->draining = true;
    /* streams and parked queries never end by themselves: end them now so
     * the connections can close and the drain completes */
    while (rs->waiters)
        waiter_answer(rs->waiters);
    while (rs->watchers)
        watcher_end(rs->watchers);
    /* the registry is stopping, not the client: keep the instances */
    while (rs->sessions) {
        weft_sse_end(&rs->sessions->sse);
        session_unlink(rs->sessions);
    }
}

void reg_server_stop(reg_server *rs)
{
    if (!rs->loop)
        return;
    weft_timer_stop(rs->loop, &rs->sweep);
    weft_timer_stop(rs->loop, &rs->ping);
    weft_timer_stop(rs->loop, &rs->commit_timer);
    while (rs->pend) {
        pending *p = rs->pend;
        rs->pend = p->next;
        free(p->body);
        free(p);
    }
    reg_dns_server_stop(rs->dns);
    rs->dns = NULL;
    reg_persist_close(rs->persist); /* syncs what is left */
    rs->persist = NULL;
    reg_etcd_free(rs->etcd); /* operations still waiting are canceled */
    rs->etcd = NULL;
    while (rs->waiters)
        waiter_free(rs->waiters); /* their connections were closed by the server */
    while (rs->watchers)
        watcher_free(rs->watchers);
    while (rs->sessions)
        session_unlink(rs->sessions);
    while (rs->probes)
        probe_free(rs->probes);
    weft_http_client_free(rs->hc);
    rs->hc = NULL;
}

void reg_server_free(reg_server *rs)
{
    if (!rs)
        return;
    reg_store_free(rs->store);
    free(rs);
}
