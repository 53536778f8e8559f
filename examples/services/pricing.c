/*
 * pricing — an example Weft service: prices for catalog items.
 *
 *   GET /prices/{sku}  ->  {"sku", "price_cents", "currency", "instance",
 *                           "request_id", "deadline_ms"}
 *
 * It registers itself in weft registry and answers with the X-Request-Id
 * and the remaining deadline it received, so the propagation done by the
 * catalog's client is visible. Built with libweft's service SDK; see
 * examples/services/catalog.c for the caller.
 *
 *   pricing --listen 127.0.0.1:9201 --registry http://127.0.0.1:8700
 */
#include <weft/service.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static weft_service *svc;

static void get_price(weft_http_req *r, void *ud)
{
    (void)ud;
    weft_str path = weft_http_req_path(r); /* "/prices/SKU" */
    weft_str sku = {path.p + 8, path.n - 8};
    if (sku.n == 0 || sku.n > 64 || memchr(sku.p, '/', sku.n)) {
        weft_http_respond_error(r, 404, "no such price");
        return;
    }
    /* a stable made-up price: 1.00 to 100.99 EUR */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sku.n; i++)
        h = (h ^ (uint8_t)sku.p[i]) * 16777619u;
    weft_str rid = weft_http_req_id(r);
    weft_str dl = weft_http_req_header(r, WEFT_STR("X-Weft-Deadline-Ms"));
    json_t *out = json_pack("{s:s%, s:i, s:s, s:s, s:s%, s:s%}", "sku", sku.p, sku.n,
                            "price_cents", (int)(100 + h % 10000), "currency", "EUR",
                            "instance", weft_service_address(svc), "request_id", rid.p, rid.n, "deadline_ms",
                            dl.p ? dl.p : "", dl.n);
    weft_json_respond(r, 200, out);
}

int main(int argc, char **argv)
{
    weft_service_opts o;
    weft_service_opts_default(&o);
    o.name = "pricing";
    o.version = "1.0.0";
    int rc = weft_service_args(&o, argc, argv, "usage: pricing [options]\n");
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (!(svc = weft_service_new(&o)))
        return 1;
    weft_service_route(svc, WEFT_M(WEFT_METHOD_GET), "/prices/", WEFT_ROUTE_PREFIX, get_price,
                       NULL);
    rc = weft_service_run(svc);
    weft_service_free(svc);
    return rc < 0 ? 1 : 0;
}
