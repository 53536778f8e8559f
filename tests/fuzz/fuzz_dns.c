/*
 * fuzz_dns.c — libFuzzer harness for the registry's DNS answerer.
 *
 * The store holds a few services (IPv4, IPv6 and host-name addresses, tags,
 * a large service for truncation) and every input is answered over "UDP"
 * and "TCP". Invariants of our code: the answer never exceeds the limit,
 * is a response (QR set) with the query's id, and an answer over TCP is
 * never truncated.
 */
#include "registry/dns.h"
#include "registry/store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static reg_store *store;

static void put(const char *svc, const char *id, const char *addr, int port, const char *tag)
{
    reg_input in = {0};
    const char *tags[1] = {tag};
    in.address = addr;
    in.port = port;
    in.weight = 3;
    in.status = REG_UP;
    in.tags = tag ? tags : NULL;
    in.ntags = tag ? 1 : 0;
    reg_put(store, svc, id, &in, 0);
}

static void setup(void)
{
    store = reg_store_new(NULL);
    put("web", "w1", "127.0.0.1", 80, "blue");
    put("web", "w2", "::1", 81, NULL);
    put("web", "w3", "host.example", 82, "blue");
    char id[16], addr[32];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "b%d", i);
        snprintf(addr, sizeof addr, "10.0.%d.%d", i / 250, i % 250);
        put("big", id, addr, 1000 + i, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[65535];
    if (!store)
        setup();
    for (int udp = 0; udp < 2; udp++) {
        size_t limit = udp ? 4096 : 65535;
        size_t n = reg_dns_answer(store, data, size, out, limit, udp, 1);
        if (n == 0)
            continue;
        if (n > limit || n < 12 || size < 2)
            __builtin_trap();
        if (!(out[2] & 0x80) || out[0] != data[0] || out[1] != data[1])
            __builtin_trap();
        if (!udp && (out[2] & 0x02))
            __builtin_trap(); /* TCP answers are never truncated */
    }
    return 0;
}
