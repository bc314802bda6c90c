/* stats: label names of the per-site counters (see stats.h). */
#include "config.h"

#include "stats.h"

const char *const end_reason_names[END_REASON_MAX] = {
    [END_CLIENT_QUIT] = "client_quit",
    [END_CLIENT_CLOSED] = "client_closed",
    [END_IDLE_TIMEOUT] = "idle_timeout",
    [END_LOGIN_TIMEOUT] = "login_timeout",
    [END_BACKEND_CONNECT] = "backend_connect",
    [END_BACKEND_ERROR] = "backend_error",
    [END_TLS_ERROR] = "tls_error",
    [END_SHUTDOWN] = "shutdown",
    [END_OTHER] = "other",
};

const char *const xfer_cmd_names[XC_MAX] = {
    [XC_RETR] = "RETR", [XC_STOR] = "STOR", [XC_APPE] = "APPE", [XC_STOU] = "STOU",
    [XC_LIST] = "LIST", [XC_NLST] = "NLST", [XC_MLSD] = "MLSD",
};

const char *const xfer_result_names[XR_MAX] = {
    [XR_OK] = "ok",
    [XR_FAILED] = "failed",
    [XR_ABORTED] = "aborted",
};

/* A new enumerator needs its name above (a missing one would be NULL). */
_Static_assert(END_REASON_MAX == 9, "update end_reason_names");
_Static_assert(XC_MAX == 7, "update xfer_cmd_names");
_Static_assert(XR_MAX == 3, "update xfer_result_names");
