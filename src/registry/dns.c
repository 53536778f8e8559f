/*
 * dns.c — the registry's DNS interface: answers (pure) and UDP/TCP I/O.
 *
 * reg_dns_answer() turns one query message into one answer message from the
 * store, with no I/O, so it is unit-tested and fuzzed alone. The wire
 * format is RFC 1035: a 12-byte header (id, flags, four counts), the
 * question copied back, then answer and additional records; names in the
 * answers point back at the question (compression pointer 0xC00C) or at an
 * SRV target written earlier, so 60 A records fit a 1 KB answer. RFC 2782
 * SRV records carry priority 1, the instance's weight, its port and the
 * target ID.NAME.service.weft, whose address goes in the additional
 * section (HAProxy and c-ares use it without a second query). EDNS0 (RFC
 * 6891): a query's OPT record raises the UDP size limit (to 4096 at most)
 * and gets an OPT record back; one of a version above 0 gets BADVERS and
 * our version-0 OPT record (RFC 6891 6.1.3). Over UDP an answer that does
 * not fit is cut at a record boundary with TC set; over TCP it never needs
 * to be.
 *
 * The I/O part serves UDP and TCP on the same port from the registry's
 * loop: UDP answers go out with sendto() at once; TCP connections carry
 * 2-byte length-prefixed messages, several per connection, pipelined (RFC
 * 7766 6.2.1: every query gets its answer, in order). A connection keeps
 * the answers the socket did not take in its own output buffer and sends
 * them when it is writable; while more than 64 KiB wait, it answers no more
 * queries and reads no more (backpressure), so the pending output stays
 * under 256 KiB (the connection is closed past that). A connection closes
 * after 10 s in which it neither read a byte nor got its pending output
 * under 64 KiB, so a client that stops reading pins its buffers for 10 s at
 * most; at EOF, the buffered queries are answered and sent before it
 * closes.
 */
#include "dns.h"

#include "registry.h"
#include "http/http_int.h"
#include "weft/buf.h"
#include "weft/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define TTL_S 1
#define T_A 1
#define T_AAAA 28
#define T_SRV 33
#define T_OPT 41
#define T_ANY 255
#define RC_FORMERR 1
#define RC_NXDOMAIN 3
#define RC_NOTIMP 4
#define RC_REFUSED 5
#define RC_BADVERS 16 /* extended (RFC 6891): 4 bits in the header, 8 in OPT */

typedef struct wbuf {
    uint8_t *p;
    size_t n, max;
    bool full;
} wbuf;

static bool put(wbuf *w, const void *d, size_t n)
{
    if (w->full || w->n + n > w->max) {
        w->full = true;
        return false;
    }
    memcpy(w->p + w->n, d, n);
    w->n += n;
    return true;
}

static bool put16(wbuf *w, unsigned v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return put(w, b, 2);
}

static bool put32(wbuf *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return put(w, b, 4);
}

/* Encode a dotted name as labels; returns false if it does not fit. */
static bool put_name(wbuf *w, const char *const *labels, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(labels[i]);
        if (l == 0 || l > 63)
            return false;
        uint8_t len = (uint8_t)l;
        if (!put(w, &len, 1) || !put(w, labels[i], l))
            return false;
    }
    uint8_t z = 0;
    return put(w, &z, 1);
}

/* One record with a name given as a compression pointer. Atomic: on
 * overflow the buffer is rolled back to where the record started. */
static bool put_rr_ptr(wbuf *w, uint16_t name_off, unsigned type, const void *rdata,
                       size_t rdlen)
{
    size_t mark = w->n;
    bool ok = put16(w, 0xC000u | name_off) && put16(w, type) && put16(w, 1) &&
              put32(w, TTL_S) && put16(w, (unsigned)rdlen) && put(w, rdata, rdlen);
    if (!ok)
        w->n = mark;
    return ok;
}

typedef struct query {
    uint16_t id;
    uint16_t flags;
    char labels[8][64]; /* the last 8 labels of the name */
    size_t nlabels;
    unsigned qtype, qclass;
    size_t qend; /* offset just past the question */
    size_t edns_size;
    unsigned edns_version;
    bool edns;
    bool nul; /* a label holds a 0 byte: the name is none of ours */
} query;

