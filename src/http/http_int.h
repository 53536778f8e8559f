/* http_int.h — declarations shared between files of src/http only. */
#ifndef WEFT_HTTP_INT_H
#define WEFT_HTTP_INT_H

#include "codec.h"

#include <sys/socket.h>

/* Parse "HOST:PORT" / "[V6]:PORT" / ":PORT" / "*:PORT" into a socket address
 * (IP literals and "localhost" only; no DNS). */
int weft_http_parse_hostport(const char *spec, struct sockaddr_storage *sa, socklen_t *len);
/* Join a host and a port as "host:port", bracketing IPv6 literals. */
void weft_http_join_hostport(const char *host, unsigned port, char *buf, size_t n);
/* "ip:port" or "[ip6]:port". */
void weft_http_format_addr(const struct sockaddr_storage *sa, char *buf, size_t n);

/* A non-blocking listening socket bound to sa (SO_REUSEADDR; SO_REUSEPORT
 * when asked; v6-only for IPv6). 0 and *out, or a WEFT_E* code. */
int weft_tcp_listen(const struct sockaddr_storage *sa, socklen_t len, bool reuseport, int *out);
/* Start a non-blocking TCP connect to "host:port" (IP literal). Returns
 * the socket (wait for it to be writable, then ask weft_tcp_connect_result)
 * or a negative WEFT_E* code. */
int weft_tcp_connect_start(const char *hostport);
/* The outcome of a connect started above: 0 or a WEFT_E* code. */
int weft_tcp_connect_result(int fd);

#endif
