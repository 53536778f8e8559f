/*
 * cmd_log.c — `weft log`: the durable event log that speaks Kafka.
 *
 * One worker owns the log (topics, partitions, groups and connections;
 * see src/eventlog/elog.h): the produce path takes no lock, and each
 * partition's fsyncs run on its own flusher thread. Flags and config
 * follow the convention of every other subcommand.
 */
#include "cli.h"

#include "eventlog/elog.h"
#include "eventlog/streams.h"
#include "http/http_int.h"
#include "weft/log.h"
#include "weft/metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char weft_help_log[] =
    "usage: weft log [--listen HOST:PORT] --data DIR [--advertise HOST:PORT]\n"
    "                [--http HOST:PORT] [-c FILE] [--log-level LEVEL] [--log-format text|json]\n"
    "\n"
    "A durable event log that speaks the Kafka wire protocol (kcat, librdkafka,\n"
    "kafka-python work unmodified). See docs/eventlog.md.\n"
    "\n"
    "  --listen HOST:PORT     Kafka listener (default 127.0.0.1:9092)\n"
    "  --data DIR             where topics live (required)\n"
    "  --http HOST:PORT       also serve the event-sourcing streams API (HTTP/JSON, SSE)\n"
    "                         and /health, /ready, /metrics there (config: http, or\n"
    "                         http.listen beside the http.* server options)\n"
    "  --advertise HOST:PORT  the address Metadata gives clients (default: the listener)\n"
    "  -c FILE                YAML config: listen, data, log.{auto_create, partitions,\n"
    "                         retention_ms, retention_bytes, segment_bytes, fsync\n"
    "                         (always|interval), fsync_interval_ms, group_initial_delay_ms,\n"
    "                         retention_check_ms, preallocate_bytes}\n";

static elog *g_log;
/* --http: the streams API and its server, on the log's loop */
static elog_streams *g_streams;
static weft_http_server *g_srv;
static atomic_bool g_draining;

static int w_start(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_metrics_attach(weft_metrics_global(), weft_loop_index(loop));
    int rc = elog_start(g_log, loop);
    if (rc == 0 && g_streams)
        rc = elog_streams_start(g_streams, loop);
    if (rc == 0 && g_srv)
        rc = weft_http_server_start_worker(g_srv, loop);
    /* announced once the streams are recovered and served (not at bind) */
    for (size_t i = 0; rc == 0 && g_srv && i < weft_http_server_address_count(g_srv); i++)
        weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "streams"),
                 WEFT_KV_STR("addr", weft_http_server_address(g_srv, i)));
    return rc;
}

/* Kafka requests are done: the HTTP side drains next and stops the loop
 * when its last connection is gone (appends in flight are answered). */
static void kafka_drained(weft_loop *loop, void *ud)
{
    (void)ud;
    weft_http_server_drain(g_srv, loop);
}

static void w_drain(weft_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    if (!g_srv) {
        elog_drain(g_log);
        return;
    }
    atomic_store(&g_draining, true);
    elog_streams_drain(g_streams);
    elog_drain_then(g_log, kafka_drained, NULL);
}

static void w_stop(weft_loop *loop, void *arg)
{
    (void)arg;
    if (g_srv)
        weft_http_server_stop_worker(g_srv, loop);
    if (g_streams)
        elog_streams_stop(g_streams);
    elog_stop(g_log);
}

/* The streams listener: --http, else the config's http (an address, or a
 * map whose listen key is one; its other keys are the server options that
 * weft_cli_load_common read). */
static int read_http_conf(weft_cli *cli, const char **addr)
{
    const weft_conf_node *n = cli->conf ? weft_conf_get(weft_conf_root(cli->conf), "http") : NULL;
    weft_conf_err err;
    const char *v = NULL;
    int rc = 0;
    if (n && weft_conf_kind(n) == WEFT_CONF_SCALAR)
        rc = weft_conf_string(weft_conf_root(cli->conf), "http", &v, &err);
    else if (n)
        rc = weft_conf_string(n, "listen", &v, &err);
    if (rc == 0 && v) {
        const weft_conf_node *at = weft_conf_kind(n) == WEFT_CONF_SCALAR ? n
                                                                         : weft_conf_get(n, "listen");
        struct sockaddr_storage sa;
        socklen_t len;
        if (weft_http_parse_hostport(v, &sa, &len) < 0)
            rc = weft_conf_errorf(&err, at, NULL, "bad listen address '%s' (want HOST:PORT)", v);
    }
    if (rc < 0) {
        fprintf(stderr, "weft log: %s\n", err.msg);
        return -1;
    }
    *addr = weft_cli_extra(cli, "--http") ? weft_cli_extra(cli, "--http") : v;
    return 0;
}

/* Set up the HTTP server of the streams API on addr (before the workers). */
static int streams_setup(weft_cli *cli, const char *addr)
{
    g_srv = weft_http_server_new(&cli->http);
    g_streams = elog_streams_new(g_log);
    if (!g_srv || !g_streams || elog_streams_routes(g_streams, g_srv) < 0 ||
        weft_cli_std_routes(g_srv, &g_draining) < 0)
        return 1;
    if (weft_http_server_listen(g_srv, addr) < 0) {
        fprintf(stderr, "weft log: --http: bad listen address '%s'\n", addr);
        return 2;
    }
    return weft_http_server_bind(g_srv, 1) < 0 ? 1 : 0;
}

static void streams_free(void)
{
    weft_http_server_free(g_srv);
    elog_streams_free(g_streams);
    g_srv = NULL;
    g_streams = NULL;
}