/* Parse header, question and (if any) an OPT record. Returns 0, or the
 * rcode to answer with (FORMERR/NOTIMP), or -1 to drop. */
static int parse_query(const uint8_t *q, size_t len, query *out)
{
    if (len < 12)
        return -1;
    memset(out, 0, sizeof *out);
    out->id = (uint16_t)(q[0] << 8 | q[1]);
    out->flags = (uint16_t)(q[2] << 8 | q[3]);
    if (out->flags & 0x8000)
        return -1; /* a response: never answer those */
    unsigned opcode = (out->flags >> 11) & 0xF;
    unsigned qd = (unsigned)(q[4] << 8 | q[5]);
    unsigned an = (unsigned)(q[6] << 8 | q[7]), ns = (unsigned)(q[8] << 8 | q[9]);
    unsigned ar = (unsigned)(q[10] << 8 | q[11]);
    if (opcode != 0)
        return RC_NOTIMP;
    if (qd != 1 || an != 0 || ns != 0)
        return RC_FORMERR;
    size_t p = 12, total = 0;
    for (;;) {
        if (p >= len)
            return RC_FORMERR;
        unsigned l = q[p++];
        if (l == 0)
            break;
        if ((l & 0xC0) || l > 63 || p + l > len)
            return RC_FORMERR; /* no compression in questions */
        total += l + 1;
        if (total + 1 > 255) /* RFC 1035 2.3.4: 255 octets with the root's 0 */
            return RC_FORMERR;
        if (out->nlabels == 8) {
            /* a longer name is well-formed: keep its last 8 labels, which
             * decide the zone; no name of ours has that many */
            memmove(out->labels[0], out->labels[1], sizeof out->labels[0] * 7);
            out->nlabels = 7;
        }
        for (unsigned i = 0; i < l; i++) {
            char c = (char)q[p + i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c + 32);
            out->nul |= c == '\0';
            out->labels[out->nlabels][i] = c;
        }
        out->labels[out->nlabels][l] = '\0';
        out->nlabels++;
        p += l;
    }
    if (p + 4 > len)
        return RC_FORMERR;
    out->qtype = (unsigned)(q[p] << 8 | q[p + 1]);
    out->qclass = (unsigned)(q[p + 2] << 8 | q[p + 3]);
    p += 4;
    out->qend = p;
    /* EDNS0: an OPT record in the additional section (root name, type 41) */
    if (ar >= 1 && p + 11 <= len && q[p] == 0 && (q[p + 1] << 8 | q[p + 2]) == T_OPT) {
        out->edns = true;
        out->edns_size = (size_t)(q[p + 3] << 8 | q[p + 4]);
        out->edns_version = q[p + 6]; /* TTL: extended rcode, version, flags */
    }
    return 0;
}

static size_t error_answer(const query *qq, const uint8_t *q, size_t qlen, uint8_t *out, int rc,
                           bool with_question)
{
    /* AA: we are the authority for the zone, not for the names (or classes)
     * we refuse */
    unsigned aa = rc == RC_REFUSED ? 0 : 0x0400;
    uint16_t flags = (uint16_t)(0x8000 | (qq->flags & 0x7900) | aa | rc);
    out[0] = (uint8_t)(qq->id >> 8);
    out[1] = (uint8_t)qq->id;
    out[2] = (uint8_t)(flags >> 8);
    out[3] = (uint8_t)flags;
    memset(out + 4, 0, 8);
    size_t n = 12;
    if (with_question && qq->qend > 12 && qq->qend <= qlen) {
        out[5] = 1;
        memcpy(out + 12, q + 12, qq->qend - 12);
        n = qq->qend;
    }
    return n;
}

/* Our OPT record (RFC 6891: an answer to a query with one carries one),
 * version 0, with the upper 8 bits of a 12-bit rcode in its TTL. */
static bool put_opt(wbuf *w, int rc)
{
    return put(w, "\0", 1) && put16(w, T_OPT) && put16(w, 4096) &&
           put32(w, (uint32_t)(rc >> 4) << 24) && put16(w, 0);
}

/* An answer without records (NXDOMAIN, REFUSED, BADVERS) to a parsed query;
 * rc above 15 only with EDNS. */
