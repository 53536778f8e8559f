/*
 * es_probe.c — drives weft_es (include/weft/events.h) against a real
 * `weft log --http` for tests/integration/test_log_events_sdk.py. One
 * command per run; prints the done callback's result as JSON:
 *   es_probe URL STREAM object   decide returns one event object, not an array
 *   es_probe URL STREAM free     decide appends one event; done frees the weft_es
 */
#include "weft/events.h"

#include <stdio.h>
#include <string.h>

typedef struct probe {
    const char *mode;
    weft_loop *loop;
    weft_es *es;
} probe;

static void reset(void *state) { (void)state; }
static void apply(void *state, const weft_es_event *ev) { (void)state, (void)ev; }

static json_t *decide(void *state, int64_t version, void *ud)
{
    (void)version, (void)ud;
    probe *p = state;
    json_t *ev = json_pack("{s:s, s:{s:i}}", "type", "Probed", "data", "n", 1);
    if (!strcmp(p->mode, "object"))
        return ev;
    return json_pack("[o]", ev);
}

static void done(int err, const char *reason, int64_t version, int attempts, void *ud)
{
    probe *p = ud;
    printf("{\"err\": %d, \"reason\": \"%s\", \"version\": %lld, \"attempts\": %d}\n", err,
           reason ? reason : "", (long long)version, attempts);
    fflush(stdout);
    if (!strcmp(p->mode, "free")) { /* a program whose last command ends it */
        weft_es_free(p->es);
        p->es = NULL;
    }
    weft_loop_stop(p->loop);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    probe p = {.mode = argv[3]};
    if (weft_loop_new(&p.loop) < 0 || !(p.es = weft_es_new(p.loop, argv[1])))
        return 2;
    weft_es_command c = {.stream = argv[2], .state = &p, .reset = reset, .apply = apply,
                         .decide = decide, .done = done, .ud = &p};
    if (weft_es_execute(p.es, &c) < 0)
        return 2;
    weft_loop_run(p.loop);
    weft_es_free(p.es);
    weft_loop_free(p.loop);
    return 0;
}
