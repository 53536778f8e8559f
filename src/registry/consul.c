/*
 * consul.c — Consul-compatible views and registration translation (see
 * consul.h).
 *
 * Design. Consul clients (python-consul, Prometheus consul_sd_configs,
 * Spring Cloud Consul, Traefik) speak a handful of endpoints; this file
 * maps them onto the native model instead of keeping a second one. The
 * registry presents itself as a single Consul agent and server: node
 * "weft" in datacenter "dc1". Every instance gets one synthetic check,
 * "service:ID", whose status is the instance's health (passing when
 * healthy, critical otherwise), so Consul's health filters mean the same as
 * the native ?healthy=true. Indexes are native revisions, so blocking
 * queries (index/wait, X-Consul-Index) behave as on the native API.
 *
 * Registration keys are case-insensitive, as in Consul. Things Consul can
 * do that the native model cannot are rejected with a message instead of
 * being ignored silently: several active checks per service, script and
 * gRPC checks.
 */
#include "consul.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static json_t *node_json(void)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:{}, s:{}}", "ID", "", "Node", REG_CONSUL_NODE,
                     "Address", "127.0.0.1", "Datacenter", REG_CONSUL_DC, "TaggedAddresses",
                     "Meta");
}

static json_t *tags_json(const reg_instance *in)
{
    json_t *a = json_array();
    for (size_t i = 0; i < in->ntags; i++)
        json_array_append_new(a, json_string(in->tags[i]));
    return a;
}

static bool has_tag(const reg_instance *in, const char *tag)
{
    for (size_t k = 0; k < in->ntags; k++)
        if (strcmp(in->tags[k], tag) == 0)
            return true;
    return false;
}

static json_t *meta_json(const reg_instance *in)
{
    return in->meta ? json_deep_copy(in->meta) : json_object();
}

static json_t *services_view(const reg_store *s)
{
    json_t *o = json_object();
    for (size_t i = 0; i < reg_service_count(s); i++) {
        size_t n;
        const char *name = reg_service_at(s, i, &n);
        if (n == 0)
            continue;
        const reg_instance **v;
        reg_instances(s, name, &v);
        json_t *tags = json_array();
        for (size_t k = 0; k < n; k++)
            for (size_t t = 0; t < v[k]->ntags; t++) {
                bool seen = false;
                size_t ti;
                json_t *e;
                json_array_foreach(tags, ti, e) seen |= strcmp(json_string_value(e), v[k]->tags[t]) == 0;
                if (!seen)
                    json_array_append_new(tags, json_string(v[k]->tags[t]));
            }
        json_object_set_new(o, name, tags);
    }
    return o;
}

static json_t *catalog_entry(const reg_instance *in)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:{}, s:{}, s:s, s:s, s:o, s:s, s:i, s:o,"
                     " s:{s:i, s:i}, s:b, s:I, s:I}",
                     "ID", "", "Node", REG_CONSUL_NODE, "Address", "127.0.0.1", "Datacenter",
                     REG_CONSUL_DC, "TaggedAddresses", "NodeMeta", "ServiceID", in->id,
                     "ServiceName", in->service, "ServiceTags", tags_json(in), "ServiceAddress",
                     in->address, "ServicePort", (int)in->port, "ServiceMeta", meta_json(in),
                     "ServiceWeights", "Passing", (int)in->weight, "Warning", 1,
                     "ServiceEnableTagOverride", 0, "CreateIndex", (json_int_t)in->create_rev,
                     "ModifyIndex", (json_int_t)in->mod_rev);
}

static json_t *health_entry(const reg_instance *in, uint64_t now_ms)
{
    bool ok = reg_instance_healthy(in, now_ms);
    const char *type = in->check ? (in->check->kind == REG_CHECK_HTTP ? "http" : "tcp")
                                 : in->ttl_ms ? "ttl" : "";
    char cid[260], name[260];
    snprintf(cid, sizeof cid, "service:%s", in->id);
    snprintf(name, sizeof name, "Service '%s' check", in->service);
    json_t *svc = json_pack("{s:s, s:s, s:o, s:s, s:i, s:o, s:{s:i, s:i}, s:b, s:I, s:I}", "ID",
                            in->id, "Service", in->service, "Tags", tags_json(in), "Address",
                            in->address, "Port", (int)in->port, "Meta", meta_json(in), "Weights",
                            "Passing", (int)in->weight, "Warning", 1, "EnableTagOverride", 0,
                            "CreateIndex", (json_int_t)in->create_rev, "ModifyIndex",
                            (json_int_t)in->mod_rev);
    json_t *chk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "Node",
                            REG_CONSUL_NODE, "CheckID", cid, "Name", name, "Status",
                            ok ? "passing" : "critical", "Output", "", "ServiceID", in->id,
                            "ServiceName", in->service, "ServiceTags", tags_json(in), "Type",
                            type);
    return json_pack("{s:o, s:o, s:[o]}", "Node", node_json(), "Service", svc, "Checks", chk);
}