static size_t empty_answer(const query *qq, const uint8_t *q, size_t qlen, uint8_t *out, int rc)
{
    size_t n = error_answer(qq, q, qlen, out, rc & 0xF, true);
    wbuf w = {out, n, n + 11, false};
    if (qq->edns && put_opt(&w, rc))
        out[11] = 1;
    return w.n;
}

static bool has_tag(const reg_instance *in, const char *tag)
{
    for (size_t i = 0; i < in->ntags; i++)
        if (strcasecmp(in->tags[i], tag) == 0)
            return true;
    return false;
}

/* service names are matched case-insensitively (DNS is) */
static const char *find_service(const reg_store *s, const char *lower)
{
    for (size_t i = 0; i < reg_service_count(s); i++) {
        size_t n;
        const char *name = reg_service_at(s, i, &n);
        if (n && strcasecmp(name, lower) == 0)
            return name;
    }
    return NULL;
}

size_t reg_dns_answer(const reg_store *s, const uint8_t *q, size_t qlen, uint8_t *out,
                      size_t max_len, bool udp, uint64_t now_ms)
{
    query qq;
    int prc = parse_query(q, qlen, &qq);
    if (prc < 0)
        return 0;
    if (prc > 0)
        return error_answer(&qq, q, qlen, out, prc, prc == RC_NOTIMP && qq.qend);
    /* RFC 6891 6.1.3: we speak EDNS version 0 only */
    if (qq.edns && qq.edns_version > 0)
        return empty_answer(&qq, q, qlen, out, RC_BADVERS);
    size_t limit = max_len;
    if (udp) {
        size_t adv = qq.edns ? qq.edns_size : 512;
        if (adv < 512)
            adv = 512;
        if (adv > 4096)
            adv = 4096;
        if (adv < limit)
            limit = adv;
    }
    /* zone: ... service weft */
    size_t nl = qq.nlabels;
    if (nl < 3 || strcmp(qq.labels[nl - 1], "weft") != 0 ||
        strcmp(qq.labels[nl - 2], "service") != 0 || qq.qclass != 1)
        return empty_answer(&qq, q, qlen, out, RC_REFUSED);
    size_t pre = nl - 2; /* labels before "service.weft" */
    const char *svc = NULL, *tag = NULL, *id = NULL;
    bool srv_form = false;
    if (qq.nul) {
        /* labels are compared as C strings: "web\000" must not be "web" */
    } else if (pre == 1) {
        svc = find_service(s, qq.labels[0]);
    } else if (pre == 2 && qq.labels[0][0] == '_' &&
               (strcmp(qq.labels[1], "_tcp") == 0 || strcmp(qq.labels[1], "_udp") == 0)) {
        svc = find_service(s, qq.labels[0] + 1);
        srv_form = true;
    } else if (pre == 2) {
        svc = find_service(s, qq.labels[1]);
        if (svc) {
            const reg_instance *in = NULL;
            const reg_instance **v;
            size_t n = reg_instances(s, svc, &v);
            for (size_t i = 0; i < n && !in; i++)
                if (strcasecmp(v[i]->id, qq.labels[0]) == 0)
                    in = v[i];
            if (in) {
                id = in->id;
            } else {
                /* a tag only names something if some instance carries it */
                bool known = false;
                for (size_t i = 0; i < n && !known; i++)
                    known = has_tag(v[i], qq.labels[0]);
                if (known)
                    tag = qq.labels[0];
                else
                    svc = NULL; /* NXDOMAIN below */
            }
        }
    }
    if (!svc)
        return empty_answer(&qq, q, qlen, out, RC_NXDOMAIN);

    /* header + question */
    size_t hdr = error_answer(&qq, q, qlen, out, 0, true);
    wbuf w = {out, hdr, limit, false};
    size_t reserve = qq.edns ? 11 : 0; /* room kept for our OPT record */
    w.max = limit > reserve ? limit - reserve : limit;
    unsigned an = 0, ar = 0;
    bool tc = false;
    const reg_instance **v;
    size_t n = reg_instances(s, svc, &v);
    unsigned qt = qq.qtype;
    bool want_srv = qt == T_SRV || (srv_form && qt == T_ANY);
    bool want_a = !srv_form && (qt == T_A || qt == T_ANY);
    bool want_aaaa = !srv_form && (qt == T_AAAA || qt == T_ANY);
    uint16_t target_off[256];
    const reg_instance *targets[256];
    size_t ntargets = 0;
    for (size_t i = 0; i < n; i++) {
        const reg_instance *in = v[i];
        if (!reg_instance_healthy(in, now_ms) || (tag && !has_tag(in, tag)) ||
            (id && in != (const reg_instance *)NULL && strcmp(in->id, id) != 0))
            continue;
        uint8_t a4[4], a6[16];
        bool is4 = inet_pton(AF_INET, in->address, a4) == 1;
        bool is6 = !is4 && inet_pton(AF_INET6, in->address, a6) == 1;
        bool ok = true;
        if (want_a && is4) {
            ok = put_rr_ptr(&w, 12, T_A, a4, 4);
            an += ok;
        } else if (want_aaaa && is6) {
            ok = put_rr_ptr(&w, 12, T_AAAA, a6, 16);
            an += ok;
        } else if (want_srv && (is4 || is6)) {
            /* rdata: priority, weight, port, target name (ID.NAME.service.weft) */
            size_t mark = w.n;
            char lid[64], lsvc[64];
            snprintf(lid, sizeof lid, "%s", in->id);
            snprintf(lsvc, sizeof lsvc, "%s", svc);
            const char *labels[] = {lid, lsvc, "service", "weft"};
            size_t tl = strlen(lid) + strlen(lsvc) + 2 + 8 + 5 + 1;
            ok = put16(&w, 0xC00C) && put16(&w, T_SRV) && put16(&w, 1) && put32(&w, TTL_S) &&
                 put16(&w, (unsigned)(6 + tl)) && put16(&w, 1) &&
                 put16(&w, in->weight > 65535 ? 65535 : in->weight) && put16(&w, in->port);
            size_t name_at = w.n;
            ok = ok && put_name(&w, labels, 4);
            if (ok) {
                if (ntargets < 256) { /* past that: no additional record */
                    target_off[ntargets] = (uint16_t)name_at;
                    targets[ntargets++] = in;
                }
                an++;
            } else {
                w.n = mark;
                w.full = true;
            }
        }
        if (!ok) {
            tc = udp;
            break;
        }
    }
    /* additional: the SRV targets' addresses (skipped, not truncated, if they do not fit) */
    for (size_t i = 0; i < ntargets && !w.full; i++) {
        uint8_t a4[4], a6[16];
        if (target_off[i] > 0x3FFF)
            break;
        if (inet_pton(AF_INET, targets[i]->address, a4) == 1) {
            if (!put_rr_ptr(&w, target_off[i], T_A, a4, 4))
                break;
        } else if (inet_pton(AF_INET6, targets[i]->address, a6) == 1) {
            if (!put_rr_ptr(&w, target_off[i], T_AAAA, a6, 16))
                break;
        }
        ar++;
    }
    if (qq.edns) {
        w.max = limit;
        w.full = false;
        if (put_opt(&w, 0))
            ar++;
    }
    out[6] = (uint8_t)(an >> 8);
    out[7] = (uint8_t)an;
    out[10] = (uint8_t)(ar >> 8);
    out[11] = (uint8_t)ar;
    if (tc)
        out[2] |= 0x02;
    return w.n;
}

