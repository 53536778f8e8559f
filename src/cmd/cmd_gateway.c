/*
 * cmd_gateway.c — `weft gateway`: the API gateway and sidecar proxy.
 *
 * Two HTTP servers share the worker loops: the proxy listener(s) on every
 * worker, and the admin listener on worker 0 only. Configuration reload
 * (SIGHUP or POST /admin/reload) parses and validates the whole file first;
 * an invalid file is rejected with its file:line:column error and the old
 * configuration keeps serving. A valid one is installed on every worker
 * through the loop's post queue, and requests already in flight finish on
 * the configuration they started with.
 */
#include "cli.h"

#include "gateway/gwrt.h"
#include "weft/log.h"
#include "weft/metrics.h"
#include "weft/service.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char weft_help_gateway[] =
    "usage: weft gateway -c FILE [--listen HOST:PORT]... [--admin HOST:PORT]\n"
    "                    [--workers N] [--log-level LEVEL] [--log-format text|json]\n"
    "\n"
    "API gateway and sidecar proxy: routing, load balancing, health checks,\n"
    "outlier detection, circuit breakers, retries with budgets, timeouts.\n"
    "\n"
    "  -c FILE              gateway YAML (see docs/gateway.md, examples/gateway.yaml)\n"
    "  --listen HOST:PORT   proxy listener (repeatable; default from file, else 127.0.0.1:8080)\n"
    "  --admin HOST:PORT    admin API (default from file 'admin', else 127.0.0.1:9901)\n"
    "  --workers N          worker threads (default: CPU count)\n"
    "  --log-level LEVEL    debug, info, warn, error or off\n"
    "  --log-format FMT     text or json\n"
    "  --check              validate the config file and exit (0 = valid)\n"
    "\n"
    "Admin API: GET /admin/config, GET /admin/clusters, POST /admin/reload,\n"
    "GET /metrics, /health, /ready.\n"
    "SIGHUP reloads the config; SIGTERM/SIGINT drain gracefully.\n";

static gw_runtime *g_rt;
static weft_http_server *g_srv, *g_admin;
static const char *g_config_path;
static atomic_bool g_draining;

/* /admin/config shows the text the running config was parsed from. */
static int keep_source(gw_config *c, const weft_conf *doc)
{
    size_t n;
    const char *src = weft_conf_source(doc, &n);
    c->yaml_text = malloc(n + 1);
    if (!c->yaml_text)
        return WEFT_ENOMEM;
    memcpy(c->yaml_text, src, n + 1);
    c->yaml_len = n;
    return 0;
}

/* Parse the whole file again and validate all of it exactly as at start-up:
 * the common keys (listen, admin, workers, log, http) are checked although
 * they only take effect on a restart — a file that reload accepts must also
 * start — then the gateway keys, and unknown keys are errors. */
static int load_config(const char *path, gw_config **out, char *errbuf, size_t errlen)
{
    weft_conf *doc;
    weft_conf_err err;
    int rc = weft_conf_load_file(path, &doc, &err);
    if (rc < 0) {
        snprintf(errbuf, errlen, "%s", err.msg);
        return WEFT_ECONFIG;
    }
    const weft_conf_node *root = weft_conf_root(doc);
    const char *admin = NULL;
    rc = weft_cli_check_common(root, &err);
    if (rc == 0)
        rc = weft_conf_string(root, "admin", &admin, &err);
    if (rc == 0)
        rc = gw_config_from_conf(path, root, out, &err);
    if (rc == 0 && weft_conf_check_unused(root, &err) < 0) {
        gw_config_unref(*out);
        *out = NULL;
        rc = WEFT_ECONFIG;
    }
    if (rc == 0 && (rc = keep_source(*out, doc)) < 0) {
        gw_config_unref(*out);
        *out = NULL;
        snprintf(err.msg, sizeof err.msg, "%s: out of memory", path);
    }
    if (rc < 0)
        snprintf(errbuf, errlen, "%s", err.msg);
    weft_conf_free(doc);
    return rc;
}

