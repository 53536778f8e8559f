/*
 * catalog — an example Weft service that calls another one by name.
 *
 *   GET /items         every item with its price: one call to `pricing`
 *                      per item, all in parallel
 *   GET /items/{sku}   one item with its price
 *
 * Prices come from the `pricing` service through the SDK client: found in
 * weft registry (kept fresh by a watch), balanced, retried with backoff
 * and a budget, behind a circuit breaker, with this request's id and
 * remaining deadline passed on. When pricing fails the catalog degrades
 * instead of failing: the item is served with "price": null and the
 * reason (for instance "circuit breaker open").
 *
 *   catalog --listen 127.0.0.1:9101 --registry http://127.0.0.1:8700
 */
#include <weft/service.h>

#include <stdio.h>
#include <string.h>

static const struct item {
    const char *sku, *name;
} items[] = {
    {"apple", "Apple"}, {"bread", "Bread"}, {"cheese", "Cheese"}, {"dates", "Dates"},
};
#define NITEMS (sizeof items / sizeof items[0])

static const struct item *find(weft_str sku)
{
    for (size_t i = 0; i < NITEMS; i++)
        if (weft_str_eq(sku, weft_str_from(items[i].sku)))
            return &items[i];
    return NULL;
}

/* The item with its price, or with "price": null and why. */
static json_t *priced(const struct item *it, const weft_call_result *res)
{
    json_t *o = json_pack("{s:s, s:s}", "sku", it->sku, "name", it->name);
    json_t *price = NULL;
    const char *why = NULL;
    if (res->err)
        why = weft_strerror(res->err);
    else if (res->status != 200)
        why = "pricing answered with an error";
    else if (!(price = json_loadb(res->body.p, res->body.n, 0, NULL)))
        why = "pricing answered with invalid JSON";
    json_object_set_new(o, "price", price ? price : json_null());
    if (why) {
        json_object_set_new(o, "degraded", json_true());
        json_object_set_new(o, "reason", json_string(why));
    }
    return o;
}

static int ask_price(weft_http_req *r, const struct item *it, weft_call_cb cb, void *ud)
{
    char path[128];
    snprintf(path, sizeof path, "/prices/%s", it->sku);
    weft_call_opts c = {.service = "pricing", .path = path, .parent = r};
    return weft_client_call(weft_service_client(r), &c, cb, ud, NULL);
}

/* ---- GET /items/{sku} ---- */

struct one {
    weft_http_req *r;
    const struct item *it;
};

static void one_done(const weft_call_result *res, void *ud)
{
    struct one *o = ud;
    weft_json_respond(o->r, 200, priced(o->it, res));
}

static void get_item(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str path = weft_http_req_path(r);
    const struct item *it = find((weft_str){path.p + 7, path.n - 7});
    if (!it) {
        weft_http_respond_error(r, 404, "no such item");
        return;
    }
    struct one *o = weft_http_req_alloc(r, sizeof *o);
    if (!o) {
        weft_http_respond_error(r, 503, "out of memory");
        return;
    }
    *o = (struct one){r, it};
    if (ask_price(r, it, one_done, o) < 0)
        weft_http_respond_error(r, 500, "cannot call pricing");
}

/* ---- GET /items: fan-out ---- */

struct all {
    weft_http_req *r;
    json_t *list;
    size_t pending;
    struct slot {
        struct all *a;
        size_t i;
    } slots[NITEMS];
};

static void all_done(const weft_call_result *res, void *ud)
{
    struct slot *sl = ud;
    struct all *a = sl->a;
    json_array_set_new(a->list, sl->i, priced(&items[sl->i], res));
    if (--a->pending > 0)
        return;
    json_t *list = a->list;
    a->list = NULL;
    weft_json_respond(a->r, 200, json_pack("{s:o}", "items", list));
}

static void all_abort(weft_http_req *r, void *ud)
{
    (void)r;
    struct all *a = ud; /* the calls are cancelled by the SDK */
    json_decref(a->list);
    a->list = NULL;
}

static void get_items(weft_http_req *r, void *ud)
{
    (void)ud;
    struct all *a = weft_http_req_alloc(r, sizeof *a);
    if (a)
        *a = (struct all){.r = r};
    if (!a || !(a->list = json_array())) {
        weft_http_respond_error(r, 503, "out of memory");
        return;
    }
    weft_http_req_on_abort(r, all_abort, a);
    for (size_t i = 0; i < NITEMS; i++)
        json_array_append_new(a->list, json_null());
    for (size_t i = 0; i < NITEMS; i++) {
        a->slots[i] = (struct slot){a, i};
        a->pending++;
        if (ask_price(r, &items[i], all_done, &a->slots[i]) < 0) {
            a->pending--;
            json_array_set_new(a->list, i, json_pack("{s:s, s:n}", "sku", items[i].sku, "price"));
        }
    }
    if (a->pending == 0) {
        weft_json_respond(r, 200, json_pack("{s:o}", "items", a->list));
        a->list = NULL;
    }
}

int main(int argc, char **argv)
{
    weft_service_opts o;
    weft_service_opts_default(&o);
    o.name = "catalog";
    o.version = "1.0.0";
    o.client.timeout_ms = 2000;   /* a price is worth waiting 2 s for, no more */
    o.client.try_timeout_ms = 500;
    int rc = weft_service_args(&o, argc, argv, "usage: catalog [options]\n");
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (!o.registry) {
        fprintf(stderr, "catalog: --registry is required (it finds pricing there)\n");
        return 2;
    }
    weft_service *s = weft_service_new(&o);
    if (!s)
        return 1;
    const unsigned GET = WEFT_M(WEFT_METHOD_GET);
    weft_service_route(s, GET, "/items", 0, get_items, NULL);
    weft_service_route(s, GET, "/items/", WEFT_ROUTE_PREFIX, get_item, NULL);
    rc = weft_service_run(s);
    weft_service_free(s);
    return rc < 0 ? 1 : 0;
}
