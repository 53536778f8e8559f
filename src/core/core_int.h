/* core_int.h — declarations shared between files of src/core only. */
#ifndef WEFT_CORE_INT_H
#define WEFT_CORE_INT_H

#include "weft/loop.h"

/* rt.c assigns each worker loop its index. */
void weft_loop_set_index_(weft_loop *loop, int index);

#endif