static int do_reload(char *errbuf, size_t errlen)
{
    gw_config *cfg = NULL;
    int rc = load_config(g_config_path, &cfg, errbuf, errlen);
    if (rc < 0) {
        atomic_fetch_add(&g_rt->reload_failures, 1);
        weft_log(WEFT_LOG_ERROR, "reload rejected; old config keeps serving",
                 WEFT_KV_STR("error", errbuf));
        return rc;
    }
    gw_runtime_install(g_rt, cfg);
    weft_log(WEFT_LOG_INFO, "config reloaded", WEFT_KV_STR("file", g_config_path),
             WEFT_KV_UINT("routes", cfg->nroutes), WEFT_KV_UINT("clusters", cfg->nclusters));
    return 0;
}

static void on_sighup(void *arg)
{
    (void)arg;
    char err[600];
    do_reload(err, sizeof err);
}

/* ---- admin handlers ---- */

static const weft_str JSON = {"application/json", 16};

static void a_config(weft_http_req *r, void *ud)
{
    (void)ud;
    /* the running config, with the text it was parsed from (not the file
     * as it is now: it may hold an edit not yet reloaded, or rejected) */
    gw_config *c = gw_runtime_config(g_rt);
    char *file = weft_utf8_lossy(c->path, strlen(c->path)); /* need not be UTF-8 */
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:s%}", "file", file ? file : "", "routes",
                          (json_int_t)c->nroutes, "clusters", (json_int_t)c->nclusters,
                          "reloads", (json_int_t)atomic_load(&g_rt->reloads), "reload_failures",
                          (json_int_t)atomic_load(&g_rt->reload_failures), "yaml",
                          c->yaml_text ? c->yaml_text : "", c->yaml_text ? c->yaml_len : 0);
    char *s = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    if (s)
        weft_http_respond(r, 200, JSON, s, strlen(s));
    else
        weft_http_respond_error(r, 500, "cannot render config");
    free(s);
    free(file);
    json_decref(o);
    gw_config_unref(c);
}

static void a_clusters(weft_http_req *r, void *ud)
{
    (void)ud;
    gw_worker *w = g_rt->workers[weft_loop_index(weft_http_req_loop(r))];
    char *s = w ? gw_clusters_json(w) : NULL;
    if (!s) {
        weft_http_respond_error(r, 500, "no worker state");
        return;
    }
    weft_http_respond(r, 200, JSON, s, strlen(s));
    free(s);
}

static void a_reload(weft_http_req *r, void *ud)
{
    (void)ud;
    char err[600];
    if (do_reload(err, sizeof err) < 0) {
        /* the reason quotes the file name, which need not be UTF-8 */
        char *why = weft_utf8_lossy(err, strlen(err));
        weft_json_respond(r, 400,
                          json_pack("{s:s, s:s}", "status", "rejected", "error", why ? why : err));
        free(why);
        return;
    }
    static const char ok[] = "{\"status\":\"reloaded\"}";
    weft_http_respond(r, 200, JSON, ok, sizeof ok - 1);
}

/* ---- runtime hooks ---- */

static int w_start(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_metrics_attach(weft_metrics_global(), weft_loop_index(loop));
    int rc = gw_worker_start(g_rt, loop);
    if (rc == 0)
        rc = weft_http_server_start_worker(g_srv, loop);
    if (rc == 0 && weft_loop_index(loop) == 0)
        rc = weft_http_server_start_worker(g_admin, loop);
    return rc;
}

static void w_drain(weft_loop *loop, void *arg)
{
    (void)arg;
    atomic_store(&g_draining, true);
    weft_http_server_drain(g_srv, loop);
}

static void w_stop(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_http_server_stop_worker(g_srv, loop);
    if (weft_loop_index(loop) == 0)
        weft_http_server_stop_worker(g_admin, loop);
    gw_worker_stop(g_rt, loop);
}

