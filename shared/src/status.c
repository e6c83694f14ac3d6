#include "jetledger/status.h"

const char *jl_status_str(jl_status s)
{
    switch (s) {
    case JL_OK:
        return "JL_OK";
    case JL_ERR_INVALID:
        return "JL_ERR_INVALID";
    case JL_ERR_DECODE:
        return "JL_ERR_DECODE";
    case JL_ERR_UNKNOWN_TYPE:
        return "JL_ERR_UNKNOWN_TYPE";
    case JL_ERR_TOO_LARGE:
        return "JL_ERR_TOO_LARGE";
    case JL_ERR_NOT_FOUND:
        return "JL_ERR_NOT_FOUND";
    case JL_ERR_CONFLICT:
        return "JL_ERR_CONFLICT";
    case JL_ERR_REJECTED:
        return "JL_ERR_REJECTED";
    case JL_ERR_TIMEOUT:
        return "JL_ERR_TIMEOUT";
    case JL_ERR_UNAVAILABLE:
        return "JL_ERR_UNAVAILABLE";
    case JL_ERR_NATS:
        return "JL_ERR_NATS";
    case JL_ERR_SQLITE:
        return "JL_ERR_SQLITE";
    case JL_ERR_DISK_FULL:
        return "JL_ERR_DISK_FULL";
    case JL_ERR_IO:
        return "JL_ERR_IO";
    case JL_ERR_VERSION:
        return "JL_ERR_VERSION";
    case JL_ERR_NOMEM:
        return "JL_ERR_NOMEM";
    case JL_ERR_STOPPED:
        return "JL_ERR_STOPPED";
    case JL_ERR_INTERNAL:
        return "JL_ERR_INTERNAL";
    }
    return "JL_ERR_UNKNOWN_STATUS";
}
