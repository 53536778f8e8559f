/*
 * fuzz_eureka.c — libFuzzer harness for the Eureka layer's decoders.
 *
 * Each input is read as an XML InstanceInfo and as a JSON one; what parses
 * is translated against a store, registered, and the registry rendered in
 * both encodings. Invariants of our code: the XML we write always reads
 * back with our own reader, JSON we write is valid JSON, and nothing leaks
 * (the instance is removed again, the store stays small).
 */
#include "registry/eureka.h"
#include "registry/store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static reg_store *store;

static void check_render(int view, const char *name, const char *id)
{
    for (int json = 0; json < 2; json++) {
        char *out, why[200];
        size_t len;
        if (reg_eureka_render(store, view, name, id, json, 0, &out, &len) != 0)
            continue;
        json_t *back = json ? json_loadb(out, len, 0, NULL) : NULL;
        if (!json && reg_eureka_xml_parse(out, len, &back, why, sizeof why) != 0)
            __builtin_trap(); /* our own XML must read back */
        if (!back)
            __builtin_trap();
        json_decref(back);
        free(out);
    }
}

static void try_register(json_t *doc)
{
    json_t *native;
    char svc[256], id[256], why[200];
    if (reg_eureka_translate(store, "APP", doc, &native, svc, sizeof svc, id, sizeof id, why,
                             sizeof why) != 0)
        return;
    reg_input in;
    if (reg_input_from_json(native, &in, why, sizeof why) == 0 && reg_put(store, svc, id, &in, 0) >= 0) {
        check_render(REG_EUREKA_APPS, NULL, NULL);
        check_render(REG_EUREKA_INSTANCE, "APP", id);
        check_render(REG_EUREKA_VIP, svc, NULL);
        reg_delete(store, svc, id);
    }
    json_decref(native);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!store) {
        store = reg_store_new(NULL);
        reg_input in = {.address = "10.0.0.1", .port = 80, .weight = 1, .status = REG_UP};
        reg_put(store, "app", "resident", &in, 0);
    }
    json_t *doc;
    char why[200];
    if (reg_eureka_xml_parse((const char *)data, size, &doc, why, sizeof why) == 0) {
        try_register(doc);
        json_decref(doc);
    }
    if ((doc = json_loadb((const char *)data, size, 0, NULL))) {
        try_register(doc);
        json_decref(doc);
    }
    return 0;
}
