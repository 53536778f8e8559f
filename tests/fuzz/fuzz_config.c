/*
 * fuzz_config.c — libFuzzer harness for the YAML loader (config.h) and the
 * gateway validator built on it (gw_config_from_conf).
 *
 * The input is the document text. A loaded document is read twice over:
 * first the gateway validator runs on it, as `weft gateway` would, followed
 * by weft_conf_check_unused(); then every node is walked with every typed
 * getter, after which no key can be left unused. Config files are user
 * input, so whatever the bytes, each call must either succeed with an empty
 * error buffer or fail with a message naming the file — "fuzz.yaml:LINE:COL:
 * ..." — and the getters must keep their documented contracts (value left
 * alone when the key is absent, results inside the requested range, getters
 * agreeing with the tree). A violation is a bug of our own code, so it
 * traps; ASan/UBSan and LeakSanitizer catch the rest.
 *
 * A jwt.jwks path in the input is opened by the validator; stdin is pointed
 * at /dev/null first so that "/dev/stdin" fails fast instead of blocking.
 */
#include "gateway/gw.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

#define FILE_NAME "fuzz.yaml"
#define SENTINEL_I64 ((int64_t)0x5eed5eed5eedLL)
#define SENTINEL_U64 ((uint64_t)0xfeedfacecafeULL)
#define PROBE_KEY "\x01no such key" /* absent unless the input spells it */
#define GETTER_KEYS 32              /* typed getters per mapping: keeps big maps linear */

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The buffer holds a NUL-terminated string. */
static bool terminated(const weft_conf_err *err)
{
    return memchr(err->msg, '\0', sizeof err->msg) != NULL;
}

static void reset(weft_conf_err *err)
{
    memset(err->msg, 'X', sizeof err->msg);
    err->msg[0] = '\0';
}

/* Every call's contract: 0 and an untouched (empty) buffer, or
 * WEFT_ECONFIG and "fuzz.yaml:LINE:COL: ..." located inside the document. */
static void check_result(int rc, const weft_conf_err *err)
{
    CHECK(terminated(err));
    if (rc == 0) {
        CHECK(err->msg[0] == '\0');
        return;
    }
    CHECK(rc == WEFT_ECONFIG);
    CHECK(err->msg[0] != '\0');
    CHECK(starts_with(err->msg, FILE_NAME ":"));
    const char *p = err->msg + strlen(FILE_NAME ":");
    char *end;
    long line = strtol(p, &end, 10);
    CHECK(end != p && *end == ':' && line >= 1);
    p = end + 1;
    long col = strtol(p, &end, 10);
    CHECK(end != p && *end == ':' && col >= 1);
}

/* Same, but the API also allows a plain "fuzz.yaml: reason" (load errors). */
static void check_load_result(int rc, const weft_conf_err *err)
{
    CHECK(terminated(err));
    if (rc == 0) {
        CHECK(err->msg[0] == '\0');
        return;
    }
    CHECK(rc == WEFT_ECONFIG || rc == WEFT_ENOMEM);
    CHECK(err->msg[0] != '\0');
    CHECK(starts_with(err->msg, FILE_NAME ":"));
}

static void check_node_basics(const weft_conf_node *n)
{
    int kind = weft_conf_kind(n);
    CHECK(kind == WEFT_CONF_SCALAR || kind == WEFT_CONF_MAP || kind == WEFT_CONF_SEQ);
    CHECK(weft_conf_line(n) >= 1 && weft_conf_column(n) >= 1);
    CHECK(weft_conf_file(n) && strcmp(weft_conf_file(n), FILE_NAME) == 0);
    CHECK((weft_conf_scalar(n) != NULL) == (kind == WEFT_CONF_SCALAR));
    if (kind != WEFT_CONF_MAP) {
        const char *k = "x";
        CHECK(weft_conf_map_len(n) == 0);
        CHECK(weft_conf_map_at(n, 0, &k) == NULL && k == NULL);
    }
    if (kind != WEFT_CONF_SEQ) {
        CHECK(weft_conf_seq_len(n) == 0);
        CHECK(weft_conf_seq_at(n, 0) == NULL);
    }
}

