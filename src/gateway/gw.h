/*
 * gw.h — the gateway's internal model: an immutable configuration snapshot
 * (listeners, clusters, routes, policies) and the per-worker runtime that
 * serves it.
 *
 * A gw_config is built by gw_config_load() from YAML, validated completely
 * (every error names file:line:column), and never modified afterwards. It is
 * reference-counted: each worker holds one reference to the current
 * snapshot and every in-flight request holds one to the snapshot it started
 * with, so a reload swaps the pointer atomically and in-flight requests
 * finish on the old config. Worker-local mutable state (balancer counters,
 * breakers, outlier counters, connection pools) lives in gw_worker, keyed by
 * cluster index, and is rebuilt for a new snapshot, except per-endpoint
 * health verdicts and outlier ejections, which each worker carries over by
 * cluster name and endpoint id (gwrt.h).
 */
#ifndef WEFT_GATEWAY_GW_H
#define WEFT_GATEWAY_GW_H

#include "weft/config.h"
#include "weft/http.h"
#include "weft/resilience.h"
#include "weft/weft.h"

#include <pthread.h>
#include <stdatomic.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

typedef struct gw_endpoint_conf {
    char *host; /* IP literal or name */
    uint16_t port;
    uint32_t weight;
    char *id; /* "host:port" */
} gw_endpoint_conf;

typedef struct gw_health_conf {
    bool enabled;
    bool tcp;             /* TCP connect check instead of HTTP */
    char *path;           /* HTTP path, default /health */
    uint32_t interval_ms; /* default 5000 */
    uint32_t timeout_ms;  /* default 1000 */
    uint32_t healthy_threshold;   /* default 2 */
    uint32_t unhealthy_threshold; /* default 3 */
} gw_health_conf;

enum gw_hash_on { GW_HASH_NONE = 0, GW_HASH_SOURCE_IP, GW_HASH_HEADER, GW_HASH_COOKIE };

typedef struct gw_cluster_conf {
    char *name;
    gw_endpoint_conf *eps;
    size_t neps;
    int lb;        /* enum weft_lb_algo */
    int hash_on;   /* enum gw_hash_on */
    char *hash_name; /* header or cookie name */
    uint32_t panic_percent;
    uint32_t connect_timeout_ms;
    uint32_t idle_timeout_ms;
    uint32_t max_idle;
    gw_health_conf health;
    weft_outlier_opts outlier;
    bool outlier_enabled;
    weft_breaker_opts breaker;
    bool breaker_enabled;
    uint32_t max_requests; /* concurrent requests per worker; 0 = unlimited */
    uint32_t max_connections; /* upstream connections per endpoint per worker; 0 = unlimited */
    uint32_t max_pending;     /* requests waiting for a connection (default 1024) */
    bool adaptive;
    weft_adaptive_opts adaptive_opts;
    /* DNS discovery (instead of static endpoints) */
    char *dns_name;
    uint16_t dns_port;       /* A/AAAA: the endpoints' port */
    bool dns_srv;            /* SRV records (port and weight from the records) */
    int dns_family;          /* AF_UNSPEC, AF_INET or AF_INET6 for A/AAAA */
    uint32_t dns_refresh_ms; /* upper bound; record TTLs refresh sooner */
    char *dns_resolver;      /* "ip:port[,ip:port]" or NULL for /etc/resolv.conf */
    /* discovery from weft registry (instead of static endpoints or DNS) */
    char *disc_host;         /* registry address */
    uint16_t disc_port;
    char *disc_service;
    char *disc_zone;         /* prefer instances in this zone, if any are healthy */
} gw_cluster_conf;

enum gw_path_kind { GW_PATH_ANY = 0, GW_PATH_EXACT, GW_PATH_PREFIX, GW_PATH_REGEX };
enum gw_action { GW_ACT_PROXY = 0, GW_ACT_REDIRECT, GW_ACT_DIRECT, GW_ACT_AGGREGATE };


typedef struct gw_kv_match {
    char *name;
    char *value;       /* exact value, or NULL */
    pcre2_code *regex; /* or regex, or neither = presence */
    bool absent;       /* match when NOT present */
} gw_kv_match;

typedef struct gw_header_op {
    char *name;
    char *value;
} gw_header_op;

typedef struct gw_header_ops {
    gw_header_op *set;
    size_t nset;
    gw_header_op *add;
    size_t nadd;
    char **remove;
    size_t nremove;
} gw_header_ops;

struct weft_ratelimit;
struct weft_apikeys;
struct weft_jwks;

enum gw_rl_key { GW_RL_CLIENT_IP = 0, GW_RL_HEADER, GW_RL_API_KEY };

/* A route's rate limiter is the one piece of mutable state shared by all
 * workers: a limit has to hold for a client whichever worker its
 * connections land on. It is taken under a mutex for ~50 ns per request. */
typedef struct gw_ratelimit_conf {
    double rate;       /* tokens per second */
    uint32_t burst;
    int key;           /* enum gw_rl_key */
    char *header;      /* for GW_RL_HEADER */
    struct weft_ratelimit *rl;
    pthread_mutex_t mu;
} gw_ratelimit_conf;

