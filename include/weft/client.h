/*
 * client.h — call other services by name, with the gateway's resilience.
 *
 * A weft_client belongs to one event loop (one per worker, like every
 * other piece of Weft's hot path). For each service it is asked to call it
 * keeps, on that loop:
 *
 * - a discovery cache fed by a registry watch (blocking queries: a new or
 *   dead instance is seen within milliseconds; the last list is kept if the
 *   registry is unreachable);
 * - a load balancer (the gateway's, src/resilience: P2C over peak-EWMA by
 *   default), with passive outlier ejection (Envoy semantics);
 * - a circuit breaker (closed/open/half-open; an open circuit fails a call
 *   at once with WEFT_ECIRCUIT, without touching the network);
 * - a retry budget (20 % of calls + 10/s by default) shared by its calls.
 *
 * A call retries on connect failures, resets, timeouts and 502/503/504
 * (idempotent methods only, unless the call says otherwise), with full-
 * jitter exponential backoff, on a different instance each attempt, never
 * past its deadline and never beyond the budget. The deadline is the
 * call's timeout, shortened to what the parent request has left when the
 * parent carried a deadline header; the remaining time is sent on in the
 * same header (X-Weft-Deadline-Ms, the gateway's), and the parent's
 * X-Request-Id is forwarded, so one id follows a request across services.
 *
 * Ownership: weft_client_call copies every string and the body. The result
 * passed to the callback is valid during the callback only. A call made on
 * behalf of a parent request lives no longer than that request: if the
 * parent is released first (client gone, or the response already sent) the
 * call is cancelled and its callback never runs. weft_client_free cancels
 * every call without callbacks; it must not be called from inside a
 * call's callback (the client is still on the stack there): free it from
 * the loop instead, e.g. a zero-delay timer. Threading: the loop's thread
 * only.
 */
#ifndef WEFT_CLIENT_H
#define WEFT_CLIENT_H

#include "weft/http.h"
#include "weft/loop.h"
#include "weft/resilience.h"
#include "weft/weft.h"

typedef struct weft_client weft_client;
typedef struct weft_call weft_call;

typedef struct weft_client_opts {
    const char *registry;         /* "http://HOST:PORT" of weft registry (required) */
    const char *zone;             /* prefer instances in this zone while any is healthy */
    int lb;                       /* enum weft_lb_algo; default WEFT_LB_P2C_EWMA */
    uint32_t timeout_ms;          /* whole call, retries included; default 5000 */
    uint32_t try_timeout_ms;      /* one attempt; default 2000 */
    uint32_t connect_timeout_ms;  /* default 1000 */
    uint32_t attempts;            /* including the first; default 3 */
    uint32_t backoff_base_ms;     /* full jitter: [0, min(max, base*2^n)); default 25 */
    uint32_t backoff_max_ms;      /* default 250 */
    double budget_percent;        /* retries per call; default 0.2 */
    uint32_t budget_min_per_sec;  /* retries always allowed; default 10 */
    size_t max_response;          /* buffered response body limit; default 8 MiB */
    weft_breaker_opts breaker;    /* Hystrix defaults */
    weft_outlier_opts outlier;    /* Envoy defaults */
    const char *deadline_header;  /* default "X-Weft-Deadline-Ms"; "" = none */
} weft_client_opts;

void weft_client_opts_default(weft_client_opts *o);
/* Copies opts. NULL on allocation failure or a bad registry URL. */
weft_client *weft_client_new(weft_loop *loop, const weft_client_opts *o);
void weft_client_free(weft_client *c);

typedef struct weft_call_result {
    int err;              /* 0: a response arrived (any status); else WEFT_ECIRCUIT,
                             WEFT_ENOHOST, WEFT_ETIMEDOUT, WEFT_EREFUSED, WEFT_ERESET,
                             WEFT_ETOOBIG (response over max_response), ... */
    int status;           /* HTTP status when err == 0 */
    weft_str body;        /* the response body (buffered) */
    weft_str content_type;
    const char *endpoint; /* "host:port" of the last attempt, "" if none */
    uint32_t attempts;    /* attempts made (0 when failed before any) */
} weft_call_result;

typedef void (*weft_call_cb)(const weft_call_result *res, void *ud);

typedef struct weft_call_opts {
    const char *service;          /* registry name (required) */
    const char *method;           /* default "GET" */
    const char *path;             /* "/path?query" (required) */
    const char *const *headers;   /* optional NULL-terminated "Name: value" list */
    const void *body;             /* optional, copied */
    size_t body_len;
    const char *content_type;     /* sent with a body; default application/json */
    weft_http_req *parent;        /* the request this call serves: request id,
                                     deadline, cancellation (optional) */
    uint32_t timeout_ms;          /* 0: the client's */
    bool retry_non_idempotent;    /* also retry POST/PATCH (only if the service
                                     dedupes); default false */
    const char *hash_key;         /* for ring_hash/maglev clients */
} weft_call_opts;

/* Start a call. 0 (cb runs exactly once, later, on this loop, unless the
 * call is cancelled) or WEFT_EINVAL / WEFT_ENOMEM (no callback). *out (if
 * given) identifies the call until its callback runs. */
int weft_client_call(weft_client *c, const weft_call_opts *o, weft_call_cb cb, void *ud,
                     weft_call **out);
/* Cancel a call whose callback has not run; the callback will not run. */
void weft_call_cancel(weft_call *call);

/* The instances the client currently knows for a service ("host:port",
 * comma-separated into buf), for tests and debugging; returns the count. */
size_t weft_client_endpoints(weft_client *c, const char *service, char *buf, size_t len);

#endif