/* ------------------------------------------------------------------ */
/* I/O                                                                  */

#define TCP_IDLE_MS 10000
#define MAX_TCP 256
#define TCP_OUT_HIGH (64 * 1024) /* pending output past this: stop answering */
#define TCP_OUT_MAX (256 * 1024) /* pending output past this: close */

typedef struct dns_tcp {
    struct dns_tcp *next, *prev;
    struct reg_dns_server *d;
    weft_io io;
    weft_timer idle;
    uint8_t in[2 + 65535];
    size_t inlen;
    weft_buf out; /* answers the socket has not taken yet (at most TCP_OUT_MAX) */
    bool eof; /* the client sent FIN: answer what is buffered, then close */
} dns_tcp;

struct reg_dns_server {
    const reg_store *store;
    weft_loop *loop;
    int ufd, tfd;
    weft_io uio, tio;
    dns_tcp *conns;
    size_t nconns;
    uint8_t out[65535 + 2];
    char addr[80];
};

static void tcp_close(dns_tcp *t)
{
    struct reg_dns_server *d = t->d;
    weft_io_stop(d->loop, &t->io);
    weft_timer_stop(d->loop, &t->idle);
    close(t->io.fd);
    if (t->prev)
        t->prev->next = t->next;
    else
        d->conns = t->next;
    if (t->next)
        t->next->prev = t->prev;
    d->nconns--;
    weft_buf_release(&t->out);
    free(t);
}

