/*
 * cli.c — one flag and config convention for every `weft` subcommand.
 *
 * Flags are parsed by hand (no getopt_long global state) into a weft_cli;
 * the YAML file is then read for the same settings and a flag given on the
 * command line always wins over the file. Every config error is printed as
 * FILE:LINE:COL: KEY: reason, and unknown keys are errors.
 */
#include "cli.h"

#include "http/http_int.h"
#include "weft/service.h"

#include "weft/log.h"
#include "weft/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool flag_set_workers, flag_set_level, flag_set_format;

int weft_cli_parse(weft_cli *cli, const char *prog, int argc, char **argv,
                   const char *const *extra_flags, const char *help_text)
{
    memset(cli, 0, sizeof *cli);
    cli->prog = prog;
    cli->log_level = WEFT_LOG_INFO;
    cli->log_format = WEFT_LOG_TEXT;
    weft_http_server_opts_default(&cli->http);
    flag_set_workers = flag_set_level = flag_set_format = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        char name[64];
        /* accept both "--flag value" and "--flag=value" */
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            val = eq + 1;
            a = name;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(help_text, stdout);
            return 1;
        }
        bool takes = strcmp(a, "--listen") == 0 || strcmp(a, "--workers") == 0 ||
                     strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 ||
                     strcmp(a, "--log-level") == 0 || strcmp(a, "--log-format") == 0;
        int extra = -1;
        for (int k = 0; extra_flags && extra_flags[k]; k++)
            if (strcmp(a, extra_flags[k]) == 0)
                extra = k;
        if (!takes && extra < 0) {
            fprintf(stderr, "weft %s: unknown option '%s' (see 'weft help %s')\n", prog, argv[i],
                    prog);
            return -1;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "weft %s: option '%s' needs a value\n", prog, a);
                return -1;
            }
            val = argv[++i];
        }
        if (extra >= 0) {
            if (cli->nextra < 8) {
                cli->extra_names[cli->nextra] = extra_flags[extra];
                cli->extra_values[cli->nextra++] = val;
            }
        } else if (strcmp(a, "--listen") == 0) {
            if (cli->nlisten == CLI_MAX_LISTEN) {
                fprintf(stderr, "weft %s: too many --listen addresses\n", prog);
                return -1;
            }
            cli->listen[cli->nlisten++] = val;
        } else if (strcmp(a, "--workers") == 0) {
            char *end;
            long n = strtol(val, &end, 10);
            if (end == val || *end || n < 0 || n > 256) {
                fprintf(stderr, "weft %s: --workers must be 0..256 (0 = one per CPU)\n", prog);
                return -1;
            }
            cli->workers = (int)n;
            flag_set_workers = true;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            cli->config_path = val;
        } else if (strcmp(a, "--log-level") == 0) {
            cli->log_level = weft_log_level_from(val);
            if (cli->log_level < 0) {
                fprintf(stderr, "weft %s: --log-level must be debug, info, warn, error or off\n",
                        prog);
                return -1;
            }
            flag_set_level = true;
        } else if (strcmp(a, "--log-format") == 0) {
            cli->log_format = weft_log_format_from(val);
            if (cli->log_format < 0) {
                fprintf(stderr, "weft %s: --log-format must be text or json\n", prog);
                return -1;
            }
            flag_set_format = true;
        }
    }
    return 0;
}

const char *weft_cli_extra(const weft_cli *cli, const char *name)
{
    const char *v = NULL;
    for (int i = 0; i < cli->nextra; i++)
        if (strcmp(cli->extra_names[i], name) == 0)
            v = cli->extra_values[i];
    return v;
}

static int load_http(weft_cli *cli, const weft_conf_node *http, weft_conf_err *err)
{
    int64_t v;
    uint64_t u;
    weft_http_server_opts *o = &cli->http;
#define DUR(key, field)                                                                   \
    do {                                                                                  \
        v = o->field;                                                                     \
        if (weft_conf_duration_ms(http, key, 1, 24 * 3600 * 1000, &v, err) < 0)          \
            return WEFT_ECONFIG;                                                          \
        o->field = (uint32_t)v;                                                           \
    } while (0)
    DUR("header_timeout", header_timeout_ms);
    DUR("body_timeout", body_timeout_ms);
    DUR("idle_timeout", idle_timeout_ms);
    DUR("drain_timeout", drain_timeout_ms);
#undef DUR
    u = o->max_body;
    if (weft_conf_size(http, "max_body", 0, (uint64_t)1 << 40, &u, err) < 0)
        return WEFT_ECONFIG;
    o->max_body = u;
    u = o->max_request_line;
    if (weft_conf_size(http, "max_request_line", 256, 1u << 20, &u, err) < 0)
        return WEFT_ECONFIG;
    o->max_request_line = (uint32_t)u;
    u = o->max_header_bytes;
    if (weft_conf_size(http, "max_header_bytes", 1024, 1u << 20, &u, err) < 0)
        return WEFT_ECONFIG;
    o->max_header_bytes = (uint32_t)u;
    v = o->max_headers;
    if (weft_conf_int(http, "max_headers", 1, 128, &v, err) < 0)
        return WEFT_ECONFIG;
    o->max_headers = (uint32_t)v;
    v = o->max_connections;
    if (weft_conf_int(http, "max_connections", 1, 1000000, &v, err) < 0)
        return WEFT_ECONFIG;
    o->max_connections = (uint32_t)v;
    const char *name = NULL;
    if (weft_conf_string(http, "server_name", &name, err) < 0)
        return WEFT_ECONFIG;
    if (name)
        o->server_name = name;
    return 0;
}

