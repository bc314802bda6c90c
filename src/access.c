/* access: a site's allow/deny prefixes. Pure: no I/O. */
#include "config.h"

#include <netinet/in.h>

#include "access.h"
#include "util.h"

int acl_permits(const struct site_conf *sc, const struct sockaddr *sa)
{
	for (size_t i = 0; i < sc->n_deny; i++)
		if (cidr_match(&sc->deny[i], sa))
			return 0;
	if (sc->n_allow == 0)
		return 1;
	for (size_t i = 0; i < sc->n_allow; i++)
		if (cidr_match(&sc->allow[i], sa))
			return 1;
	return 0;
}