static void tcp_idle(weft_loop *loop, weft_timer *tm)
{
    (void)loop;
    tcp_close(tm->data);
}

/* Send what the socket takes; <0 on a socket error. Progress restarts the
 * idle timer only once the output is back under TCP_OUT_HIGH: a client that
 * stops reading is closed after TCP_IDLE_MS, even if its kernel still lets
 * a trickle through. */
static int tcp_flush(weft_loop *loop, dns_tcp *t)
{
    while (weft_buf_used(&t->out)) {
        ssize_t w = send(t->io.fd, weft_buf_rptr(&t->out), weft_buf_used(&t->out), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return weft_err_from_errno(errno);
        }
        weft_buf_consume(&t->out, (size_t)w);
        if (weft_buf_used(&t->out) < TCP_OUT_HIGH)
            weft_timer_start(loop, &t->idle, TCP_IDLE_MS);
    }
    return 0;
}

/* Whether t->in holds a whole length-prefixed message at pos. */
static bool tcp_complete(const dns_tcp *t, size_t pos)
{
    size_t have = t->inlen - pos;
    return have >= 2 && have >= 2 + (size_t)(t->in[pos] << 8 | t->in[pos + 1]);
}

/* Answer the complete queries in t->in while the pending output stays under
 * TCP_OUT_HIGH, send, and set the interest: WRITE while output is pending,
 * READ while under the mark (backpressure: a pipelining client that does
 * not read its answers is not read from either). Closes t on error, and at
 * EOF once everything is sent. */
static void tcp_serve(weft_loop *loop, dns_tcp *t)
{
    struct reg_dns_server *d = t->d;
    size_t pos = 0;
    bool ok = true;
    for (;;) {
        while (weft_buf_used(&t->out) < TCP_OUT_HIGH && tcp_complete(t, pos)) {
            size_t mlen = (size_t)(t->in[pos] << 8 | t->in[pos + 1]);
            size_t alen = reg_dns_answer(d->store, t->in + pos + 2, mlen, d->out + 2, 65535,
                                         false, weft_loop_now_ms(loop));
            pos += 2 + mlen;
            if (!alen)
                continue;
            d->out[0] = (uint8_t)(alen >> 8);
            d->out[1] = (uint8_t)alen;
            if (weft_buf_append(&t->out, d->out, alen + 2) < 0) {
                ok = false;
                break;
            }
        }
        if (!ok || tcp_flush(loop, t) < 0) {
            ok = false;
            break;
        }
        /* the socket took some: answer more if the mark allows */
        if (weft_buf_used(&t->out) >= TCP_OUT_HIGH || !tcp_complete(t, pos))
            break;
    }
    memmove(t->in, t->in + pos, t->inlen - pos);
    t->inlen -= pos;
    weft_buf_shrink_if_empty(&t->out); /* idle connections hold no output buffer */
    bool pending = weft_buf_used(&t->out) > 0;
    if (t->eof && !pending)
        ok = false; /* all answered: close */
    unsigned ev = pending ? WEFT_IO_WRITE : 0;
    if (!t->eof && weft_buf_used(&t->out) < TCP_OUT_HIGH)
        ev |= WEFT_IO_READ;
    if (!ok || weft_io_start(loop, &t->io, ev) < 0)
        tcp_close(t);
}

static void tcp_event(weft_loop *loop, weft_io *io, unsigned ev)
{
    dns_tcp *t = io->data;
    if ((ev & WEFT_IO_READ) && (t->io.events & WEFT_IO_READ) && t->inlen < sizeof t->in) {
        ssize_t n = read(io->fd, t->in + t->inlen, sizeof t->in - t->inlen);
        if (n > 0) {
            t->inlen += (size_t)n;
            weft_timer_start(loop, &t->idle, TCP_IDLE_MS);
        } else if (n == 0) {
            t->eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
            tcp_close(t);
            return;
        }
    }
    tcp_serve(loop, t);
}

