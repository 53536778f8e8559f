/*
 * regwatch.c — watch one service in weft registry with blocking queries.
 *
 * One request is open at a time:
 *   GET /v1/services/NAME?healthy=true&index=N&wait=30s
 * The registry answers as soon as the service's revision passes N, so a
 * registration, a deregistration or an expired lease reaches the caller
 * within milliseconds; the next query goes out at once with the returned
 * X-Weft-Index (a service the registry does not know has index 0, which
 * cannot park a query: then index 1 with a 1 s wait). Healthy instances become endpoints "address:port" with
 * their registered weight; with a zone, instances in that zone are used
 * alone while any of them is healthy, otherwise all (zone preference).
 *
 * On error the caller is told (and keeps its last list: stale on error);
 * the query is retried with backoff, 100 ms doubling to 2 s, from index 0
 * since the registry may have restarted with other revisions.
 */
#include "regwatch.h"

#include "http/http_int.h"
#include "weft/http.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_S 30
#define UNKNOWN_WAIT_S 1 /* see apply() */
#define MAX_BODY (16u << 20)

struct regwatch {
    weft_loop *loop;
    regwatch_cbs cbs;
    char *host, *service, *zone;
    uint16_t port;
    weft_http_client *client;
    weft_http_creq *q;
    weft_timer retry;
    uint64_t index;
    uint32_t wait_s;
    uint32_t backoff_ms;
    bool stale;
    int status;
    uint64_t resp_index;
    char *body;
    size_t len, cap;
};

static void query(regwatch *w);

int regwatch_parse_url(const char *url, char **host, uint16_t *port)
{
    if (!url || strncmp(url, "http://", 7) != 0)
        return WEFT_EINVAL;
    const char *p = url + 7, *hb, *he, *colon;
    if (*p == '[') {
        hb = p + 1;
        he = strchr(hb, ']');
        if (!he || he[1] != ':')
            return WEFT_EINVAL;
        colon = he + 1;
    } else {
        hb = p;
        colon = strchr(p, ':');
        if (!colon || memchr(p, '/', (size_t)(colon - p)))
            return WEFT_EINVAL;
        he = colon;
    }
    if (he == hb)
        return WEFT_EINVAL;
    unsigned long v = 0;
    const char *d = colon + 1;
    if (*d < '0' || *d > '9')
        return WEFT_EINVAL;
    for (; *d >= '0' && *d <= '9'; d++)
        if ((v = v * 10 + (unsigned long)(*d - '0')) > 65535)
            return WEFT_EINVAL;
    if (v == 0 || (*d && strcmp(d, "/") != 0))
        return WEFT_EINVAL;
    *host = strndup(hb, (size_t)(he - hb));
    if (!*host)
        return WEFT_ENOMEM;
    *port = (uint16_t)v;
    return 0;
}

static void fail(regwatch *w, const char *why)
{
    bool first = !w->stale;
    w->stale = true;
    w->index = 0;
    w->wait_s = WAIT_S;
    weft_timer_start(w->loop, &w->retry, w->backoff_ms);
    w->backoff_ms = w->backoff_ms < 1000 ? w->backoff_ms * 2 : 2000;
    if (w->cbs.on_error)
        w->cbs.on_error(w->cbs.ud, why, first);
}

/* {"revision":R,"instances":[{address,port,weight,zone,...}]} -> endpoints */
static void apply(regwatch *w)
{
    json_t *o = json_loadb(w->body ? w->body : "", w->len, 0, NULL);
    json_t *arr = o ? json_object_get(o, "instances") : NULL;
    if (!json_is_array(arr)) {
        json_decref(o);
        fail(w, "unexpected answer from the registry");
        return;
    }
    size_t n = json_array_size(arr), k = 0;
    regwatch_ep *eps = calloc(n ? n : 1, sizeof *eps);
    char *ids = malloc(n ? n * 300 : 1);
    if (!eps || !ids) {
        free(eps);
        free(ids);
        json_decref(o);
        fail(w, "out of memory");
        return;
    }
    bool any_in_zone = false;
    for (size_t pass = 0; pass < 2; pass++) {
        /* pass 0: only the preferred zone; pass 1: everything (if it gave none) */
        if (pass == 1 && (any_in_zone || !w->zone))
            break;
        for (size_t i = 0; i < n; i++) {
            json_t *in = json_array_get(arr, i);
            const char *addr = json_string_value(json_object_get(in, "address"));
            json_int_t port = json_integer_value(json_object_get(in, "port"));
            json_int_t weight = json_integer_value(json_object_get(in, "weight"));
            const char *z = json_string_value(json_object_get(in, "zone"));
            if (!addr || port < 1 || port > 65535)
                continue;
            if (pass == 0 && w->zone && (!z || strcmp(z, w->zone) != 0))
                continue;
            char *id = ids + k * 300;
            weft_http_join_hostport(addr, (unsigned)port, id, 300);
            eps[k] = (regwatch_ep){.host = addr,
                                   .id = id,
                                   .port = (uint16_t)port,
                                   .weight = weight >= 1 && weight <= 1000 ? (uint32_t)weight : 1};
            k++;
            any_in_zone |= pass == 0;
        }
        if (!w->zone)
            break;
    }
    w->backoff_ms = 100;
    w->index = w->resp_index;
    w->wait_s = WAIT_S;
    if (w->index == 0) {
        /* Revision 0: the registry has never seen the service (or came back
         * empty), and a query on index 0 is answered at once, never parked;
         * asking again with it would spin. Index 1 parks until the service
         * appears (its revision is then past 1); the short wait covers the
         * one case it is not: the service's first change is the registry's
         * very first revision. */
        w->index = 1;
        w->wait_s = UNKNOWN_WAIT_S;
    }
    if (w->cbs.on_update)
        w->cbs.on_update(w->cbs.ud, eps, k, w->resp_index);
    w->stale = false;
    free(eps);
    free(ids);
    json_decref(o);
    query(w);
}

