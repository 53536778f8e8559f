/*
 * dns.h — the registry's DNS interface (RFC 1035 / RFC 2782), UDP and TCP.
 *
 * Names (case-insensitive; the zone is "service.weft"):
 *   NAME.service.weft            A / AAAA of the healthy instances of NAME
 *                                (instances whose address is an IP literal),
 *                                SRV as below
 *   _NAME._tcp.service.weft      SRV: priority 1, weight = instance weight,
 *   _NAME._udp.service.weft      port, target ID.NAME.service.weft; the
 *                                targets' A/AAAA go in the additional section
 *   TAG.NAME.service.weft        A / AAAA / SRV of healthy instances with TAG
 *   ID.NAME.service.weft         A / AAAA of that instance (SRV targets)
 * Unknown names: NXDOMAIN. A known service with nothing healthy, or a type
 * with no data: NOERROR with no answers. TTL 1 s (fresh, like Consul's 0,
 * without defeating every cache). Answers in the zone are authoritative
 * (AA); names outside it, or another class, get REFUSED without AA.
 * Over UDP an answer larger than 512 bytes (or the EDNS0 size the query
 * advertises, up to 4096) is cut at a record boundary with TC set, so the
 * client retries over TCP. Malformed queries get FORMERR when a header can
 * be answered, and are dropped otherwise; anything other than a standard
 * query gets NOTIMP. A query with an OPT record gets one back on every
 * answer; an EDNS version above 0 gets BADVERS (RFC 6891). Over TCP,
 * pipelined queries are all answered in order, with backpressure (reading
 * stops while 64 KiB of answers wait; a client that never reads is closed).
 */
#ifndef WEFT_REGISTRY_DNS_H
#define WEFT_REGISTRY_DNS_H

#include "store.h"
#include "weft/loop.h"

/* Answer one DNS query message. out must hold at least 65535 bytes;
 * max_len is the size limit for this transport (512..4096 for UDP, 65535
 * for TCP). Returns the answer length, or 0 to drop the query. Pure: no I/O. */
size_t reg_dns_answer(const reg_store *s, const uint8_t *q, size_t qlen, uint8_t *out,
                      size_t max_len, bool udp, uint64_t now_ms);

/* Serve DNS on HOST:PORT (UDP and TCP, same port; port 0 picks one) from
 * the store, on `loop`. Logs the address it listens on. */
typedef struct reg_dns_server reg_dns_server;
int reg_dns_server_start(const char *hostport, const reg_store *s, weft_loop *loop,
                         reg_dns_server **out);
void reg_dns_server_stop(reg_dns_server *d);

#endif
