/*
 * sse.c — server-sent event streams on a streamed response (see sse.h).
 *
 * Wire format (the HTML spec's text/event-stream, UTF-8, LF line ends), one
 * event per response chunk:
 *
 *   id: 42\n             decimal; left out without an id
 *   event: put\n         left out without a name
 *   data: {...}\n        one line per line of the data
 *   \n                   dispatches the event
 *
 * and comments ": ping\n\n". A reader takes CR, LF and CRLF as line ends
 * and joins the data lines with LF, so data holding line breaks must be
 * split into several "data:" lines or it would end the field early; data
 * without any (compact JSON, what Weft sends) is a single line, and the
 * bytes are then exactly "data: " + data + "\n".
 *
 * An event is formatted into a stack buffer (heap beyond 4 KiB) and queued
 * with one write, so an event is never half queued: a write either takes
 * the whole event or finds the connection gone.
 */
#include "weft/sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STACK_EVENT 4096

/* A bounded writer that counts what it could not store (snprintf-like). */
typedef struct out {
    char *p;
    size_t cap, n;
} out;

static void put(out *o, const char *p, size_t n)
{
    if (n && o->n + n <= o->cap)
        memcpy(o->p + o->n, p, n);
    o->n += n;
}

/* prefix + line + "\n" for each line of text (CR, LF or CRLF ends one). */
static void put_lines(out *o, weft_str prefix, weft_str text)
{
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < text.n && text.p[j] != '\n' && text.p[j] != '\r')
            j++;
        put(o, prefix.p, prefix.n);
        put(o, text.p + i, j - i);
        put(o, "\n", 1);
        if (j == text.n)
            return;
        i = j + (text.p[j] == '\r' && j + 1 < text.n && text.p[j + 1] == '\n' ? 2 : 1);
    }
}

/* An event (prefix "data: ") or a comment (prefix ": ", no id, no name). */
static size_t format(char *buf, size_t cap, uint64_t id, weft_str event, weft_str prefix,
                     weft_str text)
{
    if (event.n && (memchr(event.p, '\n', event.n) || memchr(event.p, '\r', event.n)))
        return 0;
    out o = {buf, cap, 0};
    if (id != WEFT_SSE_NO_ID) {
        char t[32];
        put(&o, t, (size_t)snprintf(t, sizeof t, "id: %llu\n", (unsigned long long)id));
    }
    if (event.n) {
        put(&o, "event: ", 7);
        put(&o, event.p, event.n);
        put(&o, "\n", 1);
    }
    put_lines(&o, prefix, text);
    put(&o, "\n", 1);
    return o.n;
}

size_t weft_sse_format(char *buf, size_t cap, uint64_t id, weft_str event, weft_str data)
{
    return format(buf, cap, id, event, WEFT_STR("data: "), data);
}

static int emit(weft_sse *s, uint64_t id, weft_str event, weft_str prefix, weft_str text)
{
    char stackbuf[STACK_EVENT], *buf = stackbuf;
    int rc;
    size_t n = format(buf, sizeof stackbuf, id, event, prefix, text);
    if (n == 0)
        return WEFT_EINVAL;
    if (n > sizeof stackbuf) {
        if (!(buf = malloc(n)))
            return WEFT_ENOMEM;
        format(buf, n, id, event, prefix, text);
    }
    s->writing = true;
    rc = s->r ? weft_http_resp_write(s->r, buf, n) : WEFT_ECLOSED;
    s->writing = false;
    if (buf != stackbuf)
        free(buf);
    if (rc < 0)
        return WEFT_ECLOSED; /* every write error closes the connection */
    if (rc == 1)
        s->paused = true; /* cleared by drained() */
    return rc;
}

int weft_sse_event(weft_sse *s, uint64_t id, weft_str event, weft_str data)
{
    return emit(s, id, event, WEFT_STR("data: "), data);
}

int weft_sse_comment(weft_sse *s, weft_str text)
{
    return emit(s, WEFT_SSE_NO_ID, WEFT_STR_NULL, WEFT_STR(": "), text);
}

int weft_sse_ping(weft_sse *s)
{
    return s->paused ? 0 : weft_sse_comment(s, WEFT_STR("ping"));
}

static void drained(weft_http_req *r, void *ud)
{
    weft_sse *s = ud;
    s->paused = false;
    /* not from inside our own write (it can flush and drain at once): the
     * caller is writing and goes on by itself, and an on_drain that wrote
     * too, or ended the stream, would pull it from under that caller */
    if (s->on_drain && !s->writing)
        s->on_drain(r, s->ud); /* may end the stream and free s */
}

int weft_sse_start(weft_sse *s, weft_http_req *r, void (*on_drain)(weft_http_req *r, void *ud),
                   void (*on_abort)(weft_http_req *r, void *ud), void *ud)
{
    *s = (weft_sse){.on_drain = on_drain, .ud = ud};
    /* best effort: a stream without it still works, and failing here would
     * leave the request unanswered */
    weft_http_resp_header(r, WEFT_STR("Cache-Control"), WEFT_STR("no-cache"));
    int rc = weft_http_resp_start(r, 200, WEFT_STR("text/event-stream"), -1);
    if (rc < 0)
        return rc;
    s->r = r;
    weft_http_req_on_abort(r, on_abort, ud);
    weft_http_req_close_on_eof(r);
    weft_http_resp_on_drain(r, drained, s);
    return 0;
}

void weft_sse_end(weft_sse *s)
{
    weft_http_req *r = s->r;
    if (!r)
        return;
    s->r = NULL;
    weft_http_req_on_abort(r, NULL, NULL);
    weft_http_resp_on_drain(r, NULL, NULL);
    weft_http_resp_end(r);
}
