/*
 * worker: owns the event loops that run sessions (struct worker), the
 * threads of workers 1..N-1, the queue through which the main thread hands
 * them the sessions it admitted, and their shutdown. Worker 0 is the main
 * thread's own loop, so `workers = 1` is the single loop of old.
 *
 * What the workers share is small and lives elsewhere: the session lists
 * and counts (linked and counted under gw->lock, see session.c and
 * listener.c), the per-site counters (atomic, stats.h), the backend pool
 * (backend.c's lock), bans (under gw->lock).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ftpgate.h"
#include "log.h"
#include <openssl/crypto.h>

#include "session.h"
#include "session_int.h"
#include "worker.h"

unsigned workers_wanted(unsigned conf_workers)
{
	if (conf_workers)
		return conf_workers;
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		return 1;
	return n > CONF_MAX_WORKERS ? CONF_MAX_WORKERS : (unsigned)n;
}

/* Start what the main thread queued (in the worker's thread). */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	(void)fd;
	(void)what;
	pthread_mutex_lock(&w->qlock);
	struct session *q = w->queue;
	w->queue = NULL;
	w->queue_tail = &w->queue;
	pthread_mutex_unlock(&w->qlock);
	while (q) {
		struct session *s = q;
		q = s->handed_next;
		session_start(s);
	}
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	(void)fd;
	(void)what;
	sessions_drain(w);
}

static void job_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	(void)fd;
	(void)what;
	w->job(w, w->job_arg);
	pthread_mutex_lock(&w->qlock);
	w->job_done = 1;
	pthread_cond_signal(&w->jcond);
	pthread_mutex_unlock(&w->qlock);
}

void workers_run(struct ftpgate *gw, void (*fn)(struct worker *w, void *arg), void *arg)
{
	if (!gw->n_workers)
		return;
	fn(&gw->workers[0], arg);
	for (unsigned i = 1; i < gw->n_workers; i++) {
		struct worker *w = &gw->workers[i];
		if (!w->running)
			continue;
		pthread_mutex_lock(&w->qlock);
		w->job = fn;
		w->job_arg = arg;
		w->job_done = 0;
		pthread_mutex_unlock(&w->qlock);
		event_active(w->job_ev, EV_READ, 0);
		pthread_mutex_lock(&w->qlock);
		while (!w->job_done)
			pthread_cond_wait(&w->jcond, &w->qlock);
		pthread_mutex_unlock(&w->qlock);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	/* An empty loop waits for sessions instead of returning. */
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	OPENSSL_thread_stop();
	return NULL;
}

int workers_start(struct ftpgate *gw, unsigned n)
{
	gw->workers = calloc(n, sizeof(*gw->workers));
	if (!gw->workers) {
		log_error("out of memory for %u workers", n);
		return -1;
	}
	gw->n_workers = n;
	for (unsigned i = 0; i < n; i++) {
		struct worker *w = &gw->workers[i];
		w->gw = gw;
		w->index = i;
		w->queue_tail = &w->queue;
		pthread_mutex_init(&w->qlock, NULL);
		pthread_cond_init(&w->jcond, NULL);
		w->base = i == 0 ? gw->base : event_base_new();
		if (!w->base) {
			log_error("cannot create the event loop of worker %u", i);
			return -1;
		}
		w->wake = event_new(w->base, -1, 0, wake_cb, w);
		w->drain = event_new(w->base, -1, 0, drain_cb, w);
		w->job_ev = event_new(w->base, -1, 0, job_cb, w);
		if (!w->wake || !w->drain || !w->job_ev) {
			log_error("out of memory for worker %u", i);
			return -1;
		}
	}
	for (unsigned i = 1; i < n; i++) {
		struct worker *w = &gw->workers[i];
		int err = pthread_create(&w->thread, NULL, worker_main, w);
		if (err) {
			log_error("cannot start worker %u: %s", i, strerror(err));
			return -1;
		}
		w->running = 1;
	}
	if (n > 1)
		log_info("%u workers (event loops) run sessions", n);
	return 0;
}

struct worker *worker_pick(struct ftpgate *gw, const struct site *site)
{
	/* Passthrough sessions stay in worker 0 with the forwarded ports that
	 * serve them (see passthrough.c): the choice of the session a
	 * forwarded connection belongs to reads state no other thread may. */
	if (tls_is_passthrough(site->conf->tls) || gw->n_workers < 2)
		return &gw->workers[0];
	struct worker *best = &gw->workers[0];
	for (unsigned i = 1; i < gw->n_workers; i++)
		if (gw->workers[i].n_sessions < best->n_sessions)
			best = &gw->workers[i];
	return best;
}

void worker_hand(struct worker *w, struct session *s)
{
	if (w->index == 0) {
		session_start(s);
		return;
	}
	pthread_mutex_lock(&w->qlock);
	s->handed_next = NULL;
	*w->queue_tail = s;
	w->queue_tail = &s->handed_next;
	pthread_mutex_unlock(&w->qlock);
	event_active(w->wake, EV_READ, 0);
}

void workers_drain(struct ftpgate *gw)
{
	for (unsigned i = 1; i < gw->n_workers; i++)
		event_active(gw->workers[i].drain, EV_READ, 0);
	if (gw->n_workers)
		sessions_drain(&gw->workers[0]);
}

void workers_stop(struct ftpgate *gw)
{
	for (unsigned i = 1; i < gw->n_workers; i++) {
		struct worker *w = &gw->workers[i];
		if (!w->running)
			continue;
		event_base_loopbreak(w->base);
		pthread_join(w->thread, NULL);
		w->running = 0;
	}
	/* Every thread is gone: the main thread owns every loop now. */
	for (unsigned i = 0; i < gw->n_workers; i++) {
		struct worker *w = &gw->workers[i];
		while (w->queue) {
			struct session *s = w->queue;
			w->queue = s->handed_next;
			session_discard(s);
		}
		sessions_close_all(w);
	}
	for (unsigned i = 0; i < gw->n_workers; i++) {
		struct worker *w = &gw->workers[i];
		if (w->wake)
			event_free(w->wake);
		if (w->drain)
			event_free(w->drain);
		if (w->job_ev)
			event_free(w->job_ev);
		if (i > 0 && w->base)
			event_base_free(w->base);
		pthread_mutex_destroy(&w->qlock);
		pthread_cond_destroy(&w->jcond);
	}
	free(gw->workers);
	gw->workers = NULL;
	gw->n_workers = 0;
}
