/*
 * cmd_hello.c — `weft hello`: the first service built on libweft.
 *
 * It exists so the demo and the tests have something real to run, and it
 * exercises each part of the HTTP server API a service needs:
 *   GET  /hello[?name=X]  JSON greeting (fixed 12-byte body without name)
 *   GET  /health, /ready  liveness and readiness (ready turns 503 on drain)
 *   GET  /metrics         Prometheus text exposition
 *   POST /echo            streams the request body back (backpressure both ways)
 *   GET  /bytes?n=N       streams N bytes of a fixed pattern (download test)
 *   GET  /delay?ms=N      answers after N ms (an asynchronous handler)
 */
#include "cli.h"

#include "weft/http.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

const char weft_help_hello[] =
    "usage: weft hello [--listen HOST:PORT]... [--workers N] [-c FILE]\n"
    "                  [--log-level LEVEL] [--log-format text|json]\n"
    "\n"
    "A small JSON service built on libweft.\n"
    "\n"
    "  --listen HOST:PORT   address to serve on (repeatable; default 127.0.0.1:8080)\n"
    "  --workers N          worker threads, one event loop each (default: CPU count)\n"
    "  -c FILE              YAML config (keys: listen, workers, log.level, log.format,\n"
    "                       http.{header_timeout, body_timeout, idle_timeout,\n"
    "                       drain_timeout, max_body, max_request_line,\n"
    "                       max_header_bytes, max_headers, max_connections,\n"
    "                       server_name}); flags override the file\n"
    "  --log-level LEVEL    debug, info, warn, error or off (default info)\n"
    "  --log-format FMT     text (key=value) or json (default text)\n"
    "\n"
    "Endpoints:\n"
    "  GET  /hello[?name=X]  {\"msg\":\"hi\"}\n"
    "  GET  /health          liveness\n"
    "  GET  /ready           readiness (503 while draining)\n"
    "  GET  /metrics         Prometheus metrics\n"
    "  POST /echo            streams the request body back\n"
    "  GET  /bytes?n=N       streams N bytes\n"
    "  GET  /delay?ms=N      responds after N milliseconds (N <= 60000)\n"
    "\n"
    "SIGTERM/SIGINT drain gracefully (finish in-flight requests, then exit 0).\n";

static atomic_bool draining;
static weft_http_server *server;

static const weft_str JSON = {"application/json", 16};

static void h_hello(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str name;
    if (!weft_http_req_query_param(r, "name", &name) || name.n == 0) {
        static const char body[] = "{\"msg\":\"hi\"}";
        weft_http_respond(r, 200, JSON, body, sizeof body - 1);
        return;
    }
    if (name.n > 256) {
        weft_http_respond_error(r, 400, "name too long");
        return;
    }
    char greet[300];
    int n = snprintf(greet, sizeof greet, "hi %.*s", (int)name.n, name.p);
    json_t *o = json_pack("{s:s%}", "msg", greet, (size_t)n);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (!s) {
        /* not valid UTF-8 (jansson rejects it) */
        json_decref(o);
        weft_http_respond_error(r, 400, "name must be UTF-8");
        return;
    }
    weft_http_respond(r, 200, JSON, s, strlen(s));
    free(s);
    json_decref(o);
}

/* ---- /echo: stream the body back as it arrives ---- */

static void echo_data(weft_http_req *r, weft_str data, void *ud)
{
    (void)ud;
    weft_http_resp_write(r, data.p, data.n); /* the server pauses reads above high water */
}

static void echo_end(weft_http_req *r, int err, void *ud)
{
    (void)ud;
    if (err == 0)
        weft_http_resp_end(r);
}

static void h_echo(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str ct = weft_http_req_header(r, WEFT_STR("Content-Type"));
    int64_t len = weft_http_req_content_length(r); /* -1: chunked in, chunked out */
    if (weft_http_resp_start(r, 200, ct.n ? ct : WEFT_STR("application/octet-stream"), len) < 0)
        return;
    weft_http_req_on_body(r, echo_data, echo_end, NULL); /* an empty body ends at once */
}

/* ---- /bytes: produce N bytes, paced by on_drain ---- */

typedef struct bytes_state {
    uint64_t left;
    uint64_t pos;
} bytes_state;

static char pattern[16384];

static void bytes_pump(weft_http_req *r, void *ud)
{
    bytes_state *st = ud;
    while (st->left) {
        /* byte i of the stream is 'a' + i % 26 */
        size_t off = (size_t)(st->pos % 26);
        size_t n = sizeof pattern - 26;
        if (n > st->left)
            n = (size_t)st->left;
        int rc = weft_http_resp_write(r, pattern + off, n);
        if (rc < 0)
            return;
        st->left -= n;
        st->pos += n;
        if (rc == 1 && st->left)
            return; /* wait for on_drain */
    }
    weft_http_resp_end(r);
}

