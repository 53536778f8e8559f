/*
 * eureka.h — the Eureka-compatible subset of the registry's HTTP API: a
 * translation layer over the same store (no state of its own), plus the
 * small XML reader and writer Eureka's wire format needs.
 *
 * Ownership: returned JSON is a new reference and returned text a malloc'd
 * buffer, both owned by the caller; input JSON and store pointers are
 * borrowed. Threading: the store's (one thread).
 */
#ifndef WEFT_REGISTRY_EUREKA_H
#define WEFT_REGISTRY_EUREKA_H

#include "store.h"

#include <jansson.h>

enum reg_eureka_view {
    REG_EUREKA_APPS = 1, /* GET /apps, /apps/delta: every application */
    REG_EUREKA_APP,      /* GET /apps/{app} */
    REG_EUREKA_INSTANCE, /* GET /apps/{app}/{id}; /instances/{id} with app NULL */
    REG_EUREKA_VIP,      /* GET /vips/{vip}: applications filtered by vipAddress */
    REG_EUREKA_SVIP,     /* GET /svips/{svip}: by secureVipAddress */
};

/* Render a view as Eureka JSON (json true) or XML. `name` is the app (or
 * VIP), `id` the instance (REG_EUREKA_INSTANCE only). Returns 0 with a
 * NUL-terminated *out of *len bytes, WEFT_ENOTFOUND if the app, instance or
 * VIP has no instance, or WEFT_ENOMEM. */
int reg_eureka_render(const reg_store *s, int view, const char *name, const char *id, bool json,
                      uint64_t now_ms, char **out, size_t *len);

/* The service holding instance `id` of application `app` (matched
 * case-insensitively; NULL: any application), or NULL. The pointer is the
 * store's (valid until the store changes). */
const char *reg_eureka_locate(const reg_store *s, const char *app, const char *id);

/* An Eureka status name to the native status: UP, DOWN, STARTING,
 * OUT_OF_SERVICE, and UNKNOWN as STARTING (not serving yet, not failed).
 * -1 for anything else. */
int reg_eureka_status(const char *s);

/* Parse an XML document into Eureka's JSON convention: {"root": value},
 * where an element with child elements is an object (repeated children
 * become an array), attributes are "@name" keys, text beside attributes
 * is "$", and an element with text only is a string. No DTDs, namespaces
 * are plain names. 0 with a new *out, or WEFT_EINVAL with a message. */
int reg_eureka_xml_parse(const char *p, size_t n, json_t **out, char *why, size_t whylen);

/* Translate a registration body ({"instance": {...}}, parsed from JSON or
 * XML) for path application `app` into a native registration body. The
 * service is the one that already holds the instance, else an existing
 * service whose name matches `app` case-insensitively, else `app` in
 * lower case. On success *native is a new object and svc / id are filled;
 * WEFT_EINVAL with a message otherwise. */
int reg_eureka_translate(const reg_store *s, const char *app, json_t *body, json_t **native,
                         char *svc, size_t svclen, char *id, size_t idlen, char *why,
                         size_t whylen);

/* Eureka's default lease (LeaseInfo.DEFAULT_LEASE_DURATION), seconds. */
#define REG_EUREKA_LEASE_S 90

#endif
