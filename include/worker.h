/*
 * worker: the event loops that run sessions. Worker 0 is the main thread's
 * loop (it also accepts, reads PROXY headers, serves /metrics, runs health
 * checks and signals); workers 1..N-1 are threads with an event_base each.
 * A session and its data connections live in one worker from its start to
 * its end.
 */
#ifndef FTPGATE_WORKER_H
#define FTPGATE_WORKER_H

#include <pthread.h>

#include <event2/event.h>

struct ftpgate;
struct session;
struct site;

struct worker {
	struct ftpgate *gw;
	unsigned index;
	struct event_base *base; /* worker 0: gw->base */
	pthread_t thread;        /* workers 1..N-1 */
	int running;             /* the thread was started */
	/* Sessions of this worker: linked and unlinked under gw->lock (other
	 * threads count and search them); only this worker changes them. */
	struct session *sessions;
	unsigned n_sessions;
	/* Sessions admitted by the main thread, not started yet (qlock). */
	pthread_mutex_t qlock;
	struct session *queue, **queue_tail;
	struct event *wake;  /* starts what is queued */
	struct event *drain; /* gw->draining: each session finishes its transfer */
	/* workers_run(): a function the main thread waits for (qlock, jcond). */
	struct event *job_ev;
	pthread_cond_t jcond;
	void (*job)(struct worker *w, void *arg);
	void *job_arg;
	int job_done;
};

/* The number of workers `workers = 0 (auto) | N` means on this machine. */
unsigned workers_wanted(unsigned conf_workers);

/*
 * Create n workers: worker 0 on gw->base, the others on threads of their
 * own (gw->base must exist; with n > 1 evthread_use_pthreads() must have
 * been called before any event_base was made). Returns 0, or -1 (logged).
 */
int workers_start(struct ftpgate *gw, unsigned n);

/* The worker a new session of site goes to (under gw->lock). */
struct worker *worker_pick(struct ftpgate *gw, const struct site *site);

/* Start s (from session_new) in its worker: at once in worker 0, else queued. */
void worker_hand(struct worker *w, struct session *s);

/*
 * Run fn(w, arg) in every worker's own thread, one worker after the other,
 * and return when all are done (main thread; it waits). For what must read
 * sessions' state, which only their worker may (the /sessions list).
 */
void workers_run(struct ftpgate *gw, void (*fn)(struct worker *w, void *arg), void *arg);

/* Shutting down: every worker asks its sessions to finish. */
void workers_drain(struct ftpgate *gw);

/*
 * Stop the threads (their loops break, they are joined), then end every
 * session of every worker and free the workers. Main thread only.
 */
void workers_stop(struct ftpgate *gw);

#endif