static void on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    regwatch *w = ud;
    w->status = resp->status;
    w->resp_index = 0;
    for (size_t i = 0; i < resp->nheaders; i++)
        if (weft_str_ieq(resp->names[i], WEFT_STR("X-Weft-Index")))
            for (size_t k = 0; k < resp->values[i].n; k++) {
                char c = resp->values[i].p[k];
                if (c < '0' || c > '9')
                    break;
                w->resp_index = w->resp_index * 10 + (uint64_t)(c - '0');
            }
}

static void on_body(weft_http_creq *q, weft_str data, void *ud)
{
    regwatch *w = ud;
    if (w->len + data.n > MAX_BODY) {
        weft_http_creq_cancel(q);
        w->q = NULL;
        fail(w, "answer too large");
        return;
    }
    if (w->len + data.n > w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 16384;
        while (nc < w->len + data.n)
            nc *= 2;
        char *nb = realloc(w->body, nc);
        if (!nb) {
            weft_http_creq_cancel(q);
            w->q = NULL;
            fail(w, "out of memory");
            return;
        }
        w->body = nb;
        w->cap = nc;
    }
    memcpy(w->body + w->len, data.p, data.n);
    w->len += data.n;
}

static void on_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    regwatch *w = ud;
    w->q = NULL;
    if (err)
        fail(w, weft_strerror(err));
    else if (w->status != 200)
        fail(w, "registry answered with an error status");
    else
        apply(w);
}

static void query(regwatch *w)
{
    char target[512];
    snprintf(target, sizeof target, "/v1/services/%s?healthy=true&index=%llu&wait=%us", w->service,
             (unsigned long long)w->index, (unsigned)w->wait_s);
    w->len = 0;
    weft_http_creq_opts o = {
        .method = "GET",
        .host = w->host,
        .port = w->port,
        .target = target,
        .timeout_ms = (w->wait_s + w->wait_s / 16 + 5) * 1000,
        .on_response = on_response,
        .on_body = on_body,
        .on_done = on_done,
        .ud = w,
    };
    if (weft_http_client_request(w->client, &o, &w->q) < 0)
        fail(w, "cannot query the registry");
}

static void retry_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    query(t->data);
}

regwatch *regwatch_start(weft_loop *loop, const char *host, uint16_t port, const char *service,
                         const char *zone, const regwatch_cbs *cbs)
{
    regwatch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->loop = loop;
    w->cbs = *cbs;
    w->port = port;
    w->backoff_ms = 100;
    w->wait_s = WAIT_S;
    w->host = strdup(host);
    w->service = strdup(service);
    w->zone = zone && *zone ? strdup(zone) : NULL;
    weft_http_client_opts co;
    weft_http_client_opts_default(&co);
    co.response_timeout_ms = 0;
    co.max_idle_per_host = 1;
    w->client = weft_http_client_new(loop, &co);
    if (!w->host || !w->service || (zone && *zone && !w->zone) || !w->client) {
        weft_http_client_free(w->client);
        free(w->host);
        free(w->service);
        free(w->zone);
        free(w);
        return NULL;
    }
    weft_timer_init(&w->retry, retry_cb, w);
    query(w);
    return w;
}

void regwatch_stop(regwatch *w)
{
    if (!w)
        return;
    weft_timer_stop(w->loop, &w->retry);
    if (w->q)
        weft_http_creq_cancel(w->q);
    weft_http_client_free(w->client);
    free(w->body);
    free(w->host);
    free(w->service);
    free(w->zone);
    free(w);
}

bool regwatch_stale(const regwatch *w)
{
    return w && w->stale;
}
