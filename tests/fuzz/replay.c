/*
 * Runs one fuzz target without libFuzzer over its seed corpus and its
 * regression inputs, as a TAP test in make check: the program named
 * tests/fuzz/replay_NAME replays tests/fuzz/corpus/NAME/ and
 * tests/fuzz/regress/NAME/ under $FTPGATE_SRCDIR (or the files and
 * directories given as arguments). A broken check aborts, and the test
 * fails naming the file it was on. Owns nothing past one file's buffer.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

#include "fuzz.h"

static int n_ok;

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL) {
		printf("not ok %d - %s: %s\n", ++n_ok, path, strerror(errno));
		exit(1);
	}
	do {
		if (len == cap) {
			cap = cap ? 2 * cap : 4096;
			buf = realloc(buf, cap);
			CHECK(buf != NULL);
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	fclose(f);
	printf("# replaying %s (%zu bytes)\n", path, len);
	fflush(stdout);
	/* Exactly len bytes, as libFuzzer hands them over. */
	uint8_t *exact = (uint8_t *)fuzz_copy(buf, len);
	free(buf);
	LLVMFuzzerTestOneInput(exact, len);
	free(exact);
	printf("ok %d - %s\n", ++n_ok, path);
}

static void replay(const char *path)
{
	struct stat st;
	struct dirent **ents;
	int n;

	if (stat(path, &st) != 0) {
		printf("# %s: %s (nothing to replay)\n", path, strerror(errno));
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		replay_file(path);
		return;
	}
	n = scandir(path, &ents, NULL, by_name);
	CHECK(n >= 0);
	for (int i = 0; i < n; i++) {
		char sub[4096];

		if (ents[i]->d_name[0] != '.') {
			snprintf(sub, sizeof(sub), "%s/%s", path, ents[i]->d_name);
			replay(sub);
		}
		free(ents[i]);
	}
	free(ents);
}

int main(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	const char *src = getenv("FTPGATE_SRCDIR");
	char dir[4096];

	if (argc > 1) {
		for (int i = 1; i < argc; i++)
			replay(argv[i]);
	} else {
		CHECK(strncmp(base, "replay_", 7) == 0);
		if (src == NULL)
			src = ".";
		snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/%s", src, base + 7);
		replay(dir);
		snprintf(dir, sizeof(dir), "%s/tests/fuzz/regress/%s", src, base + 7);
		replay(dir);
	}
	if (n_ok == 0) {
		printf("not ok 1 - no inputs found (corpus missing from the tree?)\n1..1\n");
		return 1;
	}
	printf("1..%d\n", n_ok);
	return 0;
}
