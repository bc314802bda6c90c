/*
 * Unit tests for session_core (TAP): the control session's decisions,
 * driven from scripts of events without a socket. A recording core_ops
 * writes every action as one line of a transcript ("C:" to the client,
 * "B:" to the backend, "data_new", "listen client", "end 226 ok", ...);
 * each step checks the transcript it produced.
 *
 * The harness (core_harness.h, shared with the session fuzzer) stands in
 * for the shell's framing.
 */
#include "core_harness.h"
#include "log.h"
#include "tap.h"

/* The transcript since the last check must be exactly want. */
#define expect(t, want, ...)                                                                       \
	do {                                                                                       \
		(t)->log[(t)->len] = '\0';                                                         \
		is_str((t)->log, want, __VA_ARGS__);                                               \
		(t)->len = 0;                                                                      \
	} while (0)

static void login(struct t *t)
{
	backend(t, "220 hello\r\n");
	client(t, "USER u\r\n");
	backend(t, "331 pass\r\n");
	client(t, "PASS p\r\n");
	backend(t, "230 in\r\n");
	t->len = 0;
}

static void finish(struct t *t, const char *what)
{
	is_int(t->core.bad_transitions, 0, "%s: no transfer state transition outside the drawing",
	       what);
	core_free(&t->core);
}