int weft_cmd_gateway(int argc, char **argv)
{
    static const char *const extra[] = {"--admin", NULL};
    /* --check takes no value: validate the file and exit (like nginx -t) */
    bool check = false;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--check") == 0)
            check = true;
        else
            argv[n++] = argv[i];
    }
    argc = n;
    weft_cli cli;
    int rc = weft_cli_parse(&cli, "gateway", argc, argv, extra, weft_help_gateway);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (!cli.config_path) {
        fprintf(stderr, "weft gateway: a config file is required (-c FILE); see 'weft help "
                        "gateway'\n");
        return 2;
    }
    g_config_path = cli.config_path;
    if (weft_cli_load_common(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    const char *admin = weft_cli_extra(&cli, "--admin");
    weft_conf_err err;
    const char *admin_file = NULL;
    if (weft_conf_string(weft_conf_root(cli.conf), "admin", &admin_file, &err) < 0) {
        fprintf(stderr, "weft gateway: %s\n", err.msg);
        weft_cli_release(&cli);
        return 2;
    }
    if (!admin)
        admin = admin_file ? admin_file : "127.0.0.1:9901";
    gw_config *cfg = NULL;
    if (gw_config_from_conf(cli.config_path, weft_conf_root(cli.conf), &cfg, &err) < 0) {
        fprintf(stderr, "weft gateway: %s\n", err.msg);
        weft_cli_release(&cli);
        return 2;
    }
    if (keep_source(cfg, cli.conf) < 0) {
        fprintf(stderr, "weft gateway: out of memory\n");
        gw_config_unref(cfg);
        weft_cli_release(&cli);
        return 1;
    }
    if (weft_cli_finish(&cli) < 0) {
        gw_config_unref(cfg);
        weft_cli_release(&cli);
        return 2;
    }
    if (check) {
        printf("%s: ok (%zu routes, %zu clusters)\n", cli.config_path, cfg->nroutes,
               cfg->nclusters);
        gw_config_unref(cfg);
        weft_cli_release(&cli);
        return 0;
    }
    g_srv = weft_http_server_new(&cli.http);
    weft_http_server_opts aopts;
    weft_http_server_opts_default(&aopts);
    g_admin = weft_http_server_new(&aopts);
    g_rt = gw_runtime_new(cfg, g_srv, cli.workers);
    if (!g_srv || !g_admin || !g_rt) {
        rc = 1;
        goto out;
    }
    /* bodies stream through the gateway; it enforces http.max_body itself */
    weft_http_server_fallback(g_srv, WEFT_ROUTE_STREAM, gw_handle, g_rt);
    g_rt->max_body = cli.http.max_body;
    const unsigned GET = WEFT_M(WEFT_METHOD_GET);
    weft_http_server_route(g_admin, GET, "/admin/config", 0, a_config, NULL);
    weft_http_server_route(g_admin, GET, "/admin/clusters", 0, a_clusters, NULL);
    weft_http_server_route(g_admin, WEFT_M(WEFT_METHOD_POST), "/admin/reload", 0, a_reload, NULL);
    weft_cli_std_routes(g_admin, &g_draining);
    if (cli.nlisten == 0)
        cli.listen[cli.nlisten++] = "127.0.0.1:8080";
    for (int i = 0; i < cli.nlisten; i++) {
        if (weft_http_server_listen(g_srv, cli.listen[i]) < 0) {
            fprintf(stderr, "weft gateway: bad listen address '%s'\n", cli.listen[i]);
            rc = 2;
            goto out;
        }
    }
    if (weft_http_server_listen(g_admin, admin) < 0) {
        fprintf(stderr, "weft gateway: bad admin address '%s'\n", admin);
        rc = 2;
        goto out;
    }
    if (weft_http_server_bind(g_srv, cli.workers) < 0 || weft_http_server_bind(g_admin, 1) < 0) {
        rc = 1;
        goto out;
    }
    for (size_t i = 0; i < weft_http_server_address_count(g_srv); i++)
        weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "gateway"),
                 WEFT_KV_STR("addr", weft_http_server_address(g_srv, i)),
                 WEFT_KV_INT("workers", cli.workers), WEFT_KV_UINT("routes", cfg->nroutes),
                 WEFT_KV_UINT("clusters", cfg->nclusters));
    weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "gateway-admin"),
             WEFT_KV_STR("addr", weft_http_server_address(g_admin, 0)));
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop, .reload = on_sighup};
    rc = weft_rt_run(cli.workers, &hooks, (int)cli.http.drain_timeout_ms);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "exiting", WEFT_KV_STR("error", weft_strerror(rc)));
        rc = 1;
    } else {
        weft_log(WEFT_LOG_INFO, "stopped");
    }
    cfg = NULL; /* owned by the runtime */
out:
    if (g_rt)
        gw_runtime_free(g_rt);
    else
        gw_config_unref(cfg);
    weft_http_server_free(g_srv);
    weft_http_server_free(g_admin);
    weft_cli_release(&cli);
    return rc;
}
