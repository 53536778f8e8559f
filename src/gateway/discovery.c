/*
 * discovery.c — cluster endpoints from weft registry, per worker.
 *
 * Each worker keeps one blocking query open per discovering cluster:
 *   GET /v1/services/NAME?healthy=true&index=N&wait=30s
 * The registry answers as soon as the service's revision passes N, so a
 * registration, a deregistration or an expired lease reaches the gateway's
 * balancer within milliseconds; the next query is issued at once with the
 * new X-Weft-Index. Healthy instances become endpoints "address:port" with
 * their registered weight; with a `zone`, instances in that zone are used
 * alone while any of them is healthy (zone preference), otherwise all.
 *
 * Stale on error: if the registry is unreachable or answers badly, the last
 * known endpoints keep serving, weft_gateway_discovery_stale{cluster} is 1,
 * and the query is retried with backoff (100 ms doubling to 2 s).
 */
#include "gwrt.h"

#include "weft/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_S 30
#define MAX_BODY (16u << 20)

struct gw_disc {
    gw_cluster_rt *cl;
    weft_http_client *client;
    weft_http_creq *q;
    weft_timer retry;
    uint64_t index;
    uint32_t backoff_ms;
    bool stale;
    int status;
    uint64_t resp_index;
    char *body;
    size_t len, cap;
};

static void query(struct gw_disc *d);

static void set_stale(struct gw_disc *d, bool stale)
{
    d->stale = stale;
    weft_metric_gauge_set(d->cl->gen->w->rt->m, d->cl->m_disc_stale, stale);
}

static void fail(struct gw_disc *d, const char *why)
{
    gw_cluster_rt *cl = d->cl;
    weft_metric_inc(cl->gen->w->rt->m, cl->m_disc_fail);
    if (!d->stale)
        weft_log(WEFT_LOG_WARN, "registry discovery failed; keeping the last endpoints",
                 WEFT_KV_STR("cluster", cl->conf->name), WEFT_KV_STR("error", why),
                 WEFT_KV_UINT("endpoints", cl->set->n));
    set_stale(d, true);
    d->index = 0; /* the registry may have restarted: re-read fully */
    weft_timer_start(cl->gen->w->loop, &d->retry, d->backoff_ms);
    d->backoff_ms = d->backoff_ms < 1000 ? d->backoff_ms * 2 : 2000;
}

/* Apply a registry answer: {"revision":R,"instances":[{address,port,weight,zone,...}]} */
static void apply(struct gw_disc *d)
{
    gw_cluster_rt *cl = d->cl;
    json_t *o = json_loadb(d->body ? d->body : "", d->len, 0, NULL);
    json_t *arr = o ? json_object_get(o, "instances") : NULL;
    if (!json_is_array(arr)) {
        json_decref(o);
        fail(d, "unexpected answer from the registry");
        return;
    }
    size_t n = json_array_size(arr), k = 0;
    gw_endpoint_conf *eps = calloc(n ? n : 1, sizeof *eps);
    const char *zone = cl->conf->disc_zone;
    bool any_in_zone = false;
    for (size_t pass = 0; pass < 2 && eps; pass++) {
        /* pass 0: only the preferred zone; pass 1: everything (if zone gave none) */
        if (pass == 1 && (any_in_zone || !zone))
            break;
        for (size_t i = 0; i < n; i++) {
            json_t *in = json_array_get(arr, i);
            const char *addr = json_string_value(json_object_get(in, "address"));
            json_int_t port = json_integer_value(json_object_get(in, "port"));
            json_int_t weight = json_integer_value(json_object_get(in, "weight"));
            const char *z = json_string_value(json_object_get(in, "zone"));
            if (!addr || port < 1 || port > 65535)
                continue;
            if (pass == 0 && zone && (!z || strcmp(z, zone) != 0))
                continue;
            char id[300];
            snprintf(id, sizeof id, strchr(addr, ':') ? "[%s]:%lld" : "%s:%lld", addr,
                     (long long)port);
            eps[k].host = strdup(addr);
            eps[k].id = strdup(id);
            eps[k].port = (uint16_t)port;
            eps[k].weight = weight >= 1 && weight <= 1000 ? (uint32_t)weight : 1;
            k++;
            any_in_zone |= pass == 0;
        }
        if (!zone)
            break;
    }
    json_decref(o);
    if (eps && !gw_epset_equals(cl->set, eps, k)) {
        if (gw_cluster_set_endpoints(cl, eps, k) == 0) {
            weft_metric_inc(cl->gen->w->rt->m, cl->m_disc_updates);
            weft_log(WEFT_LOG_INFO, "registry endpoints updated",
                     WEFT_KV_STR("cluster", cl->conf->name), WEFT_KV_UINT("endpoints", k),
                     WEFT_KV_UINT("revision", d->resp_index));
        }
    }
    for (size_t i = 0; i < k; i++) {
        free(eps[i].host);
        free(eps[i].id);
    }
    free(eps);
    if (d->stale)
        weft_log(WEFT_LOG_INFO, "registry discovery recovered", WEFT_KV_STR("cluster", cl->conf->name));
    set_stale(d, false);
    d->backoff_ms = 100;
    d->index = d->resp_index;
    query(d);
}

