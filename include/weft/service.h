/*
 * service.h — write a Weft service in a few dozen lines.
 *
 * A weft_service is the foundation's HTTP server plus what every service
 * in a system needs and should not write again:
 *
 * - /health, /ready and /metrics (Prometheus text: the server's request
 *   counts and latencies, the client's calls, retries and breakers);
 * - self-registration in weft registry with a TTL lease, heartbeats every
 *   ttl/3, re-registration when the registry forgot the instance (404 on a
 *   heartbeat, a registry restart without data), retried with backoff while
 *   the registry is unreachable;
 * - on SIGTERM/SIGINT: /ready turns 503 and the instance is deregistered at
 *   once, the service keeps serving for drain_delay_ms so that gateways and
 *   clients watching the registry stop sending, then it drains (in-flight
 *   requests finish) and weft_service_run returns;
 * - one weft_client per worker for calling other services by name
 *   (weft_service_client), and JSON helpers (jansson).
 *
 * Ownership: options are copied by weft_service_new. Routes follow
 * weft_http_server_route. Threading: configure on one thread, then
 * weft_service_run starts `workers` threads, each with its own loop, and
 * blocks until the service has drained.
 */
#ifndef WEFT_SERVICE_H
#define WEFT_SERVICE_H

#include "weft/client.h"
#include "weft/http.h"

#include <jansson.h>
#include <stdatomic.h>

typedef struct weft_service weft_service;

typedef struct weft_service_opts {
    const char *name;           /* service name in the registry (required) */
    const char *id;             /* instance id; default NAME-PORT */
    const char *listen;         /* "HOST:PORT"; default "127.0.0.1:0" */
    const char *advertise;      /* address to register; default the listen host */
    const char *registry;       /* "http://HOST:PORT"; NULL: no registration, no client */
    const char *zone;
    const char *version;
    const char *const *tags;    /* NULL-terminated, optional */
    uint32_t weight;            /* 1..1000; default 1 */
    uint32_t ttl_ms;            /* lease; default 10000 (heartbeat every ttl/3) */
    uint32_t drain_delay_ms;    /* keep serving after deregistering; default 300 */
    int workers;                /* default 1 */
    weft_http_server_opts http;
    weft_client_opts client;    /* registry and zone are filled from the above */
} weft_service_opts;

void weft_service_opts_default(weft_service_opts *o);
/* Apply the common command line: --listen, --registry, --id, --zone,
 * --advertise, --weight, --workers, --ttl MS, --lb ALGO (the client's
 * balancer), --log-level, --log-format,
 * --help. Strings point into argv. 0, 1 after printing help, or < 0 after
 * printing an error to stderr. */
int weft_service_args(weft_service_opts *o, int argc, char **argv, const char *usage);

/* NULL on allocation failure or invalid options (logged). */
weft_service *weft_service_new(const weft_service_opts *o);
void weft_service_free(weft_service *s);

/* Add a route (weft_http_server_route semantics). Before run. */
int weft_service_route(weft_service *s, unsigned method_mask, const char *path, unsigned flags,
                       weft_http_handler h, void *ud);
weft_http_server *weft_service_http(weft_service *s);

/* Bind, start the workers, register, serve; returns 0 after a graceful
 * stop (SIGTERM/SIGINT or weft_rt_shutdown), < 0 if it could not start. */
int weft_service_run(weft_service *s);
/* "host:port" actually bound (valid from run until free). */
const char *weft_service_address(const weft_service *s);

/* The calling worker's client (from a handler or callback on a worker's
 * loop); NULL without a registry. */
weft_client *weft_service_client(weft_http_req *r);

/* ---- JSON in and out ---- */
/* The request body parsed as JSON. On failure the request has been
 * answered (400 with a JSON error naming line and column) and NULL is
 * returned. New reference. */
json_t *weft_json_body(weft_http_req *r);
/* Respond with v serialized (compact); steals the reference. */
int weft_json_respond(weft_http_req *r, int status, json_t *v);

/* /health, /ready (503 while *draining) and /metrics on any server; used
 * by every weft subcommand and by weft_service. */
int weft_http_std_routes(weft_http_server *s, const atomic_bool *draining);

#endif