/* A listen address from the file, parsed as the listeners will parse it so
 * that a bad one is reported with its file:line (and by --check). */
static int listen_addr(const weft_conf_node *n, const char **out, weft_conf_err *err)
{
    const char *s = weft_conf_kind(n) == WEFT_CONF_SCALAR ? weft_conf_scalar(n) : NULL;
    struct sockaddr_storage sa;
    socklen_t len;
    if (!s)
        return weft_conf_errorf(err, n, NULL, "expected HOST:PORT");
    if (weft_http_parse_hostport(s, &sa, &len) < 0)
        return weft_conf_errorf(err, n, NULL, "bad listen address '%s' (want HOST:PORT)", s);
    *out = s;
    return 0;
}

/* The common keys of root into cli (flags given on the command line win,
 * but the file's values are checked all the same).
 * No side effects beyond cli, so a reload can validate a new file with it. */
static int read_common(weft_cli *cli, const weft_conf_node *root, weft_conf_err *err)
{
    const weft_conf_node *ln = weft_conf_get(root, "listen");
    if (ln) {
        const char *addrs[CLI_MAX_LISTEN];
        size_t n = 0;
        if (weft_conf_kind(ln) == WEFT_CONF_SCALAR) {
            if (listen_addr(ln, &addrs[n++], err) < 0)
                return WEFT_ECONFIG;
        } else if (weft_conf_kind(ln) == WEFT_CONF_SEQ) {
            for (size_t i = 0; i < weft_conf_seq_len(ln); i++) {
                const weft_conf_node *it = weft_conf_seq_at(ln, i);
                if (n == CLI_MAX_LISTEN)
                    return weft_conf_errorf(err, it, NULL, "more than %d listen addresses",
                                            CLI_MAX_LISTEN);
                if (listen_addr(it, &addrs[n++], err) < 0)
                    return WEFT_ECONFIG;
            }
        } else {
            return weft_conf_errorf(err, ln, "listen", "expected HOST:PORT or a list of them");
        }
        if (cli->nlisten == 0) {
            for (size_t i = 0; i < n; i++)
                cli->listen[cli->nlisten++] = addrs[i];
        }
    }
    int64_t w = cli->workers;
    if (weft_conf_int(root, "workers", 0, 256, &w, err) < 0)
        return WEFT_ECONFIG;
    if (!flag_set_workers)
        cli->workers = (int)w;
    static const char *const levels[] = {"debug", "info", "warn", "error", "off", NULL};
    static const char *const formats[] = {"text", "json", NULL};
    const weft_conf_node *log = weft_conf_get(root, "log");
    if (log) {
        int lv = cli->log_level, fm = cli->log_format;
        if (weft_conf_enum(log, "level", levels, &lv, err) < 0 ||
            weft_conf_enum(log, "format", formats, &fm, err) < 0)
            return WEFT_ECONFIG;
        if (!flag_set_level)
            cli->log_level = lv;
        if (!flag_set_format)
            cli->log_format = fm;
    }
    const weft_conf_node *http = weft_conf_get(root, "http");
    if (cli->http_may_be_addr && weft_conf_kind(http) == WEFT_CONF_SCALAR)
        http = NULL; /* the subcommand reads the address */
    if (http && load_http(cli, http, err) < 0)
        return WEFT_ECONFIG;
    return 0;
}

int weft_cli_check_common(const weft_conf_node *root, weft_conf_err *err)
{
    weft_cli scratch;
    memset(&scratch, 0, sizeof scratch);
    weft_http_server_opts_default(&scratch.http);
    return read_common(&scratch, root, err);
}

int weft_cli_load_common(weft_cli *cli)
{
    if (!cli->config_path)
        goto apply;
    weft_conf_err err;
    if (weft_conf_load_file(cli->config_path, &cli->conf, &err) < 0) {
        fprintf(stderr, "weft %s: %s\n", cli->prog, err.msg);
        return WEFT_ECONFIG;
    }
    if (read_common(cli, weft_conf_root(cli->conf), &err) < 0)
        goto fail;
apply:
    weft_log_set_level(cli->log_level);
    weft_log_set_format(cli->log_format);
    if (cli->workers == 0)
        cli->workers = weft_cpu_count();
    return 0;
fail:
    fprintf(stderr, "weft %s: %s\n", cli->prog, err.msg);
    return WEFT_ECONFIG;
}

int weft_cli_finish(weft_cli *cli)
{
    if (!cli->conf)
        return 0;
    weft_conf_err err;
    if (weft_conf_check_unused(weft_conf_root(cli->conf), &err) < 0) {
        fprintf(stderr, "weft %s: %s\n", cli->prog, err.msg);
        return WEFT_ECONFIG;
    }
    return 0;
}

void weft_cli_release(weft_cli *cli)
{
    weft_conf_free(cli->conf);
    cli->conf = NULL;
}

/* ---- standard operational endpoints shared by every subcommand ---- */

int weft_cli_std_routes(weft_http_server *s, atomic_bool *draining)
{
    return weft_http_std_routes(s, draining);
}
