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
 * on the configuration they started with and no connection is dropped. The
 * old generation's health checks and discovery stop at the swap. The new
 * generation is built fresh except for what it learned about endpoints:
 * for a cluster of the same name, endpoints with the same id keep their
 * active-check verdict (if the health-check settings are unchanged) and
 * their outlier ejection (if detection is on in both); see
 * gw_epset_inherit(). Breakers, adaptive limits and retry budgets start
 * over. All of this happens on the worker's own thread at its swap.
 */
#ifndef WEFT_GATEWAY_GWRT_H
#define WEFT_GATEWAY_GWRT_H

#include "gw.h"
#include "weft/http.h"
#include "weft/loop.h"
#include "weft/metrics.h"

#include <pthread.h>
#include <stdatomic.h>

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
    bool carried;          /* verdict carried over by a reload: first probe after a full interval */
    struct gw_epset *set;
    size_t idx;
} gw_hc_ep;

/*
 * An endpoint set: a cluster's endpoints at one moment, with the balancer,
 * outlier counters and health-check state built for them. Membership never
 * changes; discovery (DNS now, the registry later) replaces the whole set.
 * Worker-local reference count: the cluster holds one reference to its
 * current set and every upstream attempt holds one to the set it picked
 * from, so an index picked from a set stays valid until the attempt ends.
 * Per-endpoint state (health, ejections, EWMA) carries over to the next set
 * for endpoints with the same id.
 */
typedef struct gw_epset {
    int refs;
    uint64_t serial;       /* unique per set (per worker), for stale index checks */
    struct gw_cluster_rt *cl;
    gw_endpoint_conf *eps; /* owned copies */
    size_t n;
    weft_lb *lb;           /* NULL when n == 0 */
    weft_outlier_host *outlier;
    gw_hc_ep *hc;
    bool checks_running;
} gw_epset;

struct gw_dns;

typedef struct gw_cluster_rt {
    const gw_cluster_conf *conf;
    gw_gen *gen;
    gw_epset *set;         /* current endpoints */
    struct gw_dns *dns;    /* discovery, when the cluster has dns: */
    struct regwatch *disc; /* discovery, when the cluster has discovery: */
    weft_http_client *client; /* this cluster's keep-alive pool (its timeouts, max_idle) */
    weft_breaker breaker;
    weft_adaptive adaptive;
    uint32_t inflight;
    uint64_t ejections;
    /* metrics */
    weft_metric m_upstream[6];
    weft_metric m_breaker_reject, m_ejections, m_overload, m_hc_fail, m_dns_fail, m_dns_updates;
    weft_metric m_breaker_open, m_breaker_half_open, m_ejected_now;
    weft_metric m_disc_stale, m_disc_updates, m_disc_fail;
} gw_cluster_rt;

typedef struct gw_route_rt {
    weft_retry_budget budget;
    weft_metric m_req[6];
    weft_metric m_dur, m_retries, m_budget_exhausted, m_ratelimited;
} gw_route_rt;

struct gw_gen {
    int refs;             /* worker-local: no atomics needed */
    gw_gen *next_dead;
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
    weft_http_client *hc_client; /* active health checks (upstream pools are per cluster) */
    weft_rng rng;
    weft_timer tick;        /* outlier un-ejection, health refresh */
    bool stopping;          /* gw_worker_stop is running: free generations at once */
    gw_gen *dead_gens;      /* generations whose last reference is gone, freed by reap_timer */
    weft_timer reap_timer;
    uint64_t inflight;
    /* access log lines, written in batches (32 KiB or every second) */
    weft_buf alog;
    uint64_t alog_flushed_ms;
    weft_buf hdrs;          /* scratch: the forwarded header block being built */
    struct weft_cache *cache; /* per-worker response cache */
    weft_metric m_cache_hit, m_cache_miss, m_cache_coalesced;
};

typedef struct gw_runtime {
    pthread_mutex_t mu;
    gw_config *cfg;          /* current snapshot (owned ref) */
    weft_http_server *srv;
    int nworkers;
    gw_worker *workers[GW_MAX_WORKERS];
    atomic_uint_fast64_t reloads, reload_failures; /* written by SIGHUP and admin threads */
    weft_metrics *m;
    uint64_t max_body;       /* http.max_body: the request body limit */
} gw_runtime;

typedef struct gw_req {
    weft_http_req *r;
    gw_worker *w;
    gw_gen *gen;
    const gw_route_conf *route;
    gw_route_rt *rrt;
    gw_cluster_rt *cl;
    int ep;
    gw_epset *set;            /* the set ep indexes (held during an attempt) */
    char upstream[64];        /* id of the last endpoint tried, for the access log */
    double last_ewma_us;      /* that endpoint's latency estimate */
    uint64_t tried_serial;    /* tried[] indexes the set with this serial */
    int tried[16];
    size_t ntried;
    uint32_t attempt;
    uint32_t retries;
    uint64_t start_us, try_start_us;
    uint64_t deadline_ms;
    weft_http_creq *q;
    weft_timer timer;
    bool resp_started;
    bool breaker_taken, adaptive_taken, inflight_taken;
    bool paused;
    int status;
    const char *error;
    char *target;
    uint64_t hash_key;
    uint64_t upstream_us;
    /* edge features */
    weft_str auth_hdrs;       /* "Name: value\r\n" lines from verified credentials */
    char *cache_key;          /* set when this request fills the cache (MISS) */
    size_t cache_key_len;
    bool cache_fill;
    bool cache_waiting;       /* parked as a coalesced waiter */
    weft_buf cache_body;      /* the upstream body, kept for the cache */
    weft_str *cache_names, *cache_values;
    size_t cache_nheaders;
    struct gw_gzip *gz;       /* response compression in progress */
    struct gw_agg *agg;       /* aggregation in progress */
    /* request body */
    int body_mode;            /* enum gw_body_mode */
    weft_buf body;            /* GW_BODY_BUFFER: the whole body (replayable) */
    int64_t stream_length;    /* GW_BODY_STREAM: Content-Length, or -1 chunked */
    uint64_t body_seen;       /* bytes received so far */
} gw_req;

