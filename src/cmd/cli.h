/*
 * cli.h — the command-line and config-file convention shared by every
 * long-running `weft` subcommand.
 *
 *   --listen HOST:PORT (repeatable)   --workers N   -c FILE
 *   --log-level debug|info|warn|error --log-format text|json
 *
 * The config file is read first, then flags override it. Component-specific
 * keys are read by the subcommand from the same document (cli.conf) before
 * weft_cli_finish() rejects unknown keys with file:line:column.
 */
#ifndef WEFT_CMD_CLI_H
#define WEFT_CMD_CLI_H

#include "weft/config.h"
#include "weft/http.h"

#include <stdatomic.h>

#define CLI_MAX_LISTEN 16

typedef struct weft_cli {
    const char *prog;  /* subcommand name */
    const char *listen[CLI_MAX_LISTEN];
    int nlisten;
    int workers;       /* 0 = number of CPUs */
    const char *config_path;
    int log_level;
    int log_format;
    weft_conf *conf;   /* NULL when no -c */
    weft_http_server_opts http;
    /* `http: HOST:PORT` (an address, not the server options) is allowed;
     * set between weft_cli_parse() and weft_cli_load_common() (weft log) */
    bool http_may_be_addr;
    /* extra flags the subcommand accepts: "--name VALUE" pairs */
    const char *extra_names[8];
    const char *extra_values[8];
    int nextra;
} weft_cli;

/* Parse argv (after the subcommand name). extra_flags lists additional
 * "--flag" names that take a value. Prints an error and returns < 0 on bad
 * usage; returns 1 if --help was given (help printed). */
int weft_cli_parse(weft_cli *cli, const char *prog, int argc, char **argv,
                   const char *const *extra_flags, const char *help_text);
/* Value of an extra flag, or NULL. */
const char *weft_cli_extra(const weft_cli *cli, const char *name);
/* Read the common keys (listen, workers, log, http.*) from the config file
 * when one was given; flags given on the command line win. */
int weft_cli_load_common(weft_cli *cli);
/* Validate the common keys of a config document exactly as
 * weft_cli_load_common() does, marking them read, without applying them
 * (a reload checks them although they only change on a restart). */
int weft_cli_check_common(const weft_conf_node *root, weft_conf_err *err);
/* Reject unknown keys; free the document. */
int weft_cli_finish(weft_cli *cli);
void weft_cli_release(weft_cli *cli);

/* GET /health, /ready (503 while *draining) and /metrics on server s. */
int weft_cli_std_routes(weft_http_server *s, atomic_bool *draining);

/* Help texts, one per subcommand, printed by `weft help NAME`. */
extern const char weft_help_hello[];
extern const char weft_help_gateway[];
extern const char weft_help_registry[];
extern const char weft_help_log[];

int weft_cmd_hello(int argc, char **argv);
int weft_cmd_gateway(int argc, char **argv);
int weft_cmd_registry(int argc, char **argv);
int weft_cmd_log(int argc, char **argv);

#endif
