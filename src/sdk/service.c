/*
 * service.c — the service runtime (see include/weft/service.h).
 *
 * A service is an HTTP server run by the worker runtime, plus:
 *
 * Registration, on worker 0's loop: PUT the instance with its TTL, then a
 * heartbeat every ttl/3. A heartbeat answered 404 (the registry expired or
 * forgot us) re-registers at once; a failure retries with backoff (100 ms
 * doubling to 5 s) while the last lease still runs, so a registry restart
 * costs at most a few hundred milliseconds of absence.
 *
 * Shutdown order (SIGTERM/SIGINT): /ready turns 503 and worker 0 sends the
 * DELETE at once (sent again up to 3 times if it fails, 50-200 ms apart),
 * so watchers (gateways, clients) drop the instance within
 * milliseconds; every worker keeps serving for drain_delay_ms while those
 * watchers catch up, then drains its connections (in-flight requests
 * finish) and stops. A request that was already routed here is served.
 *
 * Clients: one weft_client per worker, created on the worker's loop and
 * found by loop index, so handlers call other services without locks.
 *
 * One weft_service per process (the runtime's signal handling is process
 * wide); weft_service_client finds it through a static.
 */
#include "weft/service.h"

#include "regwatch.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORKERS 64

typedef struct reg_agent {
    weft_service *s;
    weft_loop *loop;
    weft_http_client *http;
    weft_http_creq *q;
    weft_timer timer;
    bool registered, stopping;
    int status;
    int leave_tries; /* DELETEs left to send after the first one failed */
    uint32_t backoff_ms;
} reg_agent;

struct weft_service {
    weft_service_opts o;
    char *name, *id, *listen, *advertise, *registry, *zone, *version;
    char **tags;
    weft_http_server *srv;
    atomic_bool draining;
    char addr[300];
    char *reg_host;
    uint16_t reg_port, port;
    weft_client *clients[MAX_WORKERS];
    weft_timer drain_timers[MAX_WORKERS];
    reg_agent agent;
};

static weft_service *g_service;

/* ---- standard operational routes ---- */

static const weft_str JSON_TYPE = {"application/json", 16};

static void h_metrics(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_buf b;
    weft_buf_init(&b, 64u << 20);
    if (weft_metrics_render(weft_metrics_global(), &b) < 0) {
        weft_buf_release(&b);
        weft_http_respond_error(r, 500, "metrics rendering failed");
        return;
    }
    weft_http_respond(r, 200, WEFT_STR("text/plain; version=0.0.4; charset=utf-8"),
                      weft_buf_rptr(&b), weft_buf_used(&b));
    weft_buf_release(&b);
}

static void h_health(weft_http_req *r, void *ud)
{
    (void)ud;
    static const char body[] = "{\"status\":\"UP\"}";
    weft_http_respond(r, 200, JSON_TYPE, body, sizeof body - 1);
}

static void h_ready(weft_http_req *r, void *ud)
{
    const atomic_bool *draining = ud;
    if (draining && atomic_load_explicit(draining, memory_order_relaxed)) {
        static const char body[] = "{\"ready\":false,\"reason\":\"draining\"}";
        weft_http_respond(r, 503, JSON_TYPE, body, sizeof body - 1);
        return;
    }
    static const char body[] = "{\"ready\":true}";
    weft_http_respond(r, 200, JSON_TYPE, body, sizeof body - 1);
}

int weft_http_std_routes(weft_http_server *s, const atomic_bool *draining)
{
    const unsigned GET = WEFT_M(WEFT_METHOD_GET);
    int rc = weft_http_server_route(s, GET, "/health", 0, h_health, NULL);
    if (rc == 0)
        rc = weft_http_server_route(s, GET, "/ready", 0, h_ready, (void *)draining);
    if (rc == 0)
        rc = weft_http_server_route(s, GET, "/metrics", 0, h_metrics, NULL);
    return rc;
}

/* ---- JSON ---- */

