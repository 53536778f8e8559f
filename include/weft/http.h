/*
 * http.h — the HTTP/1.1 server and client API that services and the gateway
 * build on.
 *
 * SERVER. A weft_http_server holds listen addresses, options and a route
 * table; it is configured on one thread before the workers start and is
 * then read-only. Each worker calls weft_http_server_start_worker() on its
 * own loop: it gets its own SO_REUSEPORT listening sockets (created up front
 * by weft_http_server_bind) and serves connections on that loop only.
 *
 * A handler receives a weft_http_req. The request (and every weft_str read
 * from it) is valid until the response is finished (weft_http_respond or
 * weft_http_resp_end) or until the on_abort callback runs — whichever comes
 * first. A handler may answer at once or later from any callback on the
 * same loop (asynchronous handlers: proxies, fan-out). One request per
 * connection is active at a time; pipelined requests wait their turn, so
 * responses always go out in order.
 *
 * Bodies: by default the server buffers the request body (up to
 * opts.max_body, else 413) before calling the handler. Routes registered
 * with WEFT_ROUTE_STREAM get the handler call right after the head and the
 * body through on_body callbacks. Responses may be complete (respond) or
 * streamed (resp_start / resp_write / resp_end); the connection stops
 * reading from the client while its output is above the high-water mark,
 * so a streaming handler is naturally paced by the slowest side.
 *
 * CLIENT. See the second half of this header.
 */
#ifndef WEFT_HTTP_H
#define WEFT_HTTP_H

#include "weft/buf.h"
#include "weft/loop.h"
#include "weft/weft.h"

enum weft_http_method {
    WEFT_METHOD_UNKNOWN = 0,
    WEFT_METHOD_GET,
    WEFT_METHOD_HEAD,
    WEFT_METHOD_POST,
    WEFT_METHOD_PUT,
    WEFT_METHOD_DELETE,
    WEFT_METHOD_CONNECT,
    WEFT_METHOD_OPTIONS,
    WEFT_METHOD_TRACE,
    WEFT_METHOD_PATCH,
};

typedef struct weft_http_server weft_http_server;
typedef struct weft_http_req weft_http_req;

typedef struct weft_http_server_opts {
    uint32_t max_request_line;   /* -> 414; default 8192 */
    uint32_t max_header_bytes;   /* -> 431; default 32768 */
    uint32_t max_headers;        /* -> 431; default 100 */
    uint64_t max_body;           /* buffered bodies -> 413; default 1 MiB */
    uint32_t header_timeout_ms;  /* first byte to end of head -> 408; default 10000 */
    uint32_t body_timeout_ms;    /* no body progress for this long -> 408; default 30000 */
    uint32_t idle_timeout_ms;    /* keep-alive idle -> close; default 60000 */
    uint32_t drain_timeout_ms;   /* graceful shutdown deadline; default 10000 */
    uint32_t max_connections;    /* per worker; beyond: accept and close; default 10000 */
    size_t out_high_water;       /* stop reading above this much queued output; 256 KiB */
    const char *server_name;     /* "Server:" value; NULL/empty = no header; default "weft" */
} weft_http_server_opts;

void weft_http_server_opts_default(weft_http_server_opts *o);

/* Copies opts. Returns NULL on allocation failure. */
weft_http_server *weft_http_server_new(const weft_http_server_opts *opts);
void weft_http_server_free(weft_http_server *s);
const weft_http_server_opts *weft_http_server_opts_get(const weft_http_server *s);

typedef void (*weft_http_handler)(weft_http_req *req, void *ud);

enum weft_route_flags {
    WEFT_ROUTE_PREFIX = 1 << 0, /* path is a prefix ("/api/"), not exact */
    WEFT_ROUTE_STREAM = 1 << 1, /* body via on_body callbacks, not buffered */
};

/* Method mask bits: 1 << WEFT_METHOD_GET etc.; 0 = any method. */
#define WEFT_M(method) (1u << (method))

/* Add a route; first match in registration order wins. A path that matches
 * but whose method does not gets 405 with Allow. Unmatched paths get 404
 * unless a fallback is set. path is copied. */
int weft_http_server_route(weft_http_server *s, unsigned method_mask, const char *path,
                           unsigned flags, weft_http_handler h, void *ud);
void weft_http_server_fallback(weft_http_server *s, unsigned flags, weft_http_handler h, void *ud);

/* Add a listen address "HOST:PORT" ("[::1]:8080", "127.0.0.1:0"). Sockets
 * are created by bind(); port 0 picks one port shared by all workers. */
