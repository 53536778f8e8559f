/*
 * sse.h — server-sent event streams (text/event-stream) on a streamed HTTP
 * response: starting the stream, framing events and comments, and pacing
 * the stream by its socket.
 *
 * A weft_sse lives in the caller's memory (a registry watcher, a log
 * subscriber), next to whatever it streams from. The fields are read-only
 * to the caller. Every write is one weft_http_resp_write, so an event is
 * one chunk on the wire. A write that the socket pushes back sets `paused`;
 * it is cleared when the output has drained, just before the caller's
 * on_drain runs, so "not paused" means "writing more is welcome". A caller
 * that writes only while not paused buffers at most one event past the
 * connection's high-water mark.
 *
 * Lifetime: after weft_sse_start succeeds the stream is ended either by the
 * caller (weft_sse_end) or by the client going away (on_abort, from the
 * loop, never inside a write). After either, no callback runs and the
 * caller may free the memory holding the weft_sse. Threading: one loop,
 * like the request.
 */
#ifndef WEFT_SSE_H
#define WEFT_SSE_H

#include "weft/http.h"

typedef struct weft_sse {
    weft_http_req *r; /* NULL before start and after end */
    bool paused;      /* the last write was pushed back; cleared on drain */
    bool writing;     /* inside a write: a drain then calls no on_drain */
    void (*on_drain)(weft_http_req *r, void *ud);
    void *ud;
} weft_sse;

/* weft_sse_event without an "id:" field. */
#define WEFT_SSE_NO_ID UINT64_MAX

/* Answer r with an event stream: 200 text/event-stream, Cache-Control:
 * no-cache (after any header the caller added), chunked. End-of-file from
 * the client ends the stream (weft_http_req_close_on_eof). on_abort(r, ud)
 * runs if the client goes away; on_drain(r, ud) (may be NULL) runs when
 * queued output falls below the low-water mark, `paused` already cleared;
 * never from inside a weft_sse write (a write that drains at once just
 * returns 0, and the writer goes on), so on_drain need not be re-entrant.
 * Returns 0, or < 0 if the response could not start (the connection is
 * closed, no callback will run). */
int weft_sse_start(weft_sse *s, weft_http_req *r, void (*on_drain)(weft_http_req *r, void *ud),
                   void (*on_abort)(weft_http_req *r, void *ud), void *ud);

/* Write one event: "id: ID\n" (unless id is WEFT_SSE_NO_ID), "event: NAME\n"
 * (unless event is empty), "data: LINE\n" for each line of data (a CR, LF
 * or CRLF in data starts a new line, as the SSE spec reads them back; data
 * without line breaks is one line), then "\n". Returns 1 if the socket
 * pushed back (paused is now set), 0 if not; WEFT_ECLOSED if the connection
 * is gone (on_abort will run from the loop); WEFT_EINVAL (event holds a
 * line break) or WEFT_ENOMEM before anything was written, the stream
 * intact. */
int weft_sse_event(weft_sse *s, uint64_t id, weft_str event, weft_str data);

/* Write a comment, ": TEXT\n" per line of text then "\n" (": weft registry
 * watch\n\n"). Returns as weft_sse_event. */
int weft_sse_comment(weft_sse *s, weft_str text);

/* Keep an idle stream alive through proxies: ": ping\n\n", unless the
 * stream is paused (its queued output says as much). Returns as
 * weft_sse_event (0 when skipped). */
int weft_sse_ping(weft_sse *s);

/* End the stream: detach the callbacks and finish the response. No-op if
 * not started or already ended. */
void weft_sse_end(weft_sse *s);

/* The bytes weft_sse_event writes, into buf if they fit in cap bytes (no
 * NUL is added). Returns their length, or 0 if event holds a CR or LF.
 * Pure: for tests and for callers that frame events themselves. */
size_t weft_sse_format(char *buf, size_t cap, uint64_t id, weft_str event, weft_str data);

#endif
