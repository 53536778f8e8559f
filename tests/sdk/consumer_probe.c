/*
 * consumer_probe.c — drives weft_consumer (include/weft/events.h) for
 * tests/integration/test_log_events_sdk.py:
 *   consumer_probe BROKERS GROUP TOPIC INSTANCE_ID SECONDS
 * subscribes with static membership (group.instance.id) and polls until a
 * poll returns < 0 or SECONDS pass, then polls once more; prints
 *   {"rc": FIRST_NEGATIVE_OR_0, "again": NEXT_RC, "events": N}
 */
#include "weft/events.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void on_event(const weft_event *ev, void *ud)
{
    (void)ev;
    (*(int *)ud)++;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s BROKERS GROUP TOPIC INSTANCE_ID SECONDS\n", argv[0]);
        return 2;
    }
    const char *topics[] = {argv[3], NULL};
    const char *config[] = {"group.instance.id", argv[4], NULL};
    weft_consumer_opts o;
    weft_consumer_opts_default(&o);
    o.brokers = argv[1];
    o.group_id = argv[2];
    o.topics = topics;
    o.config = config;
    char err[256];
    weft_consumer *c = weft_consumer_new(&o, err, sizeof err);
    if (!c) {
        fprintf(stderr, "consumer: %s\n", err);
        return 1;
    }
    time_t end = time(NULL) + atoi(argv[5]);
    int events = 0, rc = 0;
    while (rc >= 0 && time(NULL) < end)
        rc = weft_consumer_poll(c, 200, on_event, &events);
    int again = weft_consumer_poll(c, 200, on_event, &events);
    printf("{\"rc\": %d, \"again\": %d, \"events\": %d}\n", rc < 0 ? rc : 0, again, events);
    fflush(stdout);
    weft_consumer_free(c);
    return 0;
}
