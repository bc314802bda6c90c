/*
 * libFuzzer target: the control session's core (session_core.c) driven
 * without a socket from one byte script that interleaves client lines,
 * backend replies, data-connection events, timers, TLS switches, drains
 * and failures of the shell's actions (script_run() in
 * tests/unit/core_harness.h reads the bytes). After every event the core's
 * invariants must hold (core_invariants()); a broken one aborts. Owns
 * nothing: script_run() frees what it made.
 */
#include "../unit/core_harness.h"
#include "fuzz.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[200];
	log_set_level(LOG_LVL_ERROR);
	if (script_run(data, size, why, sizeof(why), NULL) < 0) {
		fprintf(stderr, "session core invariant broken: %s\n", why);
		abort();
	}
	return 0;
}
