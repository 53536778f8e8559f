/*
 * streams.h — the event-sourcing streams API of `weft log` (--http):
 * appends with an expected version and idempotent retries, reads of a
 * stream, a category and $all, and catch-up subscriptions (server-sent
 * events), on an HTTP listener served by the log's own loop. The design
 * and the record layout are at the top of streams.c; the API is in
 * docs/eventlog.md.
 *
 * Threading: everything runs on the loop that runs the broker (elog):
 * start, drain and stop are called from that loop's hooks, and the HTTP
 * server given to elog_streams_routes must serve from the same loop.
 *
 * Ownership: the streams state belongs to the elog it was created for and
 * must be stopped before elog_stop (it keeps pointers to the topics).
 */
#ifndef WEFT_EVENTLOG_STREAMS_H
#define WEFT_EVENTLOG_STREAMS_H

#include "eventlog/elog.h"
#include "weft/http.h"

typedef struct elog_streams elog_streams;

/* Allocate (and register the metrics) on the main thread, before the
 * workers start. NULL on allocation failure. */
elog_streams *elog_streams_new(elog *e);
void elog_streams_free(elog_streams *st);
/* Add the API routes (/streams/, /categories/, /all, /subscribe/) to s. */
int elog_streams_routes(elog_streams *st, weft_http_server *s);
/* On the loop, after elog_start: open (or create) the internal topic
 * __weft_streams, rebuild the index from it and copy to the category
 * topics whatever a crash left out. 0 or a WEFT_E* error (logged). */
int elog_streams_start(elog_streams *st, weft_loop *loop);
/* Whether an append's body (POST /streams/NAME) is well formed and within
 * the limits: the decoder alone, for the fuzz harness. */
bool elog_streams_body_ok(const char *p, size_t n);
/* Graceful drain: end every subscription and refuse new ones (503);
 * appends still complete. */
void elog_streams_drain(elog_streams *st);
/* After the loop stopped (and after the HTTP server released its
 * requests), before elog_stop. */
void elog_streams_stop(elog_streams *st);

#endif