/* PASV (EPSV to the backend) up to the client's 227. */
static void pasv(struct t *t)
{
	client(t, "PASV\r\n");
	backend(t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	t->len = 0;
}

static void test_login_and_pipelining(void)
{
	struct t t;
	start(&t, NULL);
	expect(&t, "", "nothing before the greeting");
	client(&t, "USER u\r\n");
	expect(&t, "", "a command waits for the backend's greeting");
	backend(&t, "220 hello\r\n");
	expect(&t, "C:220 hello\nB:USER u\n", "greeting relayed, then the waiting command");
	backend(&t, "331 pass\r\n");
	client(&t, "PASS p\r\nTYPE I\r\nSIZE f\r\n");
	expect(&t, "C:331 pass\nB:PASS p\n", "pipelined commands go one at a time");
	is_int(t.core.logged_in, 0, "not logged in before 230");
	backend(&t, "230 in\r\n");
	expect(&t, "C:230 in\nlogin ok\nB:TYPE I\n", "the next pipelined command after the reply");
	is_int(t.core.logged_in, 1, "logged in after 230");
	backend(&t, "200 type\r\n");
	backend(&t, "213 42\r\n");
	expect(&t, "C:200 type\nB:SIZE f\nC:213 42\n", "replies in order");
	backend(&t, "227 Entering Passive Mode (10,0,0,1,1,2)\r\n");
	expect(&t, "", "a reply that answers nothing is dropped");
	backend(&t, "421 going down\r\n");
	expect(&t, "C:421 going down\nclose flush: backend closed the session (421)\n",
	       "an unsolicited 421 is relayed and ends the session");
	finish(&t, "login");
}

/* The backend's verdict on USER/PASS goes to the shell (brute-force protection). */
static void test_login_result(void)
{
	struct t t;
	start(&t, NULL);
	backend(&t, "220 hello\r\n");
	client(&t, "USER u\r\n");
	backend(&t, "331 pass\r\n");
	client(&t, "PASS wrong\r\n");
	t.len = 0;
	backend(&t, "530 Authentication failed.\r\n");
	expect(&t, "C:530 Authentication failed.\nlogin failed\n", "530 to PASS: a failed login");
	client(&t, "USER nobody\r\n");
	t.len = 0;
	backend(&t, "530 No such user.\r\n");
	expect(&t, "C:530 No such user.\nlogin failed\n", "530 to USER: a failed login");
	client(&t, "CWD /\r\n");
	t.len = 0;
	backend(&t, "530 Log in first.\r\n");
	expect(&t, "C:530 Log in first.\n", "530 to another command: not a login");
	client(&t, "USER u\r\n");
	backend(&t, "331 pass\r\n");
	client(&t, "PASS p\r\n");
	t.len = 0;
	backend(&t, "230 in\r\n");
	expect(&t, "C:230 in\nlogin ok\n", "230: a good login");
	finish(&t, "login result");
}

/* Routing by user: the proxy greets and answers USER; the backend's greeting and its
 * answer to USER are consumed; PASS goes through. */
static void test_route(void)
{
	static struct site_conf sc;
	static struct route routes[2];
	struct t t;

	conf_default(&sc);
	memset(routes, 0, sizeof(routes));
	snprintf(routes[0].pattern, sizeof(routes[0].pattern), "*@acme.example");
	snprintf(routes[1].pattern, sizeof(routes[1].pattern), "ftp-*");
	sc.routes = routes;
	sc.n_routes = 2;
	is_int(core_route_match(&sc, "bob@acme.example"), 0, "glob with @host");
	is_int(core_route_match(&sc, "ftp-7"), 1, "glob");
	is_int(core_route_match(&sc, "bob@evil.example"), -1, "no route: the site's backend");

	start(&t, &sc);
	expect(&t, "C:220 Service ready for new user.\n",
	       "the proxy greets at once, no backend yet");
	client(&t, "LIST\r\n");
	expect(&t, "C:530 Please login with USER and PASS.\n", "nothing but login before USER");
	client(&t, "USER bob@acme.example\r\nPASS secret\r\n");
	expect(&t, "C:331 User name okay, need password.\nroute 0\n",
	       "USER: 331 from the proxy, connect by the first matching route");
	core_backend_connected(&t.core);
	backend(&t, "220 backend ready\r\n");
	expect(&t, "B:USER bob\n", "the backend's greeting consumed, USER without @host");
	backend(&t, "331 pass\r\n");
	expect(&t, "B:PASS secret\n", "its 331 consumed; the waiting PASS goes out");
	backend(&t, "230 in\r\n");
	expect(&t, "C:230 in\nlogin ok\n", "the answer to PASS is relayed");
	finish(&t, "route");

	sc.route_keep_host = 1;
	start(&t, &sc);
	client(&t, "USER nobody@x\r\n");
	core_backend_connected(&t.core);
	t.len = 0;
	backend(&t, "220 backend ready\r\n");
	expect(&t, "B:USER nobody@x\n", "route_keep_host: the name as the client sent it");
	backend(&t, "530 unknown user\r\n");
	expect(&t, "login failed\n", "a 530 to USER is a failed login, kept for PASS");
	client(&t, "PASS x\r\n");
	expect(&t, "C:530 unknown user\n", "PASS gets the backend's answer to USER");
	finish(&t, "route 530");
}

static void test_download(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	client(&t, "PASV\r\n");
	expect(&t, "data_new 0 0\nB:EPSV\n", "PASV: a pair, EPSV to the backend");
	is_int(t.core.xs, XS_SETUP, "setup");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	expect(&t,
	       "connect backend 40000\nlisten client 50000\n"
	       "C:227 Entering Passive Mode (127,0,0,1,195,80).\n",
	       "connect to the backend's port, listen, 227 with our port");
	is_int(t.core.xs, XS_READY, "ready");
	client(&t, "RETR f\r\n");
	expect(&t, "", "RETR waits for the backend data connection");
	is_int(t.core.xs, XS_CONNECTING, "connecting");
	client(&t, "NOOP\r\n");
	expect(&t, "", "the next command waits too");
	data_side(&t, CORE_BACKEND, 1, NULL);
	expect(&t, "B:RETR f\nstart\n", "RETR goes out once the backend side is up");
	is_int(t.core.xs, XS_RUNNING, "running");
	backend(&t, "150 opening\r\n");
	expect(&t, "tls_go\nC:150 opening\n", "150 relayed");
	backend(&t, "226 done\r\n");
	expect(&t, "", "226 held while the data moves");
	is_int(t.core.xs, XS_HELD, "held");
	data_done(&t, 1, NULL);
	expect(&t, "C:226 done\nend 226 ok\nB:NOOP\n",
	       "226 released once every byte is delivered, then the next command");
	is_int(t.core.xs, XS_IDLE, "idle");
	backend(&t, "200 ok\r\n");
	t.len = 0;

	/* The data finishes before the backend's 226. */
	pasv(&t);
	client(&t, "RETR g\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	data_done(&t, 1, NULL);
	is_int(t.core.xs, XS_DATA_DONE, "data done before the final reply");
	t.len = 0;
	backend(&t, "226 done\r\n");
	expect(&t, "C:226 done\nend 226 ok\n", "226 relayed at once");

	/* Incomplete data: the 226 becomes 426. */
	pasv(&t);
	client(&t, "RETR h\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	backend(&t, "226 done\r\n");
	t.len = 0;
	data_done(&t, 0, "write to client: Connection reset by peer");
	expect(&t,
	       "C:426 Connection closed; transfer aborted (write to client: Connection reset "
	       "by peer).\nend 426 failed\n",
	       "a 226 for data that did not arrive becomes 426");

	/* The backend refuses the transfer. */
	pasv(&t);
	client(&t, "RETR missing\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	t.len = 0;
	backend(&t, "550 no such file\r\n");
	expect(&t, "C:550 no such file\ndrop\nend 550 failed\n", "550: pair dropped, relayed");

	/* A data connection that fails before the command went out. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 0, "connect to backend data port: Connection refused");
	expect(&t,
	       "drop\nC:425 Can't open data connection: connect to backend data port: "
	       "Connection refused.\n",
	       "425 from the proxy, the backend never hears of the transfer");
	client(&t, "RETR f\r\n");
	expect(&t, "C:425 Use PASV or EPSV first.\n", "a transfer without a pair gets 425");
	finish(&t, "download");
}

static void test_abor(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);

	/* ABOR after PASV, before any transfer command. */
	pasv(&t);
	client(&t, "ABOR\r\n");
	expect(&t, "drop\nB:ABOR\n", "ready: pair dropped, ABOR relayed");
	backend(&t, "225 no transfer\r\n");
	expect(&t, "C:225 no transfer\n", "its reply relayed");

	/* ABOR while the command waits for the data connections. */
	pasv(&t);
	client(&t, "RETR f\r\nABOR\r\n");
	expect(&t, "drop\nC:426 Connection closed; transfer aborted.\nB:ABOR\n",
	       "connecting: ABOR overtakes, 426 from the proxy");
	backend(&t, "225 no transfer\r\n");
	expect(&t, "C:225 no transfer\n", "then the backend's answer to ABOR");

	/* ABOR while the data is moving. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	t.len = 0;
	client(&t, "ABOR\r\n");
	expect(&t, "drop\nB:ABOR\n", "running: ABOR overtakes the transfer");
	is_int(t.core.xs, XS_ABORTED, "aborted");
	client(&t, "ABOR\r\n");
	expect(&t, "", "a second ABOR waits");
	backend(&t, "426 aborted\r\n");
	expect(&t, "C:426 aborted\nend 426 aborted\n", "426 relayed, counted as aborted");
	backend(&t, "226 abor ok\r\n");
	expect(&t, "C:226 abor ok\nB:ABOR\n", "226 for ABOR, then the second ABOR goes out");
	backend(&t, "225 nothing\r\n");
	t.len = 0;

	/* ABOR after the backend's 226 was held. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	backend(&t, "226 done\r\n");
	t.len = 0;
	client(&t, "ABOR\r\n");
	expect(&t, "drop\nC:426 Connection closed; transfer aborted.\nend 426 aborted\nB:ABOR\n",
	       "held: the data was not all delivered, so 426 (never the held 226), then ABOR");
	backend(&t, "225 no transfer\r\n");
	expect(&t, "C:225 no transfer\n", "ABOR's reply");

	/* ABOR after the data finished, before the final reply. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	data_done(&t, 1, NULL);
	t.len = 0;
	client(&t, "ABOR\r\n");
	expect(&t, "B:ABOR\n", "data done: ABOR relayed");
	backend(&t, "226 done\r\n");
	backend(&t, "226 abor\r\n");
	expect(&t, "C:226 done\nend 226 aborted\nC:226 abor\n", "both replies, in order");

	/* ABOR cut the data; the backend had sent everything and says 226. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	client(&t, "ABOR\r\n");
	t.len = 0;
	backend(&t, "226 Transfer complete.\r\n");
	expect(&t, "C:426 Connection closed; transfer aborted.\nend 426 aborted\n",
	       "running, ABOR, then the backend's 226: the client hears 426 (its file is cut)");
	backend(&t, "225 ABOR ok\r\n");
	expect(&t, "C:225 ABOR ok\n", "then ABOR's own reply");

	/* pyftpdlib: one 225 answers the transfer command and the ABOR. */
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	t.len = 0;
	client(&t, "ABOR\r\n");
	backend(&t, "225 ABOR successful; data channel closed.\r\n");
	expect(&t, "drop\nB:ABOR\nC:225 ABOR successful; data channel closed.\nend 225 aborted\n",
	       "one 225 ends both");
	is_int(t.core.fifo_len, 0, "nothing more expected");
	client(&t, "NOOP\r\n");
	expect(&t, "B:NOOP\n", "the stream is in step");
	finish(&t, "abor");
}

/* REST accepted by the backend, then a transfer the proxy refuses itself. */
static void test_rest_refused_locally(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	client(&t, "REST 104\r\n");
	backend(&t, "350 Restarting at 104.\r\n");
	t.len = 0;
	client(&t, "RETR f\r\n");
	expect(&t, "C:425 Use PASV or EPSV first.\nB:REST 0\n",
	       "the proxy refused RETR: the backend's restart marker is cleared");
	client(&t, "NOOP\r\n");
	expect(&t, "", "the next command waits for REST 0's answer");
	backend(&t, "350 Restarting at 0.\r\n");
	expect(&t, "B:NOOP\n", "REST 0's answer is the proxy's own, not relayed");
	backend(&t, "200 ok\r\n");
	t.len = 0;
	/* A REST that a forwarded transfer consumed is not cleared again. */
	client(&t, "REST 5\r\n");
	backend(&t, "350 ok\r\n");
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 ok\r\n");
	data_done(&t, 1, NULL);
	t.len = 0;
	backend(&t, "226 ok\r\n");
	client(&t, "RETR f\r\n");
	expect(&t, "C:226 ok\nend 226 ok\nC:425 Use PASV or EPSV first.\n",
	       "no REST 0 after a transfer used the marker");
	/* PORT to a client that cannot be reached: 425 from the proxy. */
	client(&t, "REST 7\r\n");
	backend(&t, "350 ok\r\n");
	client(&t, "PORT 127,0,0,1,200,1\r\n");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	client(&t, "RETR f\r\n");
	t.len = 0;
	data_side(&t, CORE_CLIENT, 0, "connect to client data port: Connection refused");
	expect(&t,
	       "drop\nC:425 Can't open data connection: connect to client data port: Connection "
	       "refused.\nB:REST 0\n",
	       "a client that cannot be reached: 425, and the marker is cleared");
	finish(&t, "rest");
}

static void test_backend_gone_mid_transfer(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 opening\r\n");
	t.len = 0;
	backend(&t, "421 shutting down\r\n");
	expect(&t, "C:421 shutting down\ndrop\nend 421 failed\n",
	       "421 instead of 226: the pair goes, the reply is relayed");
	core_abort(&t.core, "backend closed the control connection");
	expect(&t,
	       "C:421 Service not available, closing control connection.\n"
	       "close flush: backend closed the control connection\n",
	       "the shell's abort: 421 and close after it is delivered");
	client(&t, "NOOP\r\n");
	expect(&t, "", "nothing after closing");
	finish(&t, "421");
}

static void test_epsv_all_rein_feat(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	client(&t, "EPSV ALL\r\n");
	expect(&t, "C:200 EPSV ALL accepted.\n", "EPSV ALL answered by the proxy");
	client(&t, "PASV\r\nPORT 127,0,0,1,200,1\r\nEPSV 2\r\nEPSV\r\n");
	expect(&t,
	       "C:503 PASV not allowed after EPSV ALL.\nC:503 PORT not allowed after EPSV "
	       "ALL.\nC:522 Network protocol not supported, use (1)\ndata_new 0 0\nB:EPSV\n",
	       "after EPSV ALL only EPSV");
	backend(&t, "229 Entering Extended Passive Mode (|||40001|)\r\n");
	expect(&t,
	       "connect backend 40001\nlisten client 50000\n"
	       "C:229 Entering Extended Passive Mode (|||50000|)\n",
	       "229 with the proxy's port");
	client(&t, "REIN\r\n");
	expect(&t, "drop\nB:REIN\n", "REIN drops the pair");
	backend(&t, "220 again\r\n");
	is_int(t.core.logged_in, 0, "REIN: logged out");
	is_int(t.core.epsv_all, 0, "REIN: EPSV ALL forgotten");
	t.len = 0;
	client(&t, "FEAT\r\n");
	backend(&t, "211-Features:\r\n EPSV\r\n MDTM\r\n AUTH TLS\r\n SIZE\r\n211 End\r\n");
	expect(&t, "B:FEAT\nC:211-Features:\nC: EPRT\nC: EPSV\nC: MDTM\nC: SIZE\nC:211 End\n",
	       "FEAT lists what the proxy offers");
	client(&t, "LPSV\r\n");
	expect(&t, "C:502 LPSV is not supported; use EPSV, PASV, EPRT or PORT.\n", "LPSV 502");
	client(&t, "QUIT\r\n");
	backend(&t, "221 bye\r\n");
	expect(&t, "B:QUIT\nC:221 bye\nclose flush: client quit\n", "QUIT");
	finish(&t, "epsv all");
}

static void test_active(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	client(&t, "PORT 10,0,0,1,200,1\r\n");
	expect(&t, "C:504 PORT refused: the address must be your own.\n", "FTP bounce refused");
	client(&t, "PORT 127,0,0,1,0,21\r\n");
	expect(&t, "C:504 PORT refused: ports below 1024 are not allowed.\n", "privileged port");
	client(&t, "PORT 127,0,0,1,200,1\r\n");
	expect(&t, "data_new 0 0\nB:EPSV\n", "PORT: backend passive");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	expect(&t, "connect backend 40000\nC:200 PORT command successful.\n", "200 to PORT");
	client(&t, "STOR f\r\n");
	expect(&t, "connect client 51201\n", "STOR: connect to the client first");
	data_side(&t, CORE_BACKEND, 1, NULL);
	expect(&t, "", "still waiting for the client side");
	data_side(&t, CORE_CLIENT, 1, NULL);
	expect(&t, "B:STOR f\nstart\n", "STOR goes out once the client is reachable");
	backend(&t, "150 ok\r\n");
	data_done(&t, 1, NULL);
	backend(&t, "226 ok\r\n");
	t.len = 0;

	/* Backend in active mode. */
	struct site_conf sc;
	conf_default(&sc);
	sc.backend_data_mode = BDM_ACTIVE;
	finish(&t, "active");
	start(&t, &sc);
	login(&t);
	client(&t, "EPSV\r\n");
	expect(&t, "data_new 0 0\nlisten backend 50000\nB:PORT 127,0,0,1,195,80\n",
	       "backend active: listen, PORT to the backend");
	backend(&t, "200 PORT ok\r\n");
	expect(&t, "listen client 50001\nC:229 Entering Extended Passive Mode (|||50001|)\n",
	       "then the client's 229");
	client(&t, "LIST\r\n");
	expect(&t, "B:LIST\nstart\n", "LIST goes out at once (the backend connects)");
	finish(&t, "backend active");

	/* EPSV refused by the backend: PASV from then on. */
	start(&t, NULL);
	login(&t);
	client(&t, "EPSV\r\n");
	backend(&t, "500 EPSV?\r\n");
	expect(&t, "data_new 0 0\nB:EPSV\nB:PASV\n", "fallback to PASV");
	backend(&t, "227 Entering Passive Mode (10,9,9,9,156,65)\r\n");
	expect(&t,
	       "connect backend 40001\nlisten client 50000\n"
	       "C:229 Entering Extended Passive Mode (|||50000|)\n",
	       "the 227's port, at the backend's control address");
	client(&t, "PASV\r\n");
	expect(&t, "drop\ndata_new 0 0\nB:PASV\n", "a new data command replaces the pair");
	backend(&t, "227 Entering Passive Mode (999,1,1,1,1,1)\r\n");
	expect(&t, "drop\nC:425 Can't open data connection: bad reply from the server.\n",
	       "an unusable 227 gets 425");
	t.fail_listen = 1;
	client(&t, "PASV\r\n");
	backend(&t, "227 Entering Passive Mode (10,9,9,9,156,65)\r\n");
	expect(&t,
	       "data_new 0 0\nB:PASV\nconnect backend 40001\ndrop\n"
	       "C:425 Can't open passive connection: no free port.\n",
	       "no free port: 425");
	finish(&t, "epsv fallback");
}

static void test_timers(void)
{
	struct t t;
	start(&t, NULL);
	is_int(t.timer_ms, 10000, "connect timeout armed");
	core_timer(&t.core);
	expect(&t,
	       "C:421 Service not available, closing control connection.\n"
	       "close flush: backend 127.0.0.2:2121: no greeting within 10 s\n",
	       "no greeting: 421");
	finish(&t, "greeting timeout");

	start(&t, NULL);
	backend(&t, "220 hi\r\n");
	is_int(t.timer_ms, 60000, "login timeout bounds the idle timer");
	t.now += 60000;
	t.len = 0;
	core_timer(&t.core);
	expect(&t,
	       "C:421 Login timeout (60 seconds): closing control connection.\n"
	       "close flush: login timeout\n",
	       "login timeout");
	finish(&t, "login timeout");

	start(&t, NULL);
	login(&t);
	client(&t, "NOOP\r\n");
	t.len = 0;
	core_timer(&t.core);
	expect(&t,
	       "C:421 Service not available, closing control connection.\n"
	       "close flush: backend did not reply within 900 s\n",
	       "a silent backend: 421");
	finish(&t, "silent backend");
}

static void test_tls(void)
{
	struct site_conf sc;
	struct t t;
	conf_default(&sc);
	sc.tls = TLS_TERMINATE;
	sc.require_tls = 1;
	sc.require_data_tls = 1;
	start(&t, &sc);
	backend(&t, "220 hi\r\n");
	t.len = 0;
	client(&t, "USER u\r\n");
	expect(&t, "C:530 TLS required: use AUTH TLS first.\n", "require_tls");
	client(&t, "PBSZ 0\r\n");
	expect(&t, "C:503 PBSZ requires AUTH TLS first.\n", "PBSZ before AUTH");
	client(&t, "AUTH TLS\r\nUSER injected\r\n");
	expect(&t, "C:234 AUTH TLS successful.\nclient_tls\n", "AUTH TLS: 234, then TLS");
	is_int(core_may_take_command(&t.core, "USER injected\r\n", 15), 0,
	       "nothing is taken in plaintext after AUTH");
	t.cin_len = 0; /* the shell drops it when TLS starts */
	core_client_tls_started(&t.core);
	client(&t, "CCC\r\nPROT P\r\nPBSZ 0\r\nPROT C\r\nPROT E\r\nPROT P\r\n");
	expect(&t,
	       "C:534 CCC refused: the control connection stays protected.\nC:503 PBSZ first.\n"
	       "C:200 PBSZ=0\nC:534 PROT C refused: data connections must be protected.\n"
	       "C:536 PROT E is not supported; use P or C.\nC:200 Protection level set to "
	       "Private.\n",
	       "PBSZ/PROT answered by the proxy");
	client(&t, "USER u\r\n");
	backend(&t, "230 in\r\n");
	t.len = 0;
	client(&t, "EPSV\r\n");
	expect(&t, "data_new 1 0\nB:EPSV\n", "PROT P: the client side of the pair is TLS");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	backend(&t, "150 ok\r\n");
	data_done(&t, 1, NULL);
	backend(&t, "226 ok\r\n");
	finish(&t, "tls");

	/* PASV in clear, then PBSZ/PROT P: the prepared pair is protected at RETR. */
	conf_default(&sc);
	sc.tls = TLS_TERMINATE;
	start(&t, &sc);
	login(&t);
	client(&t, "AUTH TLS\r\n");
	core_client_tls_started(&t.core);
	client(&t, "PASV\r\n");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	client(&t, "PBSZ 0\r\nPROT P\r\n");
	t.len = 0;
	client(&t, "RETR f\r\n");
	expect(&t, "data_client_tls 1\n", "PROT P after PASV: TLS on the prepared pair");
	data_side(&t, CORE_BACKEND, 1, NULL);
	client(&t, "ABOR\r\n");
	backend(&t, "426 aborted\r\n");
	backend(&t, "226 ok\r\n");
	client(&t, "PASV\r\n");
	backend(&t, "229 Entering Extended Passive Mode (|||40001|)\r\n");
	client(&t, "PROT C\r\n");
	t.len = 0;
	client(&t, "RETR f\r\n");
	expect(&t, "data_client_tls 0\n", "PROT C after PASV: the pair is clear");
	finish(&t, "tls after pasv");

	/* TLS toward the backend. */
	conf_default(&sc);
	sc.backend_tls = BTLS_ON;
	sc.backend_data_protection = BPROT_PRIVATE;
	start(&t, &sc);
	backend(&t, "220 hi\r\n");
	expect(&t, "B:AUTH TLS\n", "AUTH TLS to the backend before the client sees 220");
	backend(&t, "234 go\r\n");
	expect(&t, "backend_tls\nB:PBSZ 0\n", "TLS, then PBSZ");
	backend(&t, "200 ok\r\n");
	expect(&t, "C:220 hi\n", "then the greeting");
	client(&t, "USER u\r\n");
	backend(&t, "230 in\r\n");
	t.len = 0;
	client(&t, "PASV\r\n");
	expect(&t, "data_new 0 1\nB:PROT P\nB:EPSV\n", "PROT P to the backend once");
	backend(&t, "200 prot\r\n");
	backend(&t, "229 Entering Extended Passive Mode (|||40000|)\r\n");
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	t.len = 0;
	backend(&t, "150 ok\r\n");
	expect(&t, "tls_go\nC:150 ok\n", "the backend's data handshake starts after 1xx");
	client(&t, "ABOR\r\n");
	backend(&t, "426 aborted\r\n");
	backend(&t, "226 ok\r\n");
	t.len = 0;
	client(&t, "PASV\r\n");
	expect(&t, "data_new 0 1\nB:EPSV\n", "no second PROT");
	finish(&t, "backend tls");
}

static void test_passthrough(void)
{
	struct site_conf sc;
	struct t t;
	conf_default(&sc);
	sc.tls = TLS_PASSTHROUGH;
	start(&t, &sc);
	login(&t);
	client(&t, "PORT 127,0,0,1,200,1\r\n");
	expect(&t,
	       "C:502 Active mode is not available through this proxy; use passive mode "
	       "(PASV/EPSV).\n",
	       "active mode refused");
	client(&t, "PASV\r\n");
	expect(&t, "B:PASV\n", "PASV relayed unchanged");
	backend(&t, "227 Entering Passive Mode (203,0,113,1,195,80)\r\n");
	expect(&t, "C:227 Entering Passive Mode (203,0,113,1,195,80)\npt_port 50000\n",
	       "227 relayed, its port noted for this session");
	client(&t, "EPSV\r\n");
	backend(&t, "229 Entering Extended Passive Mode (|||50001|)\r\n");
	expect(&t, "B:EPSV\nC:229 Entering Extended Passive Mode (|||50001|)\npt_port 50001\n",
	       "229 relayed, its port noted");
	client(&t, "PASV\r\n");
	backend(&t, "227 Entering Passive Mode (203,0,113,1,0,0)\r\n");
	expect(&t, "B:PASV\nC:227 Entering Passive Mode (203,0,113,1,0,0)\n",
	       "port 0 is not noted");
	client(&t, "PASV\r\n");
	backend(&t, "425 no\r\n");
	expect(&t, "B:PASV\nC:425 no\n", "a refusal notes nothing");
	client(&t, "RETR f\r\nABOR\r\n");
	expect(&t, "B:RETR f\nB:ABOR\n", "ABOR overtakes a passthrough transfer");
	backend(&t, "426 aborted\r\n");
	backend(&t, "226 ok\r\n");
	expect(&t, "C:426 aborted\nend 426 aborted\nC:226 ok\n", "replies in order");
	client(&t, "AUTH TLS\r\n");
	backend(&t, "234 go\r\n");
	expect(&t, "B:AUTH TLS\nC:234 go\nblind\n", "after the backend's 234 the relay is blind");
	is_int(core_may_take_command(&t.core, "NOOP\r\n", 6), 0, "no command is read after 234");
	finish(&t, "passthrough");

	/* require_tls and require_data_tls: before AUTH the proxy reads every command. */
	sc.tls = TLS_PASSTHROUGH;
	sc.require_tls = 1;
	sc.require_data_tls = 1;
	memset(&t, 0, sizeof(t));
	start(&t, &sc);
	backend(&t, "220 hello\r\n");
	t.len = 0;
	client(&t, "USER ftp\r\n");
	client(&t, "PASS x\r\n");
	expect(&t,
	       "C:530 TLS required: use AUTH TLS first.\nC:530 TLS required: use AUTH TLS first.\n",
	       "passthrough require_tls: USER and PASS before AUTH get 530");
	client(&t, "PROT C\r\n");
	expect(&t, "C:534 PROT C refused: data connections must be protected.\n",
	       "passthrough require_data_tls: PROT C gets 534");
	client(&t, "RETR f\r\n");
	expect(&t, "C:521 Data connections must be protected: use AUTH TLS and PROT P.\n",
	       "passthrough require_data_tls: a transfer before AUTH gets 521");
	finish(&t, "passthrough require_*");

	sc.require_tls = sc.require_data_tls = 0;
	sc.tls = TLS_PASSTHROUGH_IMPLICIT;
	memset(&t, 0, sizeof(t));
	start(&t, &sc);
	expect(&t, "blind\n", "implicit passthrough: blind from the backend's connect on");
	finish(&t, "passthrough implicit");
}

static void test_drain(void)
{
	struct t t;
	start(&t, NULL);
	login(&t);
	pasv(&t);
	client(&t, "RETR f\r\n");
	data_side(&t, CORE_BACKEND, 1, NULL);
	t.len = 0;
	core_drain(&t.core);
	expect(&t, "", "a running transfer is not cut by a graceful stop");
	backend(&t, "150 ok\r\n");
	data_done(&t, 1, NULL);
	backend(&t, "226 ok\r\n");
	expect(&t,
	       "tls_go\nC:150 ok\nC:226 ok\nend 226 ok\n"
	       "C:421 Service shutting down, closing control connection.\n"
	       "close flush: proxy shutting down\n",
	       "the session ends once the transfer is done");
	finish(&t, "drain");
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static unsigned rnd(unsigned n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng % n);
}

/*
 * A random script that mostly follows real sessions (greeting, login, then
 * data command, address, connections, transfer command, 1xx, data done,
 * final reply, in cycles) with events replaced, dropped and ABOR inserted
 * at random, so that every transfer state is reached with surprises in it.
 * Events are (op, arg) byte pairs as script_run() reads them.
 */
static size_t gen_script(uint8_t *d, size_t size)
{
	static const uint8_t pre[][2] = {{3, 0}, {0, 0}, {3, 2}, {0, 1}, {3, 1}};
	static const uint8_t data_cmd[] = {2, 3, 6, 7}, addr_rep[] = {8, 9, 11, 12},
	                     xfer_cmd[] = {8, 9, 10}, prelim[] = {3, 4}, final[] = {5, 7, 14};
	size_t o = 0;
	d[o++] = (uint8_t)rnd(256);
	d[o++] = (uint8_t)rnd(256);
	for (size_t k = 0; k < sizeof(pre) / sizeof(pre[0]); k++) {
		d[o++] = pre[k][0];
		d[o++] = pre[k][1];
	}
	while (o + 6 <= size) {
		uint8_t step[8][2] = {
		    {0, data_cmd[rnd(4)]}, {3, addr_rep[rnd(4)]}, {6, (uint8_t)(2 | rnd(2))},
		    {0, xfer_cmd[rnd(3)]}, {3, prelim[rnd(2)]},   {6, (uint8_t)(2 | rnd(2))},
		    {7, (uint8_t)rnd(2)},  {3, final[rnd(3)]},
		};
		for (int k = 0; k < 8 && o + 6 <= size; k++) { /* at most 6 bytes a step */
			unsigned r = rnd(100);
			if (r < 10)
				continue; /* dropped */
			if (r < 25) {     /* replaced by any event */
				d[o++] = (uint8_t)rnd(256);
				d[o++] = (uint8_t)rnd(256);
				continue;
			}
			if (r < 35) { /* ABOR overtakes, its answer may follow */
				d[o++] = 0;
				d[o++] = 11;
				if (rnd(2)) {
					d[o++] = 3;
					d[o++] = (uint8_t)(rnd(2) ? 5 : 6);
				}
			}
			d[o++] = step[k][0];
			d[o++] = step[k][1];
		}
	}
	return o;
}

/* Random scripts of events: the invariants hold after every event. */
static void test_random_scripts(void)
{
	unsigned reached[XS_COUNT] = {0};
	char why[200] = "";
	int bad = 0;
	for (int k = 0; k < 20000 && !bad; k++) {
		uint8_t d[400];
		size_t n = gen_script(d, sizeof(d));
		if (script_run(d, n, why, sizeof(why), reached) < 0) {
			bad = 1;
			printf("# script %d broke an invariant: %s\n", k, why);
		}
	}
	ok(!bad, "20000 random scripts of events keep the core's invariants");
	for (int x = 0; x < XS_COUNT; x++)
		ok(reached[x] > 100, "random scripts reach state %s (%u times)",
		   xfer_state_names[x], reached[x]);
}

int main(void)
{
	log_set_level(LOG_LVL_ERROR);
	test_login_and_pipelining();
	test_login_result();
	test_route();
	test_download();
	test_abor();
	test_backend_gone_mid_transfer();
	test_rest_refused_locally();
	test_epsv_all_rein_feat();
	test_active();
	test_timers();
	test_tls();
	test_passthrough();
	test_drain();
	test_random_scripts();
	return tap_done();
}