static int read_conf(weft_cli *cli, elog_opts *o, const char **data)
{
    weft_conf_err err;
    const weft_conf_node *root = weft_conf_root(cli->conf);
    if (weft_conf_string(root, "data", data, &err) < 0)
        goto bad;
    const weft_conf_node *n = weft_conf_get(root, "log");
    if (!n)
        return 0;
    int64_t parts = o->defaults.partitions, rms = o->defaults.log.retention_ms,
            rbytes = o->defaults.log.retention_bytes, seg = (int64_t)o->defaults.log.segment_bytes,
            fint = o->defaults.log.fsync_interval_ms, delay = o->group_initial_delay_ms,
            rcheck = o->retention_check_ms, pre = (int64_t)o->defaults.log.preallocate_bytes;
    static const char *const fsyncs[] = {"always", "interval", NULL};
    int fs = -1;
    if (weft_conf_bool(n, "auto_create", &o->auto_create, &err) < 0 ||
        weft_conf_int(n, "partitions", 1, 10000, &parts, &err) < 0 ||
        weft_conf_int(n, "retention_ms", -1, INT64_MAX, &rms, &err) < 0 ||
        weft_conf_int(n, "retention_bytes", -1, INT64_MAX, &rbytes, &err) < 0 ||
        weft_conf_int(n, "segment_bytes", 4096, 1LL << 40, &seg, &err) < 0 ||
        weft_conf_int(n, "fsync_interval_ms", 1, 3600000, &fint, &err) < 0 ||
        weft_conf_int(n, "group_initial_delay_ms", 0, 300000, &delay, &err) < 0 ||
        weft_conf_int(n, "retention_check_ms", 100, 3600000, &rcheck, &err) < 0 ||
        weft_conf_int(n, "preallocate_bytes", 0, 1LL << 30, &pre, &err) < 0 ||
        weft_conf_enum(n, "fsync", fsyncs, &fs, &err) < 0)
        goto bad;
    o->defaults.partitions = (int32_t)parts;
    o->defaults.log.retention_ms = rms;
    o->defaults.log.retention_bytes = rbytes;
    o->defaults.log.segment_bytes = (uint64_t)seg;
    o->defaults.log.fsync_interval_ms = (uint32_t)fint;
    o->defaults.log.preallocate_bytes = (uint64_t)pre;
    if (fs >= 0)
        o->defaults.log.fsync = fs == 0 ? PLOG_FSYNC_ALWAYS : PLOG_FSYNC_INTERVAL;
    o->group_initial_delay_ms = (uint32_t)delay;
    o->retention_check_ms = (uint32_t)rcheck;
    return 0;
bad:
    fprintf(stderr, "weft log: %s\n", err.msg);
    return -1;
}

int weft_cmd_log(int argc, char **argv)
{
    static const char *const extra[] = {"--data", "--advertise", "--http", NULL};
    weft_cli cli;
    int rc = weft_cli_parse(&cli, "log", argc, argv, extra, weft_help_log);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    cli.http_may_be_addr = true; /* http: HOST:PORT is the streams listener */
    if (weft_cli_load_common(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    elog_opts o;
    elog_opts_default(&o);
    const char *data = NULL;
    if (cli.conf && read_conf(&cli, &o, &data) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    if (weft_cli_extra(&cli, "--data"))
        data = weft_cli_extra(&cli, "--data");
    const char *http_addr = NULL;
    if (read_http_conf(&cli, &http_addr) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    const char *adv = weft_cli_extra(&cli, "--advertise");
    char advhost[256] = "";
    if (adv) {
        const char *colon = strrchr(adv, ':');
        int port = colon ? atoi(colon + 1) : 0;
        if (!colon || colon == adv || port < 1 || port > 65535) {
            fprintf(stderr, "weft log: --advertise: expected HOST:PORT\n");
            weft_cli_release(&cli);
            return 2;
        }
        snprintf(advhost, sizeof advhost, "%.*s", (int)(colon - adv), adv);
        o.advertise_host = advhost;
        o.advertise_port = port;
    }
    if (weft_cli_finish(&cli) < 0) {
        weft_cli_release(&cli);
        return 2;
    }
    if (!data || !*data) {
        fprintf(stderr, "weft log: --data DIR is required (where topics are stored)\n");
        weft_cli_release(&cli);
        return 2;
    }
    o.data_dir = data;
    g_log = elog_new(&o);
    if (!g_log) {
        weft_cli_release(&cli);
        return 1;
    }
    if (cli.nlisten == 0)
        cli.listen[cli.nlisten++] = "127.0.0.1:9092";
    for (int i = 0; i < cli.nlisten; i++) {
        rc = elog_listen(g_log, cli.listen[i]);
        if (rc < 0) {
            fprintf(stderr, "weft log: cannot listen on '%s': %s\n", cli.listen[i],
                    weft_strerror(rc));
            elog_free(g_log);
            weft_cli_release(&cli);
            return rc == WEFT_EADDR ? 2 : 1;
        }
    }
    if (http_addr && (rc = streams_setup(&cli, http_addr)) != 0) {
        streams_free();
        elog_free(g_log);
        weft_cli_release(&cli);
        return rc;
    }
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop};
    rc = weft_rt_run(1, &hooks, (int)cli.http.drain_timeout_ms);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "exiting", WEFT_KV_STR("error", weft_strerror(rc)));
        rc = 1;
    } else {
        weft_log(WEFT_LOG_INFO, "stopped");
    }
    streams_free();
    elog_free(g_log);
    weft_cli_release(&cli);
    return rc;
}