int weft_http_server_listen(weft_http_server *s, const char *hostport);
/* Create `workers` SO_REUSEPORT sockets per address. Call once, before
 * workers start. Errors name the address (EADDRINUSE etc.) in the log. */
int weft_http_server_bind(weft_http_server *s, int workers);
/* Bound address i as "host:port" (after bind; for port 0). */
const char *weft_http_server_address(const weft_http_server *s, size_t i);
size_t weft_http_server_address_count(const weft_http_server *s);

/* Worker side (call on the worker's thread, with its loop). */
int weft_http_server_start_worker(weft_http_server *s, weft_loop *loop);
/* Begin graceful drain on this worker: close its listeners, let in-flight
 * requests finish (answered with Connection: close), close idle
 * connections, then stop the loop once no connection is left. */
void weft_http_server_drain(weft_http_server *s, weft_loop *loop);
/* Release this worker's state after its loop stopped. */
void weft_http_server_stop_worker(weft_http_server *s, weft_loop *loop);

/* ---- request accessors (valid until the response ends / abort) ---- */
int weft_http_req_method(const weft_http_req *r); /* enum weft_http_method */
weft_str weft_http_req_method_str(const weft_http_req *r);
weft_str weft_http_req_target(const weft_http_req *r);
weft_str weft_http_req_path(const weft_http_req *r);
weft_str weft_http_req_query(const weft_http_req *r);
/* The host the request is for: the authority of an absolute-form target
 * (`GET http://a.example/ HTTP/1.1`), which RFC 9112 3.2.2 says overrides
 * the Host header, else the Host header (empty in an HTTP/1.0 request
 * without one). Route and forward by this, not by the Host header. */
weft_str weft_http_req_host(const weft_http_req *r);
int weft_http_req_version_minor(const weft_http_req *r);
/* First header with this name (case-insensitive); n == 0 and p == NULL if absent. */
weft_str weft_http_req_header(const weft_http_req *r, weft_str name);
size_t weft_http_req_header_count(const weft_http_req *r);
void weft_http_req_header_at(const weft_http_req *r, size_t i, weft_str *name, weft_str *value);
/* Query parameter (raw, not percent-decoded); returns false if absent. */
bool weft_http_req_query_param(const weft_http_req *r, const char *name, weft_str *value);
/* Request body length as framed: Content-Length, 0 without a body, -1 if chunked. */
int64_t weft_http_req_content_length(const weft_http_req *r);
/* Buffered body (non-stream routes). */
weft_str weft_http_req_body(const weft_http_req *r);
/* X-Request-Id from the client, or a generated one (hex, 16 chars). */
weft_str weft_http_req_id(weft_http_req *r);
/* Peer address as "ip:port" text (in the request arena). */
const char *weft_http_req_peer(weft_http_req *r);
weft_loop *weft_http_req_loop(const weft_http_req *r);
/* Request-lifetime memory; freed when the response ends. NULL on OOM. */
void *weft_http_req_alloc(weft_http_req *r, size_t n);
/* Replace the path weft_http_req_path returns (p must live as long as the
 * request: weft_http_req_alloc memory). */
void weft_http_req_set_path(weft_http_req *r, weft_str p);

/* Path normalization (RFC 3986 6.2.2): percent-encoded unreserved
 * characters decoded (%41 -> A, %2E -> .), dot segments removed (never
 * above the root) and, with merge_slashes, runs of '/' made one. Other
 * escapes (%2F, %25...) stay as they are. weft_http_path_normal says
 * whether p already is normal (a cheap scan); weft_http_path_normalize
 * writes the normal form of p (an origin-form path starting with '/') to
 * out, which must hold p.n bytes, and returns its length. */
bool weft_http_path_normal(weft_str p, bool merge_slashes);
size_t weft_http_path_normalize(weft_str p, bool merge_slashes, char *out);
/* Per-request user pointer. */
void weft_http_req_set_data(weft_http_req *r, void *data);
void *weft_http_req_data(const weft_http_req *r);

/* Stream routes: body callbacks. on_data gets each piece of body (valid
 * during the call only). on_end gets 0 at end of body or a WEFT_E* code if
 * the body could not be read (timeout, malformed chunk, client gone). */
typedef void (*weft_http_body_cb)(weft_http_req *r, weft_str data, void *ud);
typedef void (*weft_http_end_cb)(weft_http_req *r, int err, void *ud);
void weft_http_req_on_body(weft_http_req *r, weft_http_body_cb on_data, weft_http_end_cb on_end,
                           void *ud);
