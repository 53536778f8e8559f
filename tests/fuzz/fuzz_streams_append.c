/*
 * fuzz_streams_append.c — libFuzzer harness for the body decoder of the
 * streams API's append (POST /streams/NAME in src/eventlog/streams.c):
 * JSON parsing, the expected version, each event's fields and the limits.
 * The input is the body; ASan/UBSan and the leak checker catch the rest.
 */
#include "eventlog/streams.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    elog_streams_body_ok((const char *)data, size);
    return 0;
}
