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
#include "weft/log.h"
#include "weft/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char weft_help_log[] =
    "usage: weft log [--listen HOST:PORT] --data DIR [--advertise HOST:PORT] [-c FILE]\n"
    "                [--log-level LEVEL] [--log-format text|json]\n"
    "\n"
    "A durable event log that speaks the Kafka wire protocol (kcat, librdkafka,\n"
    "kafka-python work unmodified). See docs/eventlog.md.\n"
    "\n"
    "  --listen HOST:PORT     Kafka listener (default 127.0.0.1:9092)\n"
    "  --data DIR             where topics live (required)\n"
    "  --advertise HOST:PORT  the address Metadata gives clients (default: the listener)\n"
    "  -c FILE                YAML config: listen, data, log.{auto_create, partitions,\n"
    "                         retention_ms, retention_bytes, segment_bytes, fsync\n"
    "                         (always|interval), fsync_interval_ms, group_initial_delay_ms,\n"
    "                         retention_check_ms}\n";

static elog *g_log;

static int w_start(weft_loop *loop, void *arg)
{
    (void)arg;
    weft_metrics_attach(weft_metrics_global(), weft_loop_index(loop));
    return elog_start(g_log, loop);
}

static void w_drain(weft_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    elog_drain(g_log);
}

static void w_stop(weft_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    elog_stop(g_log);
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
            rcheck = o->retention_check_ms;
    const char *fs = NULL;
    if (weft_conf_bool(n, "auto_create", &o->auto_create, &err) < 0 ||
        weft_conf_int(n, "partitions", 1, 10000, &parts, &err) < 0 ||
        weft_conf_int(n, "retention_ms", -1, INT64_MAX, &rms, &err) < 0 ||
        weft_conf_int(n, "retention_bytes", -1, INT64_MAX, &rbytes, &err) < 0 ||
        weft_conf_int(n, "segment_bytes", 4096, 1LL << 40, &seg, &err) < 0 ||
        weft_conf_int(n, "fsync_interval_ms", 1, 3600000, &fint, &err) < 0 ||
        weft_conf_int(n, "group_initial_delay_ms", 0, 300000, &delay, &err) < 0 ||
        weft_conf_int(n, "retention_check_ms", 100, 3600000, &rcheck, &err) < 0 ||
        weft_conf_string(n, "fsync", &fs, &err) < 0)
        goto bad;
    if (fs && strcmp(fs, "always") != 0 && strcmp(fs, "interval") != 0) {
        fprintf(stderr, "weft log: %s: log.fsync: expected always or interval\n", cli->config_path);
        return -1;
    }
    o->defaults.partitions = (int32_t)parts;
    o->defaults.log.retention_ms = rms;
    o->defaults.log.retention_bytes = rbytes;
    o->defaults.log.segment_bytes = (uint64_t)seg;
    o->defaults.log.fsync_interval_ms = (uint32_t)fint;
    if (fs)
        o->defaults.log.fsync = strcmp(fs, "always") == 0 ? PLOG_FSYNC_ALWAYS : PLOG_FSYNC_INTERVAL;
    o->group_initial_delay_ms = (uint32_t)delay;
    o->retention_check_ms = (uint32_t)rcheck;
    return 0;
bad:
    fprintf(stderr, "weft log: %s\n", err.msg);
    return -1;
}

int weft_cmd_log(int argc, char **argv)
{
    static const char *const extra[] = {"--data", "--advertise", NULL};
    weft_cli cli;
    int rc = weft_cli_parse(&cli, "log", argc, argv, extra, weft_help_log);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
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
    weft_rt_hooks hooks = {.start = w_start, .drain = w_drain, .stop = w_stop};
    rc = weft_rt_run(1, &hooks, (int)cli.http.drain_timeout_ms);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "exiting", WEFT_KV_STR("error", weft_strerror(rc)));
        rc = 1;
    } else {
        weft_log(WEFT_LOG_INFO, "stopped");
    }
    elog_free(g_log);
    weft_cli_release(&cli);
    return rc;
}
