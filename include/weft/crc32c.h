/*
 * crc32c.h — CRC-32C (Castagnoli): the checksum of the registry journal's
 * frames and of Kafka record batches.
 *
 * Standard parameters (reflected polynomial 0x82F63B78, initial value and
 * final xor 0xFFFFFFFF): the CRC of "123456789" is 0xE3069283. Incremental:
 * start from 0, and crc = weft_crc32c(crc, p, n) over consecutive pieces
 * gives the CRC of their concatenation.
 *
 * Threading: all functions are thread-safe (tables are built once, at first
 * use, under pthread_once).
 */
#ifndef WEFT_CRC32C_H
#define WEFT_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The SSE4.2 instruction when the CPU has it, else weft_crc32c_portable. */
uint32_t weft_crc32c(uint32_t crc, const void *data, size_t len);
/* The slicing-by-8 table path on any CPU (tests compare the two). */
uint32_t weft_crc32c_portable(uint32_t crc, const void *data, size_t len);
/* Whether weft_crc32c uses the SSE4.2 instruction on this CPU. */
bool weft_crc32c_hw(void);

#endif
