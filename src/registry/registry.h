/*
 * registry.h — the registry server: store + native HTTP API, on one loop.
 *
 * Create with reg_server_new() on any thread, add its routes to an HTTP
 * server before the workers start, then reg_server_start() on the loop
 * that serves them (the registry runs one worker: one owner for the state,
 * no locks). Stop on the same loop after the HTTP server stopped.
 */
#ifndef WEFT_REGISTRY_REGISTRY_H
#define WEFT_REGISTRY_REGISTRY_H

#include "etcd.h"
#include "store.h"
#include "weft/http.h"
#include "weft/loop.h"

typedef struct reg_server reg_server;

reg_server *reg_server_new(const reg_store_opts *o);
int reg_server_routes(reg_server *rs, weft_http_server *srv);
/* Keep state in DIR (snapshot + journal): replayed at start, changes
 * acknowledged only once durable. The string must outlive the server. */
int reg_server_set_data_dir(reg_server *rs, const char *dir);
/* Keep the state in etcd (see etcd.h): the store becomes a mirror. */
void reg_server_set_etcd(reg_server *rs, const reg_etcd_url *url);
/* Also answer DNS on HOST:PORT (UDP + TCP), see dns.h. */
void reg_server_set_dns(reg_server *rs, const char *hostport);
int reg_server_start(reg_server *rs, weft_loop *loop);
/* On drain: answer parked blocking queries and end watch streams. */
void reg_server_drain(reg_server *rs);
void reg_server_stop(reg_server *rs);
void reg_server_free(reg_server *rs);

#endif
