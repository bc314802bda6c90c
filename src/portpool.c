/* portpool: passive port range: random pick, bind, release (close). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portpool.h"
#include "util.h"

static int try_bind(const struct sockaddr *addr, uint16_t port)
{
	struct sockaddr_storage ss;
	int one = 1;

	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	memcpy(&ss, addr, addr_len(addr));
	addr_set_port((struct sockaddr *)&ss, port);
	if (bind(fd, (struct sockaddr *)&ss, addr_len(addr)) < 0 || listen(fd, 8) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int portpool_listen(uint16_t lo, uint16_t hi, const struct sockaddr *addr, uint16_t *port)
{
	uint32_t n = (uint32_t)hi - lo + 1;
	int err = EADDRINUSE;

	/* A few random picks first, then a full scan from a random start, so
	 * that a nearly full range still finds its last free port. */
	for (int i = 0; i < 16 && (uint32_t)i < n; i++) {
		uint16_t p = (uint16_t)(lo + rand_uniform(n));
		int fd = try_bind(addr, p);
		if (fd >= 0) {
			*port = p;
			return fd;
		}
		if (errno != EADDRINUSE && errno != EACCES)
			return -1;
		err = errno;
	}
	uint32_t start = rand_uniform(n);
	for (uint32_t i = 0; i < n; i++) {
		uint16_t p = (uint16_t)(lo + (start + i) % n);
		int fd = try_bind(addr, p);
		if (fd >= 0) {
			*port = p;
			return fd;
		}
		if (errno != EADDRINUSE && errno != EACCES)
			return -1;
		err = errno;
	}
	errno = err;
	return -1;
}