/* Bodies up to this size are buffered so the request can be retried;
 * larger or chunked ones are streamed upstream with backpressure and are
 * not retried (like Linkerd's 64 KiB rule). */
#define GW_BUFFER_BODY_MAX (64 * 1024)
enum gw_body_mode { GW_BODY_NONE = 0, GW_BODY_BUFFER, GW_BODY_STREAM };

/* proxy.c */
void gw_start_attempt(gw_req *g);
void gw_respond_local(gw_req *g, int status, const char *reason, const char *extra_name,
                      const char *extra_value);
void gw_req_free(gw_req *g);
void gw_count_final(gw_req *g, int status);
/* Response header treatment shared by proxied answers and cache hits. */
weft_str gw_resp_conn_tokens(const weft_str *names, const weft_str *values, size_t n);
bool gw_resp_forwardable(weft_str uconn, weft_str name);
bool gw_resp_header_passes(const gw_req *g, weft_str name);
void gw_resp_header_ops(gw_req *g);

/* edge.c: rate limiting, authentication, caching, compression, aggregation */
/* Each returns true if the request may go on; false if it was answered. */
bool gw_edge_ratelimit(gw_req *g);
bool gw_edge_auth(gw_req *g);
/* Cache lookup: true = go on and fetch (maybe as the filler), false = answered or parked. */
bool gw_edge_cache_lookup(gw_req *g);
void gw_edge_cache_response(gw_req *g, const weft_http_cresp *resp);
void gw_edge_cache_body(gw_req *g, weft_str data);
void gw_edge_cache_done(gw_req *g, bool ok);
void gw_edge_cache_cancel(gw_req *g);
/* Compression: decide at response start (adds headers); returns content length to announce. */
int64_t gw_edge_gzip_start(gw_req *g, int status, weft_str ctype, weft_str content_encoding,
                           int64_t clen);
/* After gzip_start: add the upstream's ETag, weakened when gzipping. */
void gw_edge_etag(gw_req *g, weft_str etag);
int gw_edge_gzip_write(gw_req *g, weft_str data); /* resp_write's return convention */
void gw_edge_gzip_end(gw_req *g);
void gw_edge_gzip_free(gw_req *g);
void gw_edge_aggregate(gw_req *g);
void gw_edge_aggregate_cancel(gw_req *g);

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

/* epset.c */
/* Build a set over eps[0..n) (copied), carrying per-endpoint state over
 * from cl->set for endpoints with the same id. NULL on allocation failure. */
gw_epset *gw_epset_new(gw_cluster_rt *cl, const gw_endpoint_conf *eps, size_t n);
void gw_epset_ref(gw_epset *s);
void gw_epset_unref(gw_epset *s);
/* An attempt on s[ep] ended: balancer accounting (in-flight count, latency)
 * in s and, when the cluster has moved to a newer set that carried the
 * endpoint's in-flight count over, in that set too. */
void gw_epset_on_done(gw_epset *s, int ep, uint64_t latency_us, uint64_t now_us);
/* Same endpoints (ids and weights, any order)? */
bool gw_epset_equals(const gw_epset *s, const gw_endpoint_conf *eps, size_t n);
/* Reload: carry per-endpoint state over from prev (the replaced
 * generation's set of the same cluster) by endpoint id — the active-check
 * verdict and streaks when `health` (the health-check settings are
 * unchanged), the outlier state when `outlier` (detection on in both) — and
 * recompute the balancer's view. Call on a new set before
 * gw_health_start(); carried endpoints are first probed a full interval on. */
void gw_epset_inherit(gw_epset *s, const gw_epset *prev, bool health, bool outlier);
/* Replace the cluster's endpoints (restarts health checks on the new set). */
int gw_cluster_set_endpoints(gw_cluster_rt *cl, const gw_endpoint_conf *eps, size_t n);

/* health.c */
void gw_health_start(gw_epset *set);
void gw_health_stop(gw_epset *set);
/* Recompute lb endpoint health from active checks and outlier ejection. */
void gw_cluster_refresh_health(gw_cluster_rt *cl, uint64_t now_ms);

/* dns.c: endpoint discovery through DNS (c-ares), per worker. */
int gw_dns_start(gw_cluster_rt *cl);
void gw_dns_stop(gw_cluster_rt *cl);

/* discovery.c: endpoint discovery from weft registry, per worker. */
int gw_discovery_start(gw_cluster_rt *cl);
void gw_discovery_stop(gw_cluster_rt *cl);

#endif