typedef struct gw_auth_conf {
    struct weft_apikeys *keys;
    char *key_header;  /* default X-API-Key */
    char *key_query;   /* or a query parameter */
    struct weft_jwks *jwks;
    char *issuer;
    char **audiences;
    size_t naud;
    unsigned algs;
    uint32_t leeway_s;
    gw_header_op *forward; /* claim name -> header name */
    size_t nforward;
    gw_header_op *require; /* claim name -> required value (403 if not) */
    size_t nrequire;
} gw_auth_conf;

typedef struct gw_agg_part {
    char *name;
    int cluster;
    char *path;
    uint32_t timeout_ms;
    char *fallback_json; /* JSON text used when the part fails; NULL = null */
} gw_agg_part;

typedef struct gw_split {
    int cluster;      /* index into clusters */
    uint32_t weight;
    gw_kv_match *when_header; /* A/B: this backend when the header matches */
    char *when_cookie;        /* ...or when this cookie is present with value */
    char *when_cookie_value;
} gw_split;

enum gw_retry_on {
    GW_RETRY_CONNECT = 1 << 0,
    GW_RETRY_RESET = 1 << 1,
    GW_RETRY_5XX = 1 << 2,
    GW_RETRY_GATEWAY = 1 << 3,
    GW_RETRY_STATUS = 1 << 4,
    GW_RETRY_TIMEOUT = 1 << 5,
};

typedef struct gw_retry_conf {
    uint32_t attempts;     /* total attempts including the first; 1 = no retries */
    unsigned on;           /* enum gw_retry_on mask */
    int statuses[16];
    size_t nstatuses;
    uint32_t backoff_base_ms; /* default 25 */
    uint32_t backoff_max_ms;  /* default 250 */
    bool all_methods;         /* retry non-idempotent methods too */
    bool budget_enabled;      /* default on */
    double budget_percent;    /* default 0.2 */
    uint32_t budget_min_per_sec; /* default 10 */
    uint32_t budget_ttl_ms;      /* default 10000 */
} gw_retry_conf;

typedef struct gw_route_conf {
    char *name;
    /* match */
    char *host; /* exact (case-insensitive), "*.example.com" suffix, or NULL */
    int path_kind;
    char *path;
    pcre2_code *path_re;
    unsigned methods; /* WEFT_M mask; 0 = any */
    gw_kv_match *headers;
    size_t nheaders;
    gw_kv_match *query;
    size_t nquery;
    /* action */
    int action;
    gw_split *splits;
    size_t nsplits;
    uint32_t split_total;
    char *strip_prefix;
    char *prefix_rewrite; /* replaces strip_prefix (or is prepended) */
    gw_header_ops req_ops, resp_ops;
    uint32_t timeout_ms;     /* whole request incl. retries; default 15000 */
    uint32_t per_try_timeout_ms; /* default = timeout */
    gw_retry_conf retry;
    /* redirect / direct */
    int status;
    char *location;
    char *body;
    size_t body_len;
    char *content_type;
    /* edge features */
    gw_ratelimit_conf *ratelimit;
    gw_auth_conf *auth;
    bool cache;
    uint32_t cache_ttl_ms; /* default lifetime when the response gives none */
    bool cache_auth;       /* cache requests carrying Authorization too */
    bool compress;
    uint32_t compress_min;
    gw_agg_part *parts;
    size_t nparts;
    /* fallback (breaker open / no healthy endpoint) */
    bool fallback;
    int fallback_status;
    char *fallback_body;
    size_t fallback_body_len;
    char *fallback_type;
} gw_route_conf;

typedef struct gw_config {
    atomic_int refs;
    char *path;      /* file it came from */
    char *yaml_text; /* for /admin/config */
    size_t yaml_len;
    gw_cluster_conf *clusters;
    size_t nclusters;
    gw_route_conf *routes;
    size_t nroutes;
    bool access_log;
    size_t cache_max_bytes; /* per worker; default 64 MiB */
    int cache_policy;       /* enum weft_cache_policy */
    bool xff;        /* add X-Forwarded-* (default on) */
    bool via;        /* add Via (default on) */
    char *deadline_header; /* default "X-Weft-Deadline-Ms"; "" = off */
} gw_config;

/* Load and validate; errors are "FILE:LINE:COL: KEY: reason" in err. */
int gw_config_load(const char *path, gw_config **out, weft_conf_err *err);
/* Parse the gateway part of an already loaded document (root map). */
int gw_config_from_conf(const char *path, const weft_conf_node *root, gw_config **out,
                        weft_conf_err *err);
void gw_config_ref(gw_config *c);
void gw_config_unref(gw_config *c);
int gw_cluster_index(const gw_config *c, const char *name);

/* Route matching (router.c). Returns the route index or -1. */
int gw_route_match(const gw_config *c, const weft_http_req *r);
/* Does the kv matcher accept this value (value.p == NULL means absent)? */
bool gw_kv_matches(const gw_kv_match *m, weft_str value);
/* Free the calling thread's regex scratch (at worker exit). */
void gw_router_thread_done(void);
/* Cookie value from a Cookie header. */
bool gw_cookie_get(weft_str cookie_header, const char *name, weft_str *value);

#endif
