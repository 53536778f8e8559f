/*
 * admin.c — JSON views of the gateway's live state for the admin API.
 *
 * The view is the calling worker's (admin requests are served by worker 0):
 * balancer counters, breakers and outlier state are per worker by design,
 * so this is one worker's exact picture rather than a merged guess.
 */
#include "gwrt.h"

#include <jansson.h>
#include <stdlib.h>

char *gw_clusters_json(gw_worker *w)
{
    gw_gen *gen = w->gen;
    uint64_t now_ms = weft_loop_now_ms(w->loop);
    json_t *root = json_object();
    json_t *arr = json_array();
    for (size_t i = 0; i < gen->cfg->nclusters; i++) {
        gw_cluster_rt *cl = &gen->clusters[i];
        uint32_t ok = 0, fail = 0;
        weft_breaker_counts(&cl->breaker, now_ms, &ok, &fail);
        json_t *c = json_pack("{s:s, s:s, s:I, s:I, s:{s:s, s:I, s:I, s:b}, s:b}", "name",
                              cl->conf->name, "lb", weft_lb_algo_name(cl->conf->lb), "inflight",
                              (json_int_t)cl->inflight, "ejections", (json_int_t)cl->ejections,
                              "breaker", "state",
                              weft_breaker_state_name(weft_breaker_state(&cl->breaker, now_ms)),
                              "window_ok", (json_int_t)ok, "window_fail", (json_int_t)fail,
                              "enabled", cl->conf->breaker_enabled, "panic",
                              cl->set->lb ? weft_lb_in_panic(cl->set->lb) : false);
        if (cl->conf->dns_name)
            json_object_set_new(c, "dns", json_pack("{s:s, s:s}", "name", cl->conf->dns_name,
                                                    "type", cl->conf->dns_srv ? "SRV" : "A/AAAA"));
        json_t *eps = json_array();
        gw_epset *set = cl->set;
        weft_lb_endpoint *le = set->lb ? weft_lb_endpoints(set->lb) : NULL;
        for (size_t j = 0; j < set->n; j++) {
            const weft_outlier_host *oh = &set->outlier[j];
            bool ejected = weft_outlier_ejected(oh, now_ms);
            json_array_append_new(
                eps, json_pack("{s:s, s:i, s:b, s:b, s:b, s:I, s:I, s:I, s:f}", "address",
                               set->eps[j].id, "weight", (int)le[j].weight, "healthy",
                               le[j].healthy, "active_check_healthy", set->hc[j].healthy,
                               "ejected", ejected, "ejected_for_ms",
                               (json_int_t)(ejected ? oh->ejected_until_ms - now_ms : 0),
                               "times_ejected", (json_int_t)oh->times_ejected, "inflight",
                               (json_int_t)le[j].inflight, "ewma_ms", le[j].ewma_us / 1000.0));
        }
        json_object_set_new(c, "endpoints", eps);
        json_array_append_new(arr, c);
    }
    json_object_set_new(root, "clusters", arr);
    json_object_set_new(root, "worker", json_integer(weft_loop_index(w->loop)));
    json_object_set_new(root, "workers", json_integer(w->rt->nworkers));
    json_object_set_new(root, "reloads", json_integer((json_int_t)atomic_load(&w->rt->reloads)));
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return s;
}
