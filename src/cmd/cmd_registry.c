/*
 * cmd_registry.c — `weft registry`: the service registry.
 *
 * One worker owns the registry state (see src/registry/api.c); the HTTP
 * server, the flags and the config file follow the convention of every
 * other subcommand.
 */
#include "cli.h"

#include "registry/registry.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <stdatomic.h>
#include <stdio.h>

const char weft_help_registry[] =
    "usage: weft registry [--listen HOST:PORT]... [--dns HOST:PORT] [--data DIR | --store URL]\n"
    "                     [-c FILE] [--log-level LEVEL] [--log-format text|json]\n"
    "\n"
    "Service registry: register, deregister, heartbeat (TTL leases), status,\n"
    "list and watch (blocking queries and a server-sent event stream).\n"
    "See docs/registry.md.\n"
    "\n"
    "  --listen HOST:PORT   HTTP API (default 127.0.0.1:8700)\n"
    "  --dns HOST:PORT      also answer DNS (UDP and TCP): NAME.service.weft A/AAAA,\n"
    "                       _NAME._tcp.service.weft SRV (see docs/registry.md)\n"
    "  --data DIR           keep the registry on disk (snapshot + journal, fsync'd):\n"
    "                       registrations survive restarts; without it, memory only\n"
    "  --store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]\n"
    "                       keep the registry in an etcd v3 cluster instead: several\n"
    "                       registry nodes then serve the same registry\n"
    "  -c FILE              YAML config (listen, log, http.*, data, store, dns, registry.{history,\n"
    "                       self_preservation_threshold, self_preservation_min})\n"
    "  --log-level LEVEL    debug, info, warn, error or off\n"
    "  --log-format FMT     text or json\n"
    "\n"
    "The registry runs one worker: one owner for its state, no locks.\n";

static reg_server *g_rs;
static weft_http_server *g_srv;
static atomic_bool g_draining;

static int w_start(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_metrics_attach(weft_metrics_global(), weft_loop_index(loop));
    int rc = reg_server_start(g_rs, loop);
    if (rc == 0)
        rc = weft_http_server_start_worker(g_srv, loop);
    return rc;
}

static void w_drain(weft_loop *loop, void *arg)
{
    (void)arg;
    atomic_store(&g_draining, true);
    reg_server_drain(g_rs);
    weft_http_server_drain(g_srv, loop);
}

static void w_stop(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_http_server_stop_worker(g_srv, loop);
    reg_server_stop(g_rs);
}

int weft_cmd_registry(int argc, char **argv)
{
    static const char *const extra[] = {"--data", "--dns", "--store", NULL};
    weft_cli cli;
    int rc = weft_cli_parse(&cli, "registry", argc, argv, extra, weft_help_registry);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    cli.http.max_body = 64 * 1024; /* registrations are small */
    if (weft_cli_load_common(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    reg_store_opts so;
    reg_store_opts_default(&so);
    if (cli.conf) {
        weft_conf_err err;
        const weft_conf_node *rn = weft_conf_get(weft_conf_root(cli.conf), "registry");
        int64_t hist = (int64_t)so.history, pmin = (int64_t)so.preservation_min;
        int64_t pct = (int64_t)(so.preservation_threshold * 100 + 0.5);
        if (rn && (weft_conf_int(rn, "history", 16, 10000000, &hist, &err) < 0 ||
                   weft_conf_int(rn, "self_preservation_threshold", 1, 100, &pct, &err) < 0 ||
                   weft_conf_int(rn, "self_preservation_min", 0, 10000000, &pmin, &err) < 0)) {
            fprintf(stderr, "weft registry: %s\n", err.msg);
            weft_cli_release(&cli);
            return 2;
        }
        so.history = (size_t)hist;
        so.preservation_threshold = (double)pct / 100.0;
        so.preservation_min = (size_t)pmin;
    }
    /* --data, --dns, --store, else the config file's data, dns, store keys
     * (read before weft_cli_finish, which rejects keys nobody read) */
    static const char *const skey[] = {"data", "dns", "store"};
    const char *sval[] = {weft_cli_extra(&cli, "--data"), weft_cli_extra(&cli, "--dns"),
                          weft_cli_extra(&cli, "--store")};
    for (size_t k = 0; k < 3 && cli.conf; k++) {
        weft_conf_err err;
        const char *v = NULL;
        if (weft_conf_string(weft_conf_root(cli.conf), skey[k], &v, &err) < 0) {
            fprintf(stderr, "weft registry: %s\n", err.msg);
            weft_cli_release(&cli);
            return 2;
        }
        if (!sval[k])
            sval[k] = v;
    }
    const char *data = sval[0], *dns = sval[1], *store = sval[2];
    if (weft_cli_finish(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    if (cli.workers != 1 && cli.workers != weft_cpu_count())
        weft_log(WEFT_LOG_INFO, "the registry runs one worker", WEFT_KV_INT("requested", cli.workers));
    g_rs = reg_server_new(&so);
    g_srv = weft_http_server_new(&cli.http);
    if (!g_rs || !g_srv) {
        rc = 1;
        goto out;
    }
    if (store && data) {
        fprintf(stderr, "weft registry: --data and --store are exclusive: the state lives "
                        "either on local disk or in etcd\n");
        rc = 2;
        goto out;
    }
    if (store) {
        reg_etcd_url url;
        char why[160];
        if (reg_etcd_parse_url(store, &url, why, sizeof why) < 0) {
            fprintf(stderr, "weft registry: bad store URL '%s': %s\n", store, why);
            rc = 2;
            goto out;
        }
        reg_server_set_etcd(g_rs, &url);
    }
    if (data)
        reg_server_set_data_dir(g_rs, data);
    if (dns)
        reg_server_set_dns(g_rs, dns);
    reg_server_routes(g_rs, g_srv);
    weft_cli_std_routes(g_srv, &g_draining);
    if (cli.nlisten == 0)
        cli.listen[cli.nlisten++] = "127.0.0.1:8700";
    for (int i = 0; i < cli.nlisten; i++)
        if (weft_http_server_listen(g_srv, cli.listen[i]) < 0) {
            fprintf(stderr, "weft registry: bad listen address '%s'\n", cli.listen[i]);
            rc = 2;
            goto out;
        }
    if (weft_http_server_bind(g_srv, 1) < 0) {
        rc = 1;
        goto out;
    }
    for (size_t i = 0; i < weft_http_server_address_count(g_srv); i++)
        weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "registry"),
                 WEFT_KV_STR("addr", weft_http_server_address(g_srv, i)));
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop};
    rc = weft_rt_run(1, &hooks, (int)cli.http.drain_timeout_ms);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "exiting", WEFT_KV_STR("error", weft_strerror(rc)));
        rc = 1;
    } else {
        weft_log(WEFT_LOG_INFO, "stopped");
    }
out:
    weft_http_server_free(g_srv);
    reg_server_free(g_rs);
    weft_cli_release(&cli);
    return rc;
}
