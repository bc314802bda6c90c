/*
 * Shared by the libFuzzer targets in tests/fuzz/: each target is one
 * LLVMFuzzerTestOneInput() over one input ftpgate parses, and checks the
 * parser's promises with CHECK (a broken promise is a crash: abort()).
 * Built with libFuzzer by configure --enable-fuzzing, and without it, as
 * tests/fuzz/replay_* (replay.c), over the seed corpus and the regression
 * inputs in make check.
 */
#ifndef FTPGATE_FUZZ_H
#define FTPGATE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A heap copy of exactly n bytes (no NUL), so that ASan sees any read past n. Free it. */
static inline char *fuzz_copy(const void *p, size_t n)
{
	char *c = malloc(n ? n : 1);

	CHECK(c != NULL);
	if (n)
		memcpy(c, p, n);
	return c;
}

#endif