json_t *reg_consul_view(const reg_store *s, int view, const char *service, bool passing,
                        const char *tag, uint64_t now_ms)
{
    if (view == REG_CONSUL_SERVICES)
        return services_view(s);
    json_t *a = json_array();
    const reg_instance **v;
    size_t n = reg_instances(s, service, &v);
    for (size_t i = 0; i < n; i++) {
        if (tag && !has_tag(v[i], tag))
            continue;
        if (view == REG_CONSUL_HEALTH) {
            if (passing && !reg_instance_healthy(v[i], now_ms))
                continue;
            json_array_append_new(a, health_entry(v[i], now_ms));
        } else {
            json_array_append_new(a, catalog_entry(v[i]));
        }
    }
    return a;
}

/* ---- registration ---- */

static json_t *iget(json_t *o, const char *key)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) if (strcasecmp(k, key) == 0) return v;
    return NULL;
}

static int check_keys(json_t *o, const char *const *known, const char *where, char *why,
                      size_t whylen)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            ok |= strcasecmp(k, known[i]) == 0;
        if (!ok) {
            snprintf(why, whylen, "%s%.64s: not supported", where, k);
            return WEFT_EINVAL;
        }
    }
    return 0;
}

/* Whether cid names the TTL check of instance id the way Consul's agent
 * does: "service:ID", "service:ID:N" (one of several checks), or the ID. */
static bool ttl_check_id_ok(const char *cid, const char *id)
{
    size_t n = strlen(id);
    if (strcmp(cid, id) == 0)
        return true;
    if (strncmp(cid, "service:", 8) != 0 || strncmp(cid + 8, id, n) != 0)
        return false;
    const char *rest = cid + 8 + n;
    if (*rest == '\0')
        return true;
    if (*rest++ != ':' || *rest == '\0')
        return false;
    while (*rest >= '0' && *rest <= '9')
        rest++;
    return *rest == '\0';
}

/* One Consul check definition into the native body (ttl or check); id is
 * the instance's. */
static int add_check(json_t *c, json_t *native, const char *id, char *why, size_t whylen)
{
    static const char *const known[] = {"Name", "CheckID", "ID", "Notes", "HTTP", "TCP",
                                        "TTL", "Interval", "Timeout", "Status", "Method",
                                        "DeregisterCriticalServiceAfter", NULL};
    if (!json_is_object(c)) {
        snprintf(why, whylen, "Check: expected an object");
        return WEFT_EINVAL;
    }
    if (check_keys(c, known, "Check.", why, whylen) < 0)
        return WEFT_EINVAL;
    json_t *ttl = iget(c, "TTL"), *http = iget(c, "HTTP"), *tcp = iget(c, "TCP");
    json_t *method = iget(c, "Method");
    if (method && (!json_is_string(method) || strcmp(json_string_value(method), "GET") != 0)) {
        snprintf(why, whylen, "Check.Method: only GET is supported");
        return WEFT_EINVAL;
    }
    if ((ttl != NULL) + (http != NULL) + (tcp != NULL) != 1) {
        snprintf(why, whylen, "Check: expected exactly one of TTL, HTTP and TCP");
        return WEFT_EINVAL;
    }
    if (ttl) {
        if (iget(c, "DeregisterCriticalServiceAfter")) {
            snprintf(why, whylen, "Check.DeregisterCriticalServiceAfter: only with HTTP or TCP "
                                  "checks (a TTL check's lease already removes the instance)");
            return WEFT_EINVAL;
        }
        if (json_object_get(native, "ttl")) {
            snprintf(why, whylen, "Check: only one TTL check per service");
            return WEFT_EINVAL;
        }
        /* The TTL check is the instance's lease and is passed by the
         * instance's id: a name of its own would be refused (404) on every
         * pass, and the lease would run out while the client heartbeats. */
        json_t *cid = iget(c, "CheckID");
        if (!cid)
            cid = iget(c, "ID");
        if (cid && !json_is_null(cid) &&
            (!json_is_string(cid) || !ttl_check_id_ok(json_string_value(cid), id))) {
            snprintf(why, whylen,
                     "Check.CheckID: a TTL check is the instance's lease, named "
                     "service:%.200s (or left out)", id);
            return WEFT_EINVAL;
        }
        json_object_set(native, "ttl", ttl);
        return 0;
    }
    if (json_object_get(native, "check")) {
        snprintf(why, whylen, "Check: only one HTTP or TCP check per service");
        return WEFT_EINVAL;
    }
    json_t *nc = json_object();
    json_object_set(nc, http ? "http" : "tcp", http ? http : tcp);
    json_t *v;
    if ((v = iget(c, "Interval")))
        json_object_set(nc, "interval", v);
    if ((v = iget(c, "Timeout")))
        json_object_set(nc, "timeout", v);
    if ((v = iget(c, "DeregisterCriticalServiceAfter")))
        json_object_set(nc, "deregister_after", v);
    if ((v = iget(c, "Status"))) {
        const char *st = json_string_value(v);
        /* warning is not passing (Consul's ?passing leaves it out) */
        json_object_set_new(nc, "status",
                            json_string(st && strcmp(st, "passing") == 0 ? "passing"
                                                                         : "critical"));
    }
    json_object_set_new(native, "check", nc);
    return 0;
}

