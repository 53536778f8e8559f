/*
 * client_probe.c — one weft_client call (include/weft/client.h) against a
 * real `weft registry`, for tests/integration/test_sdk.py, where the
 * example services cannot reach: arbitrary methods, headers and bodies.
 *   client_probe REGISTRY SERVICE METHOD PATH [-H "Name: value"]... [-d BODY]
 *                [-t CONTENT-TYPE] [-n COUNT]
 * Makes the call COUNT times (default 1), one after the other on the same
 * client (so later ones reuse its pooled connections), and prints each
 * callback's result as one JSON object on its own line:
 *   {"err": E, "error": "...", "status": S, "attempts": N, "body": "..."}
 * Exit 0 after the callback, 2 on bad arguments or a refused call, 3 if no
 * callback came within 20 s.
 */
#include "weft/client.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADERS 32

typedef struct probe {
    weft_loop *loop;
    weft_client *cl;
    weft_call_opts c;
    int left; /* calls still to make after the current one */
    bool done;
} probe;

static void done(const weft_call_result *res, void *ud)
{
    probe *p = ud;
    json_t *o = json_pack("{s:i, s:s, s:i, s:i, s:s%}", "err", res->err, "error",
                          res->err ? weft_strerror(res->err) : "", "status", res->status,
                          "attempts", (int)res->attempts, "body", res->body.p ? res->body.p : "",
                          res->body.n);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", s ? s : "{}");
    fflush(stdout);
    free(s);
    json_decref(o);
    if (p->left-- > 0 && weft_client_call(p->cl, &p->c, done, p, NULL) == 0)
        return;
    p->done = true;
    weft_loop_stop(p->loop);
}

static void give_up(weft_loop *loop, weft_timer *t)
{
    (void)t;
    weft_loop_stop(loop);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    const char *headers[MAX_HEADERS + 1] = {0};
    size_t nh = 0;
    int n = 1;
    weft_call_opts c = {.service = argv[2], .method = argv[3], .path = argv[4],
                        .headers = headers};
    for (int i = 5; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-H") && nh < MAX_HEADERS)
            headers[nh++] = argv[i + 1];
        else if (!strcmp(argv[i], "-d"))
            c.body = argv[i + 1], c.body_len = strlen(argv[i + 1]);
        else if (!strcmp(argv[i], "-t"))
            c.content_type = argv[i + 1];
        else if (!strcmp(argv[i], "-n"))
            n = atoi(argv[i + 1]);
        else
            return 2;
    }
    probe p = {.c = c, .left = n - 1};
    if (n < 1 || weft_loop_new(&p.loop) < 0)
        return 2;
    weft_client_opts o;
    weft_client_opts_default(&o);
    o.registry = argv[1];
    weft_client *cl = p.cl = weft_client_new(p.loop, &o);
    if (!cl || weft_client_call(cl, &p.c, done, &p, NULL) < 0)
        return 2;
    weft_timer guard;
    weft_timer_init(&guard, give_up, NULL);
    weft_timer_start(p.loop, &guard, 20000);
    weft_loop_run(p.loop);
    weft_timer_stop(p.loop, &guard);
    weft_client_free(cl);
    weft_loop_free(p.loop);
    return p.done ? 0 : 3;
}
