/*
 * producer_probe.c — drives weft_producer (include/weft/events.h) for
 * tests/integration/test_log_events_sdk.py:
 *   producer_probe BROKERS TOPIC N
 * queues N records (to brokers that may be down), then frees the producer
 * at once and prints how many delivery callbacks ran and how many of them
 * reported an error:
 *   {"reports": R, "errors": E}
 */
#include "weft/events.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct counts {
    int reports, errors;
} counts;

static void on_delivery(int err, const char *reason, int32_t partition, int64_t offset, void *ud)
{
    (void)reason;
    (void)partition;
    (void)offset;
    counts *c = ud;
    c->reports++;
    c->errors += err != 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s BROKERS TOPIC N\n", argv[0]);
        return 2;
    }
    weft_producer_opts o;
    weft_producer_opts_default(&o);
    o.brokers = argv[1];
    char err[256];
    weft_producer *p = weft_producer_new(&o, err, sizeof err);
    if (!p) {
        fprintf(stderr, "producer: %s\n", err);
        return 1;
    }
    counts c = {0, 0};
    int n = atoi(argv[3]);
    for (int i = 0; i < n; i++)
        if (weft_produce(p, argv[2], WEFT_STR_NULL, WEFT_STR("x"), NULL, 0, on_delivery, &c) < 0) {
            fprintf(stderr, "produce failed\n");
            return 1;
        }
    weft_producer_free(p);
    printf("{\"reports\": %d, \"errors\": %d}\n", c.reports, c.errors);
    return 0;
}