/* Stream routes: stop (true) or resume (false) reading the request body
 * from the client, e.g. while the upstream it is forwarded to is slower. The
 * body timeout does not run while paused. */
void weft_http_req_pause_body(weft_http_req *r, bool paused);
/* A client that half-closes its connection normally still gets its
 * response. For long-lived responses (event streams, long polls) call
 * this: end-of-file from the client then aborts the request at once
 * (on_abort runs), as a client that closed its socket is gone. */
void weft_http_req_close_on_eof(weft_http_req *r);
/* Called if the client goes away before the response ends; the request is
 * invalid after it returns. Async handlers must cancel their work here. */
void weft_http_req_on_abort(weft_http_req *r, void (*cb)(weft_http_req *r, void *ud), void *ud);

/* Release hooks: work tied to a request (calls to other services made on
 * its behalf) registers a hook in its own memory; when the request is
 * released — response finished or client gone, after on_abort — each hook
 * is unlinked and its callback runs, so that work can cancel itself instead
 * of touching a dead request. Remove a hook whose work ended first. Any
 * number of hooks; O(1) add and remove. */
typedef struct weft_http_req_hook {
    struct weft_http_req_hook *next, *prev;
    void (*cb)(weft_http_req *r, struct weft_http_req_hook *h);
} weft_http_req_hook;
void weft_http_req_hook_add(weft_http_req *r, weft_http_req_hook *h);
void weft_http_req_hook_remove(weft_http_req *r, weft_http_req_hook *h);
/* When the request's head was complete (microseconds, weft_now_us clock). */
uint64_t weft_http_req_start_us(const weft_http_req *r);

/* ---- responses ---- */
/* Add a response header (copied). Before respond/resp_start. */
int weft_http_resp_header(weft_http_req *r, weft_str name, weft_str value);
/* Complete response with a body (copied). HEAD requests get headers only. */
int weft_http_respond(weft_http_req *r, int status, weft_str content_type, const void *body,
                      size_t len);
/* Short error response: JSON {"error": "<reason>"} with the status. */
int weft_http_respond_error(weft_http_req *r, int status, const char *reason);
/* Streaming: content_length < 0 means chunked (HTTP/1.1) or close-delimited (1.0). */
int weft_http_resp_start(weft_http_req *r, int status, weft_str content_type,
                         int64_t content_length);
/* Queue body bytes (copied). Returns 1 if output is above the high-water
 * mark (the caller should wait for on_drain before writing more), 0 if
 * not, < 0 on error (connection gone). */
int weft_http_resp_write(weft_http_req *r, const void *data, size_t len);
/* cb runs when queued output falls below the low-water mark. */
void weft_http_resp_on_drain(weft_http_req *r, void (*cb)(weft_http_req *r, void *ud), void *ud);
int weft_http_resp_end(weft_http_req *r);
/* Abandon a started response: the connection is closed without completing
 * the message, so the client sees a truncated response, never a shorter
 * body that looks complete (a proxy whose upstream failed mid-body). */
void weft_http_resp_abort(weft_http_req *r);

/* Format an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT"); buf >= 30 bytes. */
size_t weft_http_date(int64_t unix_s, char *buf);

/* ====================================================================== */
/* CLIENT                                                                  */
/*
 * weft_http_client: a per-loop client with a keep-alive connection pool per
 * upstream address. Requests are asynchronous: weft_http_client_request()
 * returns at once and calls on_response (head), on_body (each piece of the
 * body, decoded from chunked if needed) and on_done (0 or an error) on the
 * same loop. Errors are distinct: WEFT_EREFUSED (connect refused),
 * WEFT_ERESET (reset/closed mid-response), WEFT_ETIMEDOUT (connect or
 * response timeout), WEFT_EPROTO (malformed response).
 *
 * Ownership: the client belongs to one loop and must be freed on it. A
 * request's strings are copied at submit time. The weft_http_cresp passed
 * to callbacks is valid only during the callback.
 */
typedef struct weft_http_client weft_http_client;
typedef struct weft_http_creq weft_http_creq; /* an in-flight client request */

typedef struct weft_http_client_opts {
    uint32_t connect_timeout_ms;  /* default 2000 */
    uint32_t response_timeout_ms; /* head must arrive within; default 30000 (0 = none) */
    uint32_t idle_timeout_ms;     /* pooled idle connection lifetime; default 30000 */
    uint32_t max_idle_per_host;   /* default 64 */
    uint64_t max_response_head;   /* default 32768 */
    uint32_t max_conns_per_host;  /* open connections per host; 0 = unlimited (default) */
    uint32_t max_pending_per_host; /* requests queued for a connection when at the limit;
                                      beyond it a request fails with WEFT_ETOOBIG (default 1024) */
} weft_http_client_opts;