/* Every typed getter on one key of `map` (a node of any kind). */
static void typed_getters(const weft_conf_node *map, const char *key)
{
    static const char *const choices[] = {"lru", "lfu", "a", "srv", "true", "", NULL};
    weft_conf_err err;
    int rc;

    reset(&err);
    const char *s = "unchanged";
    rc = weft_conf_string(map, key, &s, &err);
    check_result(rc, &err);
    if (rc == 0 && strcmp(s, "unchanged") != 0) {
        const weft_conf_node *v = weft_conf_get(map, key);
        CHECK(v && weft_conf_scalar(v) == s);
    }

    static const int64_t iranges[][2] = {{INT64_MIN, INT64_MAX}, {0, 100}, {1, 65535}};
    for (size_t r = 0; r < WEFT_ARRAY_LEN(iranges); r++) {
        int64_t i = SENTINEL_I64;
        reset(&err);
        rc = weft_conf_int(map, key, iranges[r][0], iranges[r][1], &i, &err);
        check_result(rc, &err);
        if (rc == 0 && i != SENTINEL_I64) {
            CHECK(i >= iranges[r][0] && i <= iranges[r][1]);
            /* agrees with the C library on the text it accepted */
            const char *t = weft_conf_scalar(weft_conf_get(map, key));
            CHECK(t != NULL);
            char *end;
            long long ll = strtoll(t, &end, 10);
            CHECK(*end == '\0' && ll == i);
        }
    }

    bool b = true;
    reset(&err);
    rc = weft_conf_bool(map, key, &b, &err);
    check_result(rc, &err);
    b = false;
    reset(&err);
    rc = weft_conf_bool(map, key, &b, &err);
    check_result(rc, &err);

    static const int64_t dranges[][2] = {{0, INT64_MAX}, {0, 24LL * 3600 * 1000}, {100, 1000}};
    for (size_t r = 0; r < WEFT_ARRAY_LEN(dranges); r++) {
        int64_t d = SENTINEL_I64;
        reset(&err);
        rc = weft_conf_duration_ms(map, key, dranges[r][0], dranges[r][1], &d, &err);
        check_result(rc, &err);
        if (rc == 0 && d != SENTINEL_I64)
            CHECK(d >= dranges[r][0] && d <= dranges[r][1]);
    }

    static const uint64_t sranges[][2] = {{0, UINT64_MAX}, {4096, (uint64_t)1 << 40}};
    for (size_t r = 0; r < WEFT_ARRAY_LEN(sranges); r++) {
        uint64_t z = SENTINEL_U64;
        reset(&err);
        rc = weft_conf_size(map, key, sranges[r][0], sranges[r][1], &z, &err);
        check_result(rc, &err);
        if (rc == 0 && z != SENTINEL_U64)
            CHECK(z >= sranges[r][0] && z <= sranges[r][1]);
    }

    int e = -7;
    reset(&err);
    rc = weft_conf_enum(map, key, choices, &e, &err);
    check_result(rc, &err);
    if (rc == 0 && e != -7) {
        CHECK(e >= 0 && (size_t)e < WEFT_ARRAY_LEN(choices) - 1);
        CHECK(strcmp(weft_conf_scalar(weft_conf_get(map, key)), choices[e]) == 0);
    }

    reset(&err);
    rc = weft_conf_errorf(&err, map, key, "fuzz %s", key);
    CHECK(rc == WEFT_ECONFIG);
    check_result(rc, &err);
}

