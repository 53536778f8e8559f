/*
 * discovery.c — cluster endpoints from weft registry, per worker.
 *
 * Each worker keeps one registry watch per discovering cluster (the shared
 * blocking-query watch of src/sdk/regwatch.c, also used by the SDK client):
 * a registration, a deregistration or an expired lease reaches the
 * cluster's balancer within milliseconds. Instances become endpoints with
 * their registered weight, with zone preference.
 *
 * Stale on error: if the registry is unreachable or answers badly, the last
 * known endpoints keep serving, weft_gateway_discovery_stale{cluster} is 1,
 * and the watch retries with backoff.
 */
#include "gwrt.h"

#include "sdk/regwatch.h"
#include "weft/log.h"

#include <stdlib.h>

static void on_error(void *ud, const char *why, bool first)
{
    gw_cluster_rt *cl = ud;
    weft_metric_inc(cl->gen->w->rt->m, cl->m_disc_fail);
    if (first)
        weft_log(WEFT_LOG_WARN, "registry discovery failed; keeping the last endpoints",
                 WEFT_KV_STR("cluster", cl->conf->name), WEFT_KV_STR("error", why),
                 WEFT_KV_UINT("endpoints", cl->set->n));
    weft_metric_gauge_set(cl->gen->w->rt->m, cl->m_disc_stale, 1);
}

static void on_update(void *ud, const regwatch_ep *eps, size_t n, uint64_t revision)
{
    gw_cluster_rt *cl = ud;
    gw_endpoint_conf *conf = calloc(n ? n : 1, sizeof *conf);
    if (!conf)
        return;
    for (size_t i = 0; i < n; i++)
        conf[i] = (gw_endpoint_conf){.host = (char *)eps[i].host,
                                     .id = (char *)eps[i].id,
                                     .port = eps[i].port,
                                     .weight = eps[i].weight};
    if (!gw_epset_equals(cl->set, conf, n) && gw_cluster_set_endpoints(cl, conf, n) == 0) {
        weft_metric_inc(cl->gen->w->rt->m, cl->m_disc_updates);
        weft_log(WEFT_LOG_INFO, "registry endpoints updated", WEFT_KV_STR("cluster", cl->conf->name),
                 WEFT_KV_UINT("endpoints", n), WEFT_KV_UINT("revision", revision));
    }
    free(conf);
    if (regwatch_stale(cl->disc))
        weft_log(WEFT_LOG_INFO, "registry discovery recovered", WEFT_KV_STR("cluster", cl->conf->name));
    weft_metric_gauge_set(cl->gen->w->rt->m, cl->m_disc_stale, 0);
}

int gw_discovery_start(gw_cluster_rt *cl)
{
    const gw_cluster_conf *cc = cl->conf;
    regwatch_cbs cbs = {.on_update = on_update, .on_error = on_error, .ud = cl};
    cl->disc = regwatch_start(cl->gen->w->loop, cc->disc_host, cc->disc_port, cc->disc_service,
                              cc->disc_zone, &cbs);
    return cl->disc ? 0 : WEFT_ENOMEM;
}

void gw_discovery_stop(gw_cluster_rt *cl)
{
    regwatch_stop(cl->disc);
    cl->disc = NULL;
}
