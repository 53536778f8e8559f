/*
 * main.c — the `weft` binary: one program, one subcommand per component.
 *
 * Dispatch is a table so `weft help` lists exactly what exists; each
 * subcommand owns its flags (following the convention in cli.h) and its
 * help text.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct subcmd {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
    const char *help;
} subcmd;

static const subcmd cmds[] = {
    {"hello", "a small JSON service built on libweft (demo and benchmarks)", weft_cmd_hello,
     weft_help_hello},
    {"gateway", "API gateway and sidecar proxy", weft_cmd_gateway, weft_help_gateway},
    {"registry", "service registry: leases, checks, watches, DNS, Consul/Eureka APIs",
     weft_cmd_registry, weft_help_registry},
    {"log", "durable event log speaking the Kafka protocol", weft_cmd_log, weft_help_log},
};

static void usage(FILE *f)
{
    fprintf(f, "weft %s — a microservice platform\n\n"
               "usage: weft <command> [options]\n\ncommands:\n",
            WEFT_VERSION);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].summary);
    fprintf(f, "  %-10s %s\n  %-10s %s\n\n", "version", "print the version", "help [CMD]",
            "show help for a command");
    fprintf(f, "Common options of long-running commands: --listen HOST:PORT, --workers N,\n"
               "-c FILE, --log-level LEVEL, --log-format text|json.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("weft %s\n", WEFT_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (argc < 3) {
            usage(stdout);
            return 0;
        }
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (strcmp(argv[2], cmds[i].name) == 0) {
                fputs(cmds[i].help, stdout);
                return 0;
            }
        fprintf(stderr, "weft: no such command '%s'\n", argv[2]);
        return 2;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0)
            return cmds[i].run(argc - 2, argv + 2);
    fprintf(stderr, "weft: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
