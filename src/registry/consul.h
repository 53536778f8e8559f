/*
 * consul.h — the Consul-compatible subset of the registry's HTTP API: a
 * translation layer over the same store (no state of its own).
 *
 * Ownership: returned JSON is a new reference owned by the caller; input
 * JSON is borrowed.
 */
#ifndef WEFT_REGISTRY_CONSUL_H
#define WEFT_REGISTRY_CONSUL_H

#include "store.h"

#include <jansson.h>

enum reg_consul_view {
    REG_CONSUL_NONE = 0,
    REG_CONSUL_SERVICES,     /* GET /v1/catalog/services */
    REG_CONSUL_CATALOG,      /* GET /v1/catalog/service/NAME */
    REG_CONSUL_HEALTH,       /* GET /v1/health/service/NAME */
};

/* The answer for a read view (service ignored for REG_CONSUL_SERVICES). */
json_t *reg_consul_view(const reg_store *s, int view, const char *service, bool passing,
                        const char *tag, uint64_t now_ms);

/* Translate a Consul service registration (PUT /v1/agent/service/register)
 * into a native registration body. Keys are matched case-insensitively, as
 * Consul does. On success *native is a new object and *svc / *id point
 * into it ("service" and "id" keys removed from the body by the caller's
 * use of them); WEFT_EINVAL with a message otherwise. */
int reg_consul_translate(json_t *consul, json_t **native, char *svc, size_t svclen, char *id,
                         size_t idlen, char *why, size_t whylen);

/* The node name and datacenter this registry reports. */
#define REG_CONSUL_NODE "weft"
#define REG_CONSUL_DC "dc1"

#endif
