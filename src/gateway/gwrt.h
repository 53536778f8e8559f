/*
 * gwrt.h — the gateway runtime: process-wide state and per-worker state.
 *
 * gw_runtime is shared read-mostly: the current config snapshot pointer is
 * swapped under a mutex by reload (a rare, admin-driven path) and each
 * worker is told through weft_loop_post(), so the request path reads only
 * its own gw_worker and never touches the mutex.
 *
 * A gw_gen ("generation") is one worker's live state for one config
 * snapshot: per-cluster balancers, breakers, outlier counters, health
 * checks and per-route retry budgets. Requests hold a reference to the
 * generation they started in; a reload installs a new generation and the old
 * one is freed when its last request finishes, so in-flight requests finish
 * on the configuration they started with and no connection is dropped.
 */
#ifndef WEFT_GATEWAY_GWRT_H
#define WEFT_GATEWAY_GWRT_H

#include "gw.h"
#include "weft/http.h"
#include "weft/loop.h"
#include "weft/metrics.h"

#include <pthread.h>

#define GW_MAX_WORKERS 256

typedef struct gw_worker gw_worker;
typedef struct gw_gen gw_gen;

typedef struct gw_hc_ep {
    bool healthy;          /* active-check verdict (true until proven otherwise) */
    uint32_t ok_streak, fail_streak;
    weft_timer timer;
    weft_http_creq *q;     /* HTTP check in flight */
    int fd;                /* TCP check in flight, -1 if none */
    weft_io io;
    uint64_t started_ms;
    bool resp_ok;          /* the HTTP check answered 2xx */
    struct gw_cluster_rt *cl;
    size_t idx;
} gw_hc_ep;

typedef struct gw_cluster_rt {
    const gw_cluster_conf *conf;
    gw_gen *gen;
    weft_lb *lb;
    weft_outlier_host *outlier;
    gw_hc_ep *hc;
    weft_breaker breaker;
    weft_adaptive adaptive;
    uint32_t inflight;
    uint64_t ejections;
    /* metrics */
    weft_metric m_upstream[6];
    weft_metric m_breaker_reject, m_ejections, m_overload, m_hc_fail;
} gw_cluster_rt;

typedef struct gw_route_rt {
    weft_retry_budget budget;
    weft_metric m_req[6];
    weft_metric m_dur, m_retries, m_budget_exhausted;
} gw_route_rt;

struct gw_gen {
    int refs;             /* worker-local: no atomics needed */
    bool current;
    gw_config *cfg;
    gw_worker *w;
    gw_cluster_rt *clusters;
    gw_route_rt *routes;
};

struct gw_worker {
    weft_loop *loop;
    struct gw_runtime *rt;
    gw_gen *gen;            /* current */
    weft_http_client *client;
    weft_http_client *hc_client;
    weft_rng rng;
    weft_timer tick;        /* outlier un-ejection, health refresh */
    uint64_t inflight;
    /* access log lines, written in batches (32 KiB or every second) */
    weft_buf alog;
    uint64_t alog_flushed_ms;
    weft_buf hdrs;          /* scratch: the forwarded header block being built */
};

typedef struct gw_runtime {
    pthread_mutex_t mu;
    gw_config *cfg;          /* current snapshot (owned ref) */
    weft_http_server *srv;
    int nworkers;
    gw_worker *workers[GW_MAX_WORKERS];
    uint64_t reloads, reload_failures;
    weft_metrics *m;
} gw_runtime;

gw_runtime *gw_runtime_new(gw_config *cfg, weft_http_server *srv, int nworkers);
void gw_runtime_free(gw_runtime *rt);
/* The fallback handler installed on the gateway's server (ud = runtime). */
void gw_handle(weft_http_req *r, void *ud);
int gw_worker_start(gw_runtime *rt, weft_loop *loop);
void gw_worker_stop(gw_runtime *rt, weft_loop *loop);
/* Install a validated config everywhere (takes ownership of cfg's ref). */
void gw_runtime_install(gw_runtime *rt, gw_config *cfg);
gw_config *gw_runtime_config(gw_runtime *rt); /* new ref */
/* Admin: JSON description of clusters as seen by the calling worker. */
char *gw_clusters_json(gw_worker *w);

/* health.c */
void gw_health_start(gw_cluster_rt *cl);
void gw_health_stop(gw_cluster_rt *cl);
/* Recompute lb endpoint health from active checks and outlier ejection. */
void gw_cluster_refresh_health(gw_cluster_rt *cl, uint64_t now_ms);

#endif