static void h_bytes(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str nv;
    uint64_t n = 0;
    if (!weft_http_req_query_param(r, "n", &nv) || nv.n == 0 || nv.n > 12) {
        weft_http_respond_error(r, 400, "n must be a number of bytes up to 10^12");
        return;
    }
    for (size_t i = 0; i < nv.n; i++) {
        if (nv.p[i] < '0' || nv.p[i] > '9') {
            weft_http_respond_error(r, 400, "n must be a number of bytes up to 10^12");
            return;
        }
        n = n * 10 + (uint64_t)(nv.p[i] - '0');
    }
    bytes_state *st = weft_http_req_alloc(r, sizeof *st);
    if (!st) {
        weft_http_respond_error(r, 500, "out of memory");
        return;
    }
    st->left = n;
    st->pos = 0;
    if (weft_http_resp_start(r, 200, WEFT_STR("application/octet-stream"), (int64_t)n) < 0)
        return;
    weft_http_resp_on_drain(r, bytes_pump, st);
    bytes_pump(r, st);
}

/* ---- /delay: an asynchronous handler ---- */

typedef struct delay_state {
    weft_timer t;
    weft_http_req *r;
    uint64_t ms;
} delay_state;

static void delay_fire(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    delay_state *d = t->data;
    char body[64];
    int n = snprintf(body, sizeof body, "{\"delayed_ms\":%llu}", (unsigned long long)d->ms);
    weft_http_respond(d->r, 200, JSON, body, (size_t)n);
}

static void delay_abort(weft_http_req *r, void *ud)
{
    delay_state *d = ud;
    weft_timer_stop(weft_http_req_loop(r), &d->t);
}

static void h_delay(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str v;
    uint64_t ms = 0;
    if (weft_http_req_query_param(r, "ms", &v)) {
        for (size_t i = 0; i < v.n && i < 6; i++) {
            if (v.p[i] < '0' || v.p[i] > '9') {
                ms = UINT64_MAX;
                break;
            }
            ms = ms * 10 + (uint64_t)(v.p[i] - '0');
        }
    }
    if (ms > 60000) {
        weft_http_respond_error(r, 400, "ms must be 0..60000");
        return;
    }
    delay_state *d = weft_http_req_alloc(r, sizeof *d);
    if (!d) {
        weft_http_respond_error(r, 500, "out of memory");
        return;
    }
    d->r = r;
    d->ms = ms;
    weft_timer_init(&d->t, delay_fire, d);
    weft_timer_start(weft_http_req_loop(r), &d->t, ms);
    weft_http_req_on_abort(r, delay_abort, d);
}

/* ---- runtime hooks ---- */

static int w_start(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_metrics_attach(weft_metrics_global(), weft_loop_index(loop));
    return weft_http_server_start_worker(server, loop);
}

static void w_drain(weft_loop *loop, void *arg)
{
    (void)arg;
    atomic_store(&draining, true);
    weft_http_server_drain(server, loop);
}

static void w_stop(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_http_server_stop_worker(server, loop);
}

int weft_cmd_hello(int argc, char **argv)
{
    weft_cli cli;
    int rc = weft_cli_parse(&cli, "hello", argc, argv, NULL, weft_help_hello);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (weft_cli_load_common(&cli) < 0 || weft_cli_finish(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (char)('a' + i % 26);
    server = weft_http_server_new(&cli.http);
    if (!server) {
        weft_cli_release(&cli);
        return 1;
    }
    const unsigned GET = WEFT_M(WEFT_METHOD_GET);
    weft_http_server_route(server, GET, "/hello", 0, h_hello, NULL);
    weft_cli_std_routes(server, &draining);
    weft_http_server_route(server, WEFT_M(WEFT_METHOD_POST) | WEFT_M(WEFT_METHOD_PUT), "/echo",
                           WEFT_ROUTE_STREAM, h_echo, NULL);
    weft_http_server_route(server, GET, "/bytes", 0, h_bytes, NULL);
    weft_http_server_route(server, GET, "/delay", 0, h_delay, NULL);
    if (cli.nlisten == 0)
        cli.listen[cli.nlisten++] = "127.0.0.1:8080";
    for (int i = 0; i < cli.nlisten; i++) {
        if (weft_http_server_listen(server, cli.listen[i]) < 0) {
            fprintf(stderr, "weft hello: bad listen address '%s' (want HOST:PORT)\n",
                    cli.listen[i]);
            rc = 2;
            goto out;
        }
    }
    if (weft_http_server_bind(server, cli.workers) < 0) {
        rc = 1;
        goto out;
    }
    for (size_t i = 0; i < weft_http_server_address_count(server); i++)
        weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "hello"),
                 WEFT_KV_STR("addr", weft_http_server_address(server, i)),
                 WEFT_KV_INT("workers", cli.workers), WEFT_KV_STR("version", WEFT_VERSION));
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop};
    rc = weft_rt_run(cli.workers, &hooks, (int)cli.http.drain_timeout_ms);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "exiting", WEFT_KV_STR("error", weft_strerror(rc)));
        rc = 1;
    } else {
        weft_log(WEFT_LOG_INFO, "stopped");
    }
out:
    weft_http_server_free(server);
    server = NULL;
    weft_cli_release(&cli);
    return rc;
}