/* Visit every node, reading each key through map_at and weft_conf_get. */
static void walk(const weft_conf_node *n, int depth)
{
    CHECK(depth <= 70);
    check_node_basics(n);
    if (weft_conf_kind(n) == WEFT_CONF_MAP) {
        size_t len = weft_conf_map_len(n);
        for (size_t i = 0; i < len; i++) {
            const char *key = NULL;
            const weft_conf_node *v = weft_conf_map_at(n, i, &key);
            CHECK(v && key);
            /* keys are unique, so lookup by name finds this very entry */
            CHECK(weft_conf_get(n, key) == v);
            if (i < GETTER_KEYS)
                typed_getters(n, key);
            walk(v, depth + 1);
        }
        const char *k = "x";
        CHECK(weft_conf_map_at(n, len, &k) == NULL && k == NULL);
        bool has_probe = false;
        for (size_t i = 0; i < len; i++) {
            weft_conf_map_at(n, i, &k);
            has_probe |= strcmp(k, PROBE_KEY) == 0;
        }
        CHECK((weft_conf_get(n, PROBE_KEY) != NULL) == has_probe);
    } else if (weft_conf_kind(n) == WEFT_CONF_SEQ) {
        size_t len = weft_conf_seq_len(n);
        for (size_t i = 0; i < len; i++) {
            const weft_conf_node *v = weft_conf_seq_at(n, i);
            CHECK(v != NULL);
            walk(v, depth + 1);
        }
        CHECK(weft_conf_seq_at(n, len) == NULL);
    }
    /* getters on a node of any kind, for a key that is absent */
    typed_getters(n, PROBE_KEY);
    weft_conf_err err;
    reset(&err);
    int rc = weft_conf_errorf(&err, n, NULL, "fuzz");
    check_result(rc, &err);
}

static void check_gateway(const gw_config *c)
{
    CHECK(c->nroutes >= 1);
    for (size_t i = 0; i < c->nclusters; i++) {
        const gw_cluster_conf *cl = &c->clusters[i];
        CHECK(cl->name != NULL);
        /* exactly one endpoint source: static list, DNS or the registry */
        CHECK(!!cl->neps + !!cl->dns_name + !!cl->disc_host == 1);
        if (cl->dns_name)
            CHECK(cl->dns_name[0] && (cl->dns_srv || cl->dns_port >= 1));
        if (cl->disc_host)
            CHECK(cl->disc_port >= 1 && cl->disc_service && cl->disc_service[0]);
        for (size_t j = 0; j < cl->neps; j++)
            CHECK(cl->eps[j].host && cl->eps[j].id && cl->eps[j].port >= 1);
    }
    for (size_t i = 0; i < c->nroutes; i++) {
        const gw_route_conf *r = &c->routes[i];
        CHECK(r->name != NULL && r->timeout_ms > 0);
        for (size_t j = 0; j < r->nsplits; j++)
            CHECK(r->splits[j].cluster >= 0 && (size_t)r->splits[j].cluster < c->nclusters);
        if (r->action == GW_ACT_PROXY)
            CHECK(r->nsplits >= 1 && r->split_total > 0);
        for (size_t j = 0; j < r->nparts; j++)
            CHECK(r->parts[j].cluster >= 0 && (size_t)r->parts[j].cluster < c->nclusters);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        if (fd != STDIN_FILENO)
            close(fd);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    weft_conf *doc = (weft_conf *)&doc; /* must be overwritten */
    weft_conf_err err;
    int rc;

    reset(&err);
    rc = weft_conf_load_string(FILE_NAME, (const char *)data, size, &doc, &err);
    check_load_result(rc, &err);
    if (rc != 0) {
        CHECK(doc == NULL);
        return 0;
    }
    CHECK(doc != NULL);
    const weft_conf_node *root = weft_conf_root(doc);
    CHECK(root && weft_conf_kind(root) == WEFT_CONF_MAP);

    /* nothing read yet: any key at all is unused */
    reset(&err);
    rc = weft_conf_check_unused(root, &err);
    check_result(rc, &err);
    CHECK((rc != 0) == (weft_conf_map_len(root) > 0));

    /* as `weft gateway` does: validate, then look for unknown keys */
    gw_config *cfg = (gw_config *)&cfg;
    reset(&err);
    rc = gw_config_from_conf(FILE_NAME, root, &cfg, &err);
    check_result(rc, &err);
    if (rc == 0) {
        check_gateway(cfg);
        gw_config_unref(cfg);
    }
    reset(&err);
    rc = weft_conf_check_unused(root, &err);
    check_result(rc, &err);

    /* every node through every getter; afterwards nothing is unused */
    walk(root, 0);
    reset(&err);
    rc = weft_conf_check_unused(root, &err);
    check_result(rc, &err);
    CHECK(rc == 0);

    weft_conf_free(doc);
    return 0;
}
