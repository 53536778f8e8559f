/*
 * codec.h — HTTP/1.1 message-head parser and chunked-body decoder.
 *
 * Pure codecs: no I/O, no allocation. They take bytes and answer
 * "complete", "incomplete" or "error", so the server, the client, the
 * gateway, the unit tests and the fuzzers all drive the same code.
 *
 * Strictness follows RFC 9110/9112 and closes request-smuggling vectors:
 * bare LF, obs-fold, whitespace before the colon, NUL/CTL bytes, both
 * Content-Length and Transfer-Encoding, differing or malformed
 * Content-Length, and any transfer-coding other than a single "chunked"
 * are all rejected.
 *
 * Ownership: every weft_str in a weft_http_head points into the caller's
 * input buffer; they stay valid only while that buffer is neither freed
 * nor moved. The parser structs are caller-owned plain memory (zero them
 * with *_init before first use). Thread-safety: none needed; each parser
 * belongs to one connection.
 */
#ifndef WEFT_HTTP_CODEC_H
#define WEFT_HTTP_CODEC_H

#include "weft/http.h"
#include "weft/weft.h"

#define WEFT_HTTP_MAX_HEADERS_CAP 128 /* hard array bound of weft_http_head */

typedef struct weft_http_limits {
    uint32_t max_request_line; /* request line longer than this -> 414 (default 8192) */
    uint32_t max_header_bytes; /* whole head (incl. request line) above this -> 431 (default 32768) */
    uint32_t max_headers;      /* more header fields than this -> 431 (default 100, <= cap) */
} weft_http_limits;

/* Fill *l with the defaults above. */
void weft_http_limits_default(weft_http_limits *l);

/* enum weft_http_method lives in weft/http.h (public). */

enum weft_http_body_kind {
    WEFT_BODY_NONE = 0, /* no body (request without CL/TE, 204/304/1xx, HEAD response) */
    WEFT_BODY_LENGTH,   /* exactly content_length bytes follow */
    WEFT_BODY_CHUNKED,  /* chunked transfer-coding; use weft_chunked_* */
    WEFT_BODY_EOF,      /* responses only: body runs until the peer closes */
};

typedef struct weft_http_header {
    weft_str name;  /* as sent; compare with weft_str_ieq */
    weft_str value; /* leading/trailing OWS trimmed */
} weft_http_header;

typedef struct weft_http_head {
    /* request only */
    int method;       /* enum weft_http_method */
    weft_str method_str;
    weft_str target;  /* request-target exactly as sent */
    weft_str path;    /* path part of target ("/" for asterisk... see below) */
    weft_str query;   /* after '?', without it; n == 0 if none */
    weft_str authority; /* host[:port] from an absolute-form target, else empty */
    /* response only */
    int status;       /* 100..599 */
    weft_str reason;
    /* both */
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    uint32_t nheaders;
    weft_http_header headers[WEFT_HTTP_MAX_HEADERS_CAP];
    int body_kind;        /* enum weft_http_body_kind */
    uint64_t content_length; /* valid when body_kind == WEFT_BODY_LENGTH */
    bool keep_alive;      /* after Connection tokens and version defaults */
    bool expect_continue; /* request had "Expect: 100-continue" */
    bool upgrade;         /* Connection: upgrade present (informational) */
    weft_str host;        /* Host header value (requests), empty if absent */
} weft_http_head;

/* Resumable scanning state for one message head. */
typedef struct weft_http_parser {
    uint32_t scanned;  /* bytes already checked for line endings */
    uint32_t line_start; /* offset of the line being scanned */
    uint32_t lines;    /* complete lines seen so far */
    int status;        /* on error: the HTTP status to answer (400, 414, 431, 501, 505, 417) */
    const char *error; /* on error: short static reason, for logs and tests */
} weft_http_parser;

void weft_http_parser_init(weft_http_parser *p);

/*
 * Parse a request head from buf[0..len). Call again with the same parser and
 * a longer buffer (the same bytes plus more; the buffer may have moved) after
 * WEFT_EAGAIN: earlier bytes are not rescanned for the line structure.
 *
 * Returns:
 *   > 0          the head is complete; value = bytes consumed (through the
 *                blank line). *h is filled. Body bytes, if any, follow.
 *   WEFT_EAGAIN  need more bytes (no limit exceeded yet).
 *   WEFT_EPROTO  invalid; p->status holds the status to answer, p->error why:
 *                400 malformed/smuggling, 414 request line too long,
 *                431 headers too large/many, 501 unknown method or
 *                transfer-coding, 505 HTTP major version not 1,
 *                417 an Expect other than 100-continue.
 */
int weft_http_parse_request(weft_http_parser *p, const weft_http_limits *lim,
                            const char *buf, size_t len, weft_http_head *h);

/*
 * Parse a response head. req_method is the method of the request it answers
 * (HEAD responses and 1xx/204/304 have no body; 2xx to CONNECT neither).
 * Same return convention; on WEFT_EPROTO p->status is 502 (bad gateway).
 */
int weft_http_parse_response(weft_http_parser *p, const weft_http_limits *lim,
                             const char *buf, size_t len, int req_method,
                             weft_http_head *h);

/* Find a header by case-insensitive name; returns NULL if absent. */
const weft_http_header *weft_http_head_find(const weft_http_head *h, weft_str name);

/* Method enum from its token (exact, case-sensitive), WEFT_METHOD_UNKNOWN if none. */
int weft_http_method_from(weft_str tok);
const char *weft_http_method_name(int method);

/* Standard reason phrase for a status code ("Unknown" if not known). */
const char *weft_http_reason(int status);

/* ---- chunked transfer-coding decoder (RFC 9112 section 7.1) ---- */

typedef struct weft_chunked {
    int state;          /* internal */
    uint64_t remaining; /* data bytes left in the current chunk */
    uint32_t line_len;  /* bytes of the current size/trailer line */
    uint32_t trailer_bytes;
    uint32_t trailers;
    uint32_t max_line;     /* chunk-size line (with extensions) limit; default 4096 */
    uint32_t max_trailer_bytes; /* default 8192 */
    bool done;          /* last-chunk and trailer section consumed */
    const char *error;  /* on error: short static reason */
} weft_chunked;

void weft_chunked_init(weft_chunked *d);

/*
 * Decode from in[0..len). Consumes framing bytes and returns at most one
 * span of body data, which points into `in`.
 *   *consumed  bytes of `in` used (framing and data) — always set.
 *   *data      the data span found (n == 0 if none in this call).
 * Returns 0 on progress (check d->done, and call again with the rest while
 * *consumed < len), WEFT_EAGAIN when all of `in` was consumed and more input
 * is needed, WEFT_EPROTO on malformed input (d->error says why).
 * The decoder never needs earlier bytes again: callers may drop what was
 * consumed. After d->done, bytes beyond *consumed belong to the next message.
 */
int weft_chunked_decode(weft_chunked *d, const char *in, size_t len,
                        size_t *consumed, weft_str *data);

#endif