static void on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    struct gw_disc *d = ud;
    d->status = resp->status;
    d->resp_index = 0;
    for (size_t i = 0; i < resp->nheaders; i++)
        if (weft_str_ieq(resp->names[i], WEFT_STR("X-Weft-Index"))) {
            for (size_t k = 0; k < resp->values[i].n; k++) {
                char c = resp->values[i].p[k];
                if (c < '0' || c > '9')
                    break;
                d->resp_index = d->resp_index * 10 + (uint64_t)(c - '0');
            }
        }
}

static void on_body(weft_http_creq *q, weft_str data, void *ud)
{
    struct gw_disc *d = ud;
    if (d->len + data.n > MAX_BODY) {
        weft_http_creq_cancel(q);
        d->q = NULL;
        fail(d, "answer too large");
        return;
    }
    if (d->len + data.n > d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 16384;
        while (nc < d->len + data.n)
            nc *= 2;
        char *nb = realloc(d->body, nc);
        if (!nb)
            return;
        d->body = nb;
        d->cap = nc;
    }
    memcpy(d->body + d->len, data.p, data.n);
    d->len += data.n;
}

static void on_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    struct gw_disc *d = ud;
    d->q = NULL;
    if (err) {
        fail(d, weft_strerror(err));
        return;
    }
    if (d->status != 200) {
        fail(d, "registry answered with an error status");
        return;
    }
    apply(d);
}

static void query(struct gw_disc *d)
{
    const gw_cluster_conf *cc = d->cl->conf;
    char target[512];
    snprintf(target, sizeof target, "/v1/services/%s?healthy=true&index=%llu&wait=%ds",
             cc->disc_service, (unsigned long long)d->index, WAIT_S);
    d->len = 0;
    weft_http_creq_opts o = {
        .method = "GET",
        .host = cc->disc_host,
        .port = cc->disc_port,
        .target = target,
        .timeout_ms = (WAIT_S + WAIT_S / 16 + 5) * 1000,
        .on_response = on_response,
        .on_body = on_body,
        .on_done = on_done,
        .ud = d,
    };
    if (weft_http_client_request(d->client, &o, &d->q) < 0)
        fail(d, "cannot query the registry");
}

static void retry_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    query(t->data);
}

int gw_discovery_start(gw_cluster_rt *cl)
{
    struct gw_disc *d = calloc(1, sizeof *d);
    if (!d)
        return WEFT_ENOMEM;
    d->cl = cl;
    d->backoff_ms = 100;
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.response_timeout_ms = 0;
    co.max_idle_per_host = 1;
    d->client = weft_http_client_new(cl->gen->w->loop, &co);
    if (!d->client) {
        free(d);
        return WEFT_ENOMEM;
    }
    weft_timer_init(&d->retry, retry_cb, d);
    cl->disc = d;
    query(d);
    return 0;
}

void gw_discovery_stop(gw_cluster_rt *cl)
{
    struct gw_disc *d = cl->disc;
    if (!d)
        return;
    cl->disc = NULL;
    weft_timer_stop(cl->gen->w->loop, &d->retry);
    if (d->q)
        weft_http_creq_cancel(d->q);
    weft_http_client_free(d->client);
    free(d->body);
    free(d);
}