int reg_consul_translate(json_t *c, json_t **native, char *svc, size_t svclen, char *id,
                         size_t idlen, char *why, size_t whylen)
{
    static const char *const known[] = {"Name", "ID",      "Tags",   "Address",
                                        "Port", "Meta",    "Weights", "Check",
                                        "Checks", "EnableTagOverride", "Kind",
                                        "TaggedAddresses", NULL};
    *native = NULL;
    if (!json_is_object(c)) {
        snprintf(why, whylen, "body: expected a JSON object");
        return WEFT_EINVAL;
    }
    if (check_keys(c, known, "", why, whylen) < 0)
        return WEFT_EINVAL;
    json_t *name = iget(c, "Name"), *v;
    if (!json_is_string(name) || !reg_name_ok(json_string_value(name))) {
        snprintf(why, whylen, "Name: 1-200 characters of letters, digits, '.', '_', '-', ':'");
        return WEFT_EINVAL;
    }
    json_t *jid = iget(c, "ID");
    if (jid && (!json_is_string(jid) || !reg_name_ok(json_string_value(jid)))) {
        snprintf(why, whylen, "ID: 1-200 characters of letters, digits, '.', '_', '-', ':'");
        return WEFT_EINVAL;
    }
    if ((v = iget(c, "Kind")) && !(json_is_string(v) && json_string_length(v) == 0)) {
        snprintf(why, whylen, "Kind: only ordinary services are supported");
        return WEFT_EINVAL;
    }
    snprintf(svc, svclen, "%s", json_string_value(name));
    snprintf(id, idlen, "%s", jid ? json_string_value(jid) : json_string_value(name));
    v = iget(c, "Address");
    if (v && !json_is_string(v) && !json_is_null(v)) {
        snprintf(why, whylen, "Address: expected a string");
        return WEFT_EINVAL;
    }
    json_t *n = json_object();
    /* Consul: an empty address means the agent's (here: the registry's loopback) */
    json_object_set_new(n, "address", v && json_is_string(v) && json_string_length(v)
                                          ? json_incref(v)
                                          : json_string("127.0.0.1"));
    if ((v = iget(c, "Port")))
        json_object_set(n, "port", v);
    if ((v = iget(c, "Tags")) && !json_is_null(v))
        json_object_set(n, "tags", v);
    if ((v = iget(c, "Meta")) && !json_is_null(v))
        json_object_set(n, "meta", v);
    if ((v = iget(c, "Weights")) && json_is_object(v) && iget(v, "Passing"))
        json_object_set(n, "weight", iget(v, "Passing"));
    if ((v = iget(c, "Check")) && !json_is_null(v) && add_check(v, n, id, why, whylen) < 0)
        goto fail;
    if ((v = iget(c, "Checks")) && !json_is_null(v)) {
        if (!json_is_array(v)) {
            snprintf(why, whylen, "Checks: expected an array");
            goto fail;
        }
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (add_check(e, n, id, why, whylen) < 0) goto fail;
    }
    *native = n;
    return 0;
fail:
    json_decref(n);
    return WEFT_EINVAL;
}
