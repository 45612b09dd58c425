/* Shared definitions for the libFuzzer harnesses: the entry points libFuzzer calls, and a check
 * that turns a broken property into a crash libFuzzer records with its input. */
#ifndef RIVET_FUZZ_H
#define RIVET_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property that does not hold is a bug as real as a memory error: abort so that libFuzzer
 * saves the input and prints the stack. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz: property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