static void tcp_accept(weft_loop *loop, weft_io *io, unsigned ev)
{
    (void)ev;
    struct reg_dns_server *d = io->data;
    for (int i = 0; i < 32; i++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        dns_tcp *t = d->nconns < MAX_TCP ? calloc(1, sizeof *t) : NULL;
        if (!t) {
            close(fd);
            continue;
        }
        t->d = d;
        weft_buf_init(&t->out, TCP_OUT_MAX);
        weft_io_init(&t->io, fd, tcp_event, t);
        weft_timer_init(&t->idle, tcp_idle, t);
        weft_timer_start(loop, &t->idle, TCP_IDLE_MS);
        t->next = d->conns;
        if (d->conns)
            d->conns->prev = t;
        d->conns = t;
        d->nconns++;
        if (weft_io_start(loop, &t->io, WEFT_IO_READ) < 0)
            tcp_close(t);
    }
}

static void udp_read(weft_loop *loop, weft_io *io, unsigned ev)
{
    (void)ev;
    struct reg_dns_server *d = io->data;
    for (int i = 0; i < 64; i++) {
        uint8_t q[4096];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(io->fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
        if (n < 0)
            return;
        size_t alen = reg_dns_answer(d->store, q, (size_t)n, d->out, 4096, true,
                                     weft_loop_now_ms(loop));
        if (alen)
            sendto(io->fd, d->out, alen, 0, (struct sockaddr *)&from, fl);
    }
}

int reg_dns_server_start(const char *hostport, const reg_store *s, weft_loop *loop,
                         reg_dns_server **out)
{
    struct sockaddr_storage sa;
    socklen_t len;
    if (weft_http_parse_hostport(hostport, &sa, &len) < 0)
        return WEFT_EADDR;
    reg_dns_server *d = calloc(1, sizeof *d);
    if (!d)
        return WEFT_ENOMEM;
    d->store = s;
    d->loop = loop;
    int one = 1, rc;
    d->ufd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    d->tfd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->ufd < 0 || d->tfd < 0)
        goto fail;
    setsockopt(d->tfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(d->ufd, (struct sockaddr *)&sa, len) < 0)
        goto fail;
    /* port 0: let UDP pick, then put TCP on the same port */
    socklen_t l = sizeof sa;
    getsockname(d->ufd, (struct sockaddr *)&sa, &l);
    if (bind(d->tfd, (struct sockaddr *)&sa, l) < 0 || listen(d->tfd, 128) < 0)
        goto fail;
    weft_http_format_addr(&sa, d->addr, sizeof d->addr);
    weft_io_init(&d->uio, d->ufd, udp_read, d);
    weft_io_init(&d->tio, d->tfd, tcp_accept, d);
    if (weft_io_start(loop, &d->uio, WEFT_IO_READ) < 0 || weft_io_start(loop, &d->tio, WEFT_IO_READ) < 0)
        goto fail;
    weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("service", "registry-dns"),
             WEFT_KV_STR("addr", d->addr));
    *out = d;
    return 0;
fail:
    rc = weft_err_from_errno(errno);
    weft_log(WEFT_LOG_ERROR, "cannot listen for DNS", WEFT_KV_STR("addr", hostport),
             WEFT_KV_STR("error", strerror(errno)));
    /* the UDP watcher is registered if only the TCP one failed: the loop
     * must not keep a pointer into d (a no-op if it never started) */
    weft_io_stop(loop, &d->uio);
    if (d->ufd >= 0)
        close(d->ufd);
    if (d->tfd >= 0)
        close(d->tfd);
    free(d);
    return rc < 0 ? rc : WEFT_ESYS;
}

void reg_dns_server_stop(reg_dns_server *d)
{
    if (!d)
        return;
    while (d->conns)
        tcp_close(d->conns);
    weft_io_stop(d->loop, &d->uio);
    weft_io_stop(d->loop, &d->tio);
    close(d->ufd);
    close(d->tfd);
    free(d);
}