void weft_http_client_opts_default(weft_http_client_opts *o);
weft_http_client *weft_http_client_new(weft_loop *loop, const weft_http_client_opts *opts);
/* Cancels outstanding requests (their on_done gets WEFT_ECANCELED). */
void weft_http_client_free(weft_http_client *c);

typedef struct weft_http_cresp {
    int status;
    int version_minor;
    size_t nheaders;
    const weft_str *names;  /* arrays of nheaders entries */
    const weft_str *values;
    int64_t content_length; /* -1 if unknown (chunked / until close) */
} weft_http_cresp;

typedef struct weft_http_creq_opts {
    const char *method;    /* "GET" ... */
    const char *host;      /* upstream IP literal or hostname resolvable by getaddrinfo */
    uint16_t port;
    const char *target;    /* "/path?query" */
    const char *const *headers; /* optional NULL-terminated "Name: value" list; Host added if absent */
    weft_str raw_headers;  /* optional pre-serialized "Name: value\r\n" lines, sent verbatim
                              after `headers` (the caller guarantees them well formed, without
                              Content-Length/Transfer-Encoding; a Host line here counts) */
    const void *body;      /* optional request body (copied) */
    size_t body_len;
    uint32_t timeout_ms;   /* overrides response_timeout_ms if nonzero */
    /* Streamed request body: instead of `body`, the caller feeds the body
     * with weft_http_creq_write() and ends it with weft_http_creq_end().
     * stream_length >= 0 sends it with that Content-Length, -1 chunked. A
     * streamed request always uses a new connection (it cannot be replayed
     * on a stale pooled one). */
    bool body_stream;
    int64_t stream_length;
    /* A request that fails on a reused pooled connection before any
     * response byte is normally resent once on a fresh connection (it most
     * likely lost a race with the server's idle close). The server may
     * also have read it and died before answering: set no_replay for a
     * request that must not reach the server twice (a non-idempotent
     * method the caller does not retry itself); it then fails instead. */
    bool no_replay;
    void (*on_send_drain)(weft_http_creq *q, void *ud); /* queued body fell below low water */
    /* callbacks (any may be NULL) */
    void (*on_response)(weft_http_creq *q, const weft_http_cresp *resp, void *ud);
    void (*on_body)(weft_http_creq *q, weft_str data, void *ud);
    void (*on_done)(weft_http_creq *q, int err, void *ud);
    void *ud;
} weft_http_creq_opts;

/* Submit a request. Returns 0 (callbacks will follow; on_done exactly once)
 * or a negative code if it could not even be queued (then no callback). */
int weft_http_client_request(weft_http_client *c, const weft_http_creq_opts *o,
                             weft_http_creq **out);
/* Cancel an in-flight request: on_done is NOT called afterwards. */
void weft_http_creq_cancel(weft_http_creq *q);
/* Streamed bodies: queue body bytes (copied). Returns 1 when the queued
 * request bytes are above the high-water mark (wait for on_send_drain),
 * 0 otherwise, < 0 if the request has failed or the body was already ended. */
int weft_http_creq_write(weft_http_creq *q, const void *data, size_t len);
/* End a streamed body (sends the last chunk when chunked). */
int weft_http_creq_end(weft_http_creq *q);

/* Whether q's connection was established (false: it failed or timed out
 * while connecting). Valid until on_done returns. */
bool weft_http_creq_connected(const weft_http_creq *q);
/* Whether q never got a connection slot (it waited behind
 * max_conns_per_host and timed out there). Valid until on_done returns. */
bool weft_http_creq_waited(const weft_http_creq *q);
/* Stop (true) or resume (false) reading the response body: backpressure for
 * a proxy whose downstream is slower than its upstream. */
void weft_http_creq_pause(weft_http_creq *q, bool paused);

/* Stats, for tests and metrics. */
typedef struct weft_http_client_stats {
    uint64_t connects;  /* TCP connections opened */
    uint64_t reuses;    /* requests sent on a pooled connection */
    uint64_t idle;      /* connections idle in the pool now */
} weft_http_client_stats;
void weft_http_client_stats_get(const weft_http_client *c, weft_http_client_stats *st);

#endif
