/*
 * epset.c — endpoint sets: immutable membership, replaced as a whole.
 *
 * Discovery produces a new endpoint list; a new set is built (balancer,
 * outlier counters, health state) and swapped in. State is carried over by
 * endpoint id, so an endpoint that stays keeps its EWMA latency, in-flight
 * count, ejection and health verdict, and a returning endpoint list does not
 * reset what the gateway learned. Attempts in flight keep the old set alive
 * through their reference and account their result against it; the end of
 * such an attempt is also accounted in the current set (by id), which
 * carried its in-flight count over and would otherwise keep it for good.
 *
 * A reload builds a new generation, whose sets start from the config (or
 * from the last discovered endpoints); gw_epset_inherit() then carries the
 * active-check verdicts and outlier ejections over from the replaced
 * generation's set of the same cluster, by endpoint id, so a reload does
 * not make a known-bad endpoint eligible again. Balancer state (EWMA,
 * in-flight) is not carried there: attempts of the old generation account
 * their end in the old generation's sets only.
 */
#include "gwrt.h"

#include "weft/log.h"

#include <stdlib.h>
#include <string.h>

void gw_epset_ref(gw_epset *s) { s->refs++; }

void gw_epset_unref(gw_epset *s)
{
    if (!s || --s->refs > 0)
        return;
    gw_health_stop(s);
    for (size_t i = 0; i < s->n; i++) {
        free(s->eps[i].host);
        free(s->eps[i].id);
    }
    free(s->eps);
    weft_lb_free(s->lb);
    free(s->outlier);
    free(s->hc);
    free(s);
}

static int find_id(const gw_epset *s, const char *id)
{
    if (!s)
        return -1;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->eps[i].id, id) == 0)
            return (int)i;
    return -1;
}

gw_epset *gw_epset_new(gw_cluster_rt *cl, const gw_endpoint_conf *eps, size_t n)
{
    gw_epset *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    static _Thread_local uint64_t next_serial;
    s->refs = 1;
    s->serial = ++next_serial;
    s->cl = cl;
    s->n = n;
    size_t alloc = n ? n : 1;
    s->eps = calloc(alloc, sizeof *s->eps);
    s->outlier = calloc(alloc, sizeof *s->outlier);
    s->hc = calloc(alloc, sizeof *s->hc);
    weft_lb_endpoint *le = calloc(alloc, sizeof *le);
    if (!s->eps || !s->outlier || !s->hc || !le)
        goto fail;
    const gw_epset *prev = cl->set;
    for (size_t i = 0; i < n; i++) {
        s->eps[i].host = strdup(eps[i].host);
        s->eps[i].id = strdup(eps[i].id);
        s->eps[i].port = eps[i].port;
        s->eps[i].weight = eps[i].weight ? eps[i].weight : 1;
        if (!s->eps[i].host || !s->eps[i].id)
            goto fail;
        le[i].id = s->eps[i].id;
        le[i].weight = s->eps[i].weight;
        le[i].healthy = true;
        s->hc[i].healthy = true;
        s->hc[i].fd = -1;
        s->hc[i].set = s;
        s->hc[i].idx = i;
        int j = find_id(prev, eps[i].id);
        if (j >= 0) {
            const weft_lb_endpoint *pe = &weft_lb_endpoints(prev->lb)[j];
            le[i].ewma_us = pe->ewma_us;
            le[i].ewma_stamp_us = pe->ewma_stamp_us;
            le[i].inflight = pe->inflight;
            s->outlier[i] = prev->outlier[j];
            s->hc[i].healthy = prev->hc[j].healthy;
            s->hc[i].ok_streak = prev->hc[j].ok_streak;
            s->hc[i].fail_streak = prev->hc[j].fail_streak;
        }
    }
    if (n) {
        if (weft_lb_new(cl->conf->lb, le, n, &s->lb) < 0)
            goto fail;
        weft_lb_set_panic_percent(s->lb, cl->conf->panic_percent);
        uint64_t now_ms = weft_loop_now_ms(cl->gen->w->loop);
        weft_lb_endpoint *mine = weft_lb_endpoints(s->lb);
        for (size_t i = 0; i < n; i++)
            mine[i].healthy = s->hc[i].healthy && !weft_outlier_ejected(&s->outlier[i], now_ms);
    }
    free(le);
    return s;
fail:
    free(le);
    s->refs = 1;
    gw_epset_unref(s);
    return NULL;
}

void gw_epset_inherit(gw_epset *s, const gw_epset *prev, bool health, bool outlier)
{
    if (!prev || (!health && !outlier))
        return;
    for (size_t i = 0; i < s->n; i++) {
        int j = find_id(prev, s->eps[i].id);
        if (j < 0)
            continue;
        if (outlier)
            s->outlier[i] = prev->outlier[j];
        if (health) {
            s->hc[i].healthy = prev->hc[j].healthy;
            s->hc[i].ok_streak = prev->hc[j].ok_streak;
            s->hc[i].fail_streak = prev->hc[j].fail_streak;
            s->hc[i].carried = true;
        }
    }
    gw_cluster_refresh_health(s->cl, weft_loop_now_ms(s->cl->gen->w->loop));
}

int gw_cluster_set_endpoints(gw_cluster_rt *cl, const gw_endpoint_conf *eps, size_t n)
{
    gw_epset *s = gw_epset_new(cl, eps, n);
    if (!s)
        return WEFT_ENOMEM;
    gw_epset *old = cl->set;
    cl->set = s;
    if (old)
        gw_health_stop(old); /* its checks end now; attempts may still use it */
    gw_health_start(s);
    gw_epset_unref(old);
    return 0;
}

void gw_epset_on_done(gw_epset *s, int ep, uint64_t latency_us, uint64_t now_us)
{
    weft_lb_on_done(s->lb, ep, latency_us, now_us);
    gw_epset *cur = s->cl->set;
    if (!cur || cur == s || ep < 0 || (size_t)ep >= s->n)
        return;
    int j = find_id(cur, s->eps[ep].id);
    if (j >= 0)
        weft_lb_on_done(cur->lb, j, latency_us, now_us);
}

/* Whether every endpoint of a (id and weight) is also in b. */
static bool all_in(const gw_endpoint_conf *a, size_t na, const gw_endpoint_conf *b, size_t nb)
{
    for (size_t i = 0; i < na; i++) {
        bool found = false;
        for (size_t j = 0; j < nb && !found; j++)
            found = strcmp(a[i].id, b[j].id) == 0 && a[i].weight == b[j].weight;
        if (!found)
            return false;
    }
    return true;
}

bool gw_epset_equals(const gw_epset *s, const gw_endpoint_conf *eps, size_t n)
{
    /* both ways: a list may name one endpoint twice (two registry
     * instances at one address), and {A,B} -> {A,A} must not look equal */
    return s && s->n == n && all_in(eps, n, s->eps, s->n) && all_in(s->eps, s->n, eps, n);
}