json_t *weft_json_body(weft_http_req *r)
{
    weft_str b = weft_http_req_body(r);
    json_error_t e;
    json_t *v = json_loadb(b.p ? b.p : "", b.n, JSON_REJECT_DUPLICATES, &e);
    if (!v) {
        char why[300];
        snprintf(why, sizeof why, "invalid JSON at line %d column %d: %s", e.line, e.column,
                 e.text);
        weft_http_respond_error(r, 400, why);
    }
    return v;
}

int weft_json_respond(weft_http_req *r, int status, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s)
        return weft_http_respond_error(r, 500, "cannot serialize the response");
    int rc = weft_http_respond(r, status, JSON_TYPE, s, strlen(s));
    free(s);
    return rc;
}

/* ---- options ---- */

void weft_service_opts_default(weft_service_opts *o)
{
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:0";
    o->weight = 1;
    o->ttl_ms = 10000;
    o->drain_delay_ms = 300;
    o->workers = 1;
    weft_http_server_opts_default(&o->http);
    weft_client_opts_default(&o->client);
}

static int parse_u32(const char *flag, const char *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, "%s: expected a number %u-%u, got '%s'\n", flag, lo, hi, v);
        return WEFT_EINVAL;
    }
    *out = (uint32_t)x;
    return 0;
}

int weft_service_args(weft_service_opts *o, int argc, char **argv, const char *usage)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage ? usage : "", stdout);
            fputs("  --listen HOST:PORT    --registry http://HOST:PORT   --id ID\n"
                  "  --advertise IP        --zone Z   --weight N   --ttl MS   --workers N\n"
                  "  --lb ALGO             the client's balancer (default p2c_ewma)\n"
                  "  --log-level LEVEL     --log-format text|json\n",
                  stdout);
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "unknown option or missing value: %s\n", a);
            return WEFT_EINVAL;
        }
        const char *v = argv[++i];
        uint32_t n;
        if (!strcmp(a, "--listen"))
            o->listen = v;
        else if (!strcmp(a, "--registry"))
            o->registry = v;
        else if (!strcmp(a, "--id"))
            o->id = v;
        else if (!strcmp(a, "--advertise"))
            o->advertise = v;
        else if (!strcmp(a, "--zone"))
            o->zone = v;
        else if (!strcmp(a, "--weight")) {
            if (parse_u32(a, v, 1, 1000, &o->weight) < 0)
                return WEFT_EINVAL;
        } else if (!strcmp(a, "--ttl")) {
            if (parse_u32(a, v, 1000, 3600000, &o->ttl_ms) < 0)
                return WEFT_EINVAL;
        } else if (!strcmp(a, "--workers")) {
            if (parse_u32(a, v, 1, MAX_WORKERS, &n) < 0)
                return WEFT_EINVAL;
            o->workers = (int)n;
        } else if (!strcmp(a, "--lb")) {
            int algo = weft_lb_algo_from(v);
            if (algo < 0) {
                fprintf(stderr, "--lb: expected p2c_ewma, round_robin, weighted_round_robin, "
                                "least_request, random, ring_hash or maglev\n");
                return WEFT_EINVAL;
            }
            o->client.lb = algo;
        } else if (!strcmp(a, "--log-level")) {
            int lv = weft_log_level_from(v);
            if (lv < 0) {
                fprintf(stderr, "--log-level: expected debug, info, warn, error or off\n");
                return WEFT_EINVAL;
            }
            weft_log_set_level(lv);
        } else if (!strcmp(a, "--log-format")) {
            int fm = weft_log_format_from(v);
            if (fm < 0) {
                fprintf(stderr, "--log-format: expected text or json\n");
                return WEFT_EINVAL;
            }
            weft_log_set_format(fm);
        } else {
            fprintf(stderr, "unknown option: %s\n", a);
            return WEFT_EINVAL;
        }
    }
    return 0;
}

/* ---- registration agent (worker 0) ---- */

static void agent_register(reg_agent *a);
static void agent_heartbeat(reg_agent *a);

static void agent_retry(reg_agent *a)
{
    weft_timer_start(a->loop, &a->timer, a->backoff_ms);
    a->backoff_ms = a->backoff_ms < 2500 ? a->backoff_ms * 2 : 5000;
}

static void agent_on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    ((reg_agent *)ud)->status = resp->status;
}

static void agent_on_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    reg_agent *a = ud;
    weft_service *s = a->s;
    a->q = NULL;
    if (a->stopping) {
        /* the DELETE sent at SIGTERM: idempotent, so a failed one is sent
         * again (50, 100, 200 ms later) while the drain delay lasts;
         * otherwise watchers keep the instance until its TTL runs out */
        bool gone = err == 0 && (a->status == 200 || a->status == 404);
        if (!gone && a->leave_tries > 0) {
            weft_timer_start(a->loop, &a->timer, a->backoff_ms);
            a->backoff_ms *= 2;
        }
        return;
    }
    if (err == 0 && a->status == 200) {
        if (!a->registered)
            weft_log(WEFT_LOG_INFO, "registered", WEFT_KV_STR("service", s->name),
                     WEFT_KV_STR("id", s->id), WEFT_KV_STR("registry", s->registry));
        a->registered = true;
        a->backoff_ms = 100;
        weft_timer_start(a->loop, &a->timer, s->o.ttl_ms / 3);
        return;
    }
    if (err == 0 && a->status == 404 && a->registered) {
        weft_log(WEFT_LOG_WARN, "the registry forgot this instance; registering again",
                 WEFT_KV_STR("service", s->name), WEFT_KV_STR("id", s->id));
        a->registered = false;
        agent_register(a);
        return;
    }
    if (a->backoff_ms == 100)
        weft_log(WEFT_LOG_WARN, "registry unreachable or refusing; retrying",
                 WEFT_KV_STR("service", s->name),
                 WEFT_KV_STR("error", err ? weft_strerror(err) : "bad status"),
                 WEFT_KV_INT("status", err ? 0 : a->status));
    agent_retry(a);
}

static void agent_send(reg_agent *a, const char *method, const char *suffix, const char *body)
{
    weft_service *s = a->s;
    char target[600];
    snprintf(target, sizeof target, "/v1/services/%s/instances/%s%s", s->name, s->id, suffix);
    weft_http_creq_opts o = {
        .method = method,
        .host = s->reg_host,
        .port = s->reg_port,
        .target = target,
        .headers = (const char *const[]){"Content-Type: application/json", NULL},
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .timeout_ms = 2000,
        .on_response = agent_on_response,
        .on_done = agent_on_done,
        .ud = a,
    };
    a->status = 0;
    if (weft_http_client_request(a->http, &o, &a->q) < 0) {
        a->q = NULL;
        agent_retry(a);
    }
}

static void agent_register(reg_agent *a)
{
    weft_service *s = a->s;
    json_t *b = json_pack("{s:s, s:i, s:i, s:f}", "address", s->advertise, "port", (int)s->port,
                          "weight", (int)s->o.weight, "ttl", (double)s->o.ttl_ms / 1000.0);
    if (s->zone)
        json_object_set_new(b, "zone", json_string(s->zone));
    if (s->version)
        json_object_set_new(b, "version", json_string(s->version));
    if (s->tags) {
        json_t *t = json_array();
        for (char **p = s->tags; *p; p++)
            json_array_append_new(t, json_string(*p));
        json_object_set_new(b, "tags", t);
    }
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    if (!body) {
        agent_retry(a);
        return;
    }
    agent_send(a, "PUT", "", body);
    free(body);
}

static void agent_heartbeat(reg_agent *a)
{
    agent_send(a, "PUT", "/heartbeat", NULL);
}

static void agent_timer(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_agent *a = t->data;
    if (a->stopping) {
        if (a->leave_tries > 0) {
            a->leave_tries--;
            agent_send(a, "DELETE", "", NULL);
        }
        return;
    }
    if (a->registered)
        agent_heartbeat(a);
    else
        agent_register(a);
}

static int agent_start(weft_service *s, weft_loop *loop)
{
    reg_agent *a = &s->agent;
    a->s = s;
    a->loop = loop;
    a->backoff_ms = 100;
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.max_idle_per_host = 1;
    a->http = weft_http_client_new(loop, &co);
    if (!a->http)
        return WEFT_ENOMEM;
    weft_timer_init(&a->timer, agent_timer, a);
    agent_register(a);
    return 0;
}

/* Deregister: the drain delay gives the DELETE time to land, and to be
 * sent again if it fails (agent_on_done). */
static void agent_leave(reg_agent *a)
{
    if (!a->http || a->stopping)
        return;
    a->stopping = true; /* a register or heartbeat cancelled here is not retried */
    a->leave_tries = 0;
    if (a->q)
        weft_http_creq_cancel(a->q);
    a->q = NULL;
    weft_timer_stop(a->loop, &a->timer);
    a->leave_tries = 3;
    a->backoff_ms = 50;
    agent_send(a, "DELETE", "", NULL);
    weft_log(WEFT_LOG_INFO, "deregistering", WEFT_KV_STR("service", a->s->name),
             WEFT_KV_STR("id", a->s->id));
}

static void agent_stop(reg_agent *a)
{
    if (!a->http)
        return;
    a->stopping = true;
    weft_timer_stop(a->loop, &a->timer);
    if (a->q)
        weft_http_creq_cancel(a->q);
    a->q = NULL;
    weft_http_client_free(a->http);
    a->http = NULL;
}

/* ---- worker hooks ---- */

static int w_start(weft_loop *loop, void *arg)
{
    weft_service *s = arg;
    int idx = weft_loop_index(loop);
    weft_metrics_attach(weft_metrics_global(), idx);
    if (s->registry) {
        weft_client_opts co = s->o.client;
        co.registry = s->registry;
        co.zone = s->zone;
        if (!(s->clients[idx] = weft_client_new(loop, &co)))
            return WEFT_ENOMEM;
    }
    int rc = weft_http_server_start_worker(s->srv, loop);
    if (rc == 0 && idx == 0 && s->registry)
        rc = agent_start(s, loop);
    return rc;
}

static void drain_now(weft_loop *loop, weft_timer *t)
{
    weft_http_server_drain(((weft_service *)t->data)->srv, loop);
}

static void w_drain(weft_loop *loop, void *arg)
{
    weft_service *s = arg;
    int idx = weft_loop_index(loop);
    atomic_store(&s->draining, true);
    if (idx == 0)
        agent_leave(&s->agent);
    weft_timer_init(&s->drain_timers[idx], drain_now, s);
    weft_timer_start(loop, &s->drain_timers[idx], s->registry ? s->o.drain_delay_ms : 0);
}

static void w_stop(weft_loop *loop, void *arg)
{
    weft_service *s = arg;
    int idx = weft_loop_index(loop);
    weft_timer_stop(loop, &s->drain_timers[idx]);
    weft_http_server_stop_worker(s->srv, loop);
    weft_client_free(s->clients[idx]);
    s->clients[idx] = NULL;
    if (idx == 0)
        agent_stop(&s->agent);
}

/* ---- lifecycle ---- */

static char *dup_or_null(const char *v)
{
    return v && *v ? strdup(v) : NULL;
}

weft_service *weft_service_new(const weft_service_opts *o)
{
    if (!o->name || !*o->name || o->workers < 1 || o->workers > MAX_WORKERS) {
        weft_log(WEFT_LOG_ERROR, "service: a name and 1-64 workers are required");
        return NULL;
    }
    if (g_service) {
        weft_log(WEFT_LOG_ERROR, "service: one weft_service per process");
        return NULL;
    }
    weft_service *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->o = *o;
    s->name = strdup(o->name);
    s->id = dup_or_null(o->id);
    s->listen = strdup(o->listen ? o->listen : "127.0.0.1:0");
    s->advertise = dup_or_null(o->advertise);
    s->registry = dup_or_null(o->registry);
    s->zone = dup_or_null(o->zone);
    s->version = dup_or_null(o->version);
    size_t nt = 0;
    while (o->tags && o->tags[nt])
        nt++;
    if (nt && (s->tags = calloc(nt + 1, sizeof *s->tags)))
        for (size_t i = 0; i < nt; i++)
            s->tags[i] = strdup(o->tags[i]);
    s->srv = weft_http_server_new(&o->http);
    if (!s->name || !s->listen || !s->srv || (nt && !s->tags))
        goto fail;
    if (s->registry && regwatch_parse_url(s->registry, &s->reg_host, &s->reg_port) < 0) {
        weft_log(WEFT_LOG_ERROR, "service: bad registry URL (expected http://HOST:PORT)",
                 WEFT_KV_STR("registry", s->registry));
        goto fail;
    }
    if (weft_http_std_routes(s->srv, &s->draining) < 0 ||
        weft_http_server_listen(s->srv, s->listen) < 0) {
        weft_log(WEFT_LOG_ERROR, "service: bad listen address", WEFT_KV_STR("listen", s->listen));
        goto fail;
    }
    g_service = s;
    return s;
fail:
    weft_service_free(s);
    return NULL;
}

void weft_service_free(weft_service *s)
{
    if (!s)
        return;
    if (g_service == s)
        g_service = NULL;
    weft_http_server_free(s->srv);
    for (char **p = s->tags; p && *p; p++)
        free(*p);
    free(s->tags);
    free(s->name);
    free(s->id);
    free(s->listen);
    free(s->advertise);
    free(s->registry);
    free(s->reg_host);
    free(s->zone);
    free(s->version);
    free(s);
}

int weft_service_route(weft_service *s, unsigned method_mask, const char *path, unsigned flags,
                       weft_http_handler h, void *ud)
{
    return weft_http_server_route(s->srv, method_mask, path, flags, h, ud);
}

weft_http_server *weft_service_http(weft_service *s) { return s->srv; }
const char *weft_service_address(const weft_service *s) { return s->addr; }

weft_client *weft_service_client(weft_http_req *r)
{
    int idx = weft_loop_index(weft_http_req_loop(r));
    return g_service && idx >= 0 && idx < MAX_WORKERS ? g_service->clients[idx] : NULL;
}

int weft_service_run(weft_service *s)
{
    int rc = weft_http_server_bind(s->srv, s->o.workers);
    if (rc < 0)
        return rc;
    snprintf(s->addr, sizeof s->addr, "%s", weft_http_server_address(s->srv, 0));
    const char *colon = strrchr(s->addr, ':');
    s->port = colon ? (uint16_t)atoi(colon + 1) : 0;
    if (!s->advertise) {
        /* the listen host, unless it is a wildcard */
        size_t hl = colon ? (size_t)(colon - s->addr) : 0;
        char host[256];
        snprintf(host, sizeof host, "%.*s", (int)hl, s->addr);
        if (host[0] == '[') {
            memmove(host, host + 1, strlen(host));
            host[strlen(host) - 1] = '\0';
        }
        bool wild = !strcmp(host, "0.0.0.0") || !strcmp(host, "::") || !host[0];
        s->advertise = strdup(wild ? "127.0.0.1" : host);
    }
    if (!s->id) {
        char id[300];
        snprintf(id, sizeof id, "%s-%s-%u", s->name, s->advertise, (unsigned)s->port);
        for (char *p = id; *p; p++)
            if (*p == '[' || *p == ']')
                *p = '_';
        s->id = strdup(id);
    }
    if (!s->advertise || !s->id)
        return WEFT_ENOMEM;
    weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", s->name),
             WEFT_KV_STR("addr", s->addr));
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop, .arg = s};
    return weft_rt_run(s->o.workers, &hooks, (int)s->o.http.drain_timeout_ms + (int)s->o.drain_delay_ms);
}
