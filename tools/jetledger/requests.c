/* `jetledger command` and `jetledger query`: JSON in, protobuf request-reply, JSON out. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jetledger/codec.h"
#include "jetledger/json.h"
#include "jetledger/registry.h"

typedef struct find_ctx {
    const char *short_name;
    const ProtobufCMessageDescriptor *found;
    int count;
} find_ctx;

static void match_short(const ProtobufCMessageDescriptor *d, void *closure)
{
    find_ctx *f = closure;
    if (strcmp(d->short_name, f->short_name) == 0) {
        f->found = d;
        f->count++;
    }
}

/* A type by full name ("orders.CreateOrder"), by name in the package named like the service,
 * or by a short name that only one package uses. */
static const ProtobufCMessageDescriptor *resolve_type(const char *package, const char *name)
{
    if (strchr(name, '.') != NULL) {
        const ProtobufCMessageDescriptor *d = jl_registry_find(name);
        if (d == NULL)
            cli_error("no message type %s in schemas/", name);
        return d;
    }
    const ProtobufCMessageDescriptor *d = jl_registry_find_in(package, name);
    if (d != NULL)
        return d;
    find_ctx f = {.short_name = name, .found = NULL, .count = 0};
    jl_registry_each(match_short, &f);
    if (f.count == 1)
        return f.found;
    if (f.count == 0)
        cli_error("no message type named %s in the schemas this CLI was built with (rebuild it "
                  "after adding one to schemas/)",
                  name);
    else
        cli_error("%s is defined in several packages; give its full name (package.%s)", name, name);
    return NULL;
}

ProtobufCMessage *cli_unpack(const char *type, const uint8_t *data, size_t len,
                             jl_status *out_status)
{
    const ProtobufCMessageDescriptor *d = jl_registry_find(type);
    ProtobufCMessage *m = d ? protobuf_c_message_unpack(d, NULL, len, data) : NULL;
    if (out_status != NULL)
        *out_status = m != NULL ? JL_OK : d != NULL ? JL_ERR_DECODE : JL_ERR_UNKNOWN_TYPE;
    return m;
}

ProtobufCMessage *cli_reply_result(const jl_reply *r, const ProtobufCMessageDescriptor *want)
{
    if (strcmp(r->result_type, want->name) != 0) {
        cli_error("the reply holds %s where %s was expected",
                  r->result_type[0] ? r->result_type : "no result", want->name);
        return NULL;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(want, NULL, r->result.len, r->result.data);
    if (m == NULL)
        cli_error("the result is not a valid %s", want->name);
    return m;
}

int cli_reply_status(const jl_reply *r)
{
    if (r->code == JL_CODE_OK)
        return CLI_OK;
    cli_error("%s: %s", jl_code_str(r->code), r->message);
    return r->code == JL_CODE_UNAVAILABLE || r->code == JL_CODE_TIMEOUT ? CLI_UNAVAILABLE
                                                                        : CLI_REJECTED;
}

/* Print a reply as one JSON object on stdout; the result decoded by its type name. */
static int print_reply(const jl_reply *r)
{
    jl_buf b;
    jl_buf_init(&b, CLI_JSON_MAX);
    jl_buf_addf(&b, "{\"code\":\"%s\"", jl_code_str(r->code));
    if (r->message[0] != 0) {
        jl_buf_adds(&b, ",\"message\":");
        jl_json_add_string(&b, r->message, strlen(r->message));
    }
    if (r->aggregate_id[0] != 0) {
        jl_buf_adds(&b, ",\"aggregate_id\":");
        jl_json_add_string(&b, r->aggregate_id, strlen(r->aggregate_id));
    }
    if (r->aggregate_version != 0)
        jl_buf_addf(&b, ",\"aggregate_version\":%" PRIu64, r->aggregate_version);
    if (r->stream_seq != 0)
        jl_buf_addf(&b, ",\"stream_sequence\":%" PRIu64, r->stream_seq);
    if (r->duplicate)
        jl_buf_adds(&b, ",\"duplicate\":true");
    int rc = CLI_OK;
    if (r->result_type[0] != 0) {
        ProtobufCMessage *m = cli_unpack(r->result_type, r->result.data, r->result.len, NULL);
        jl_buf_adds(&b, ",\"result\":");
        if (m != NULL && jl_pb_to_json(&b, m) == JL_OK) {
            protobuf_c_message_free_unpacked(m, NULL);
        } else if (m != NULL) {
            protobuf_c_message_free_unpacked(m, NULL);
            jl_buf_adds(&b, "null");
            cli_error("the result (%s) is too large to print", r->result_type);
            rc = CLI_FAILED;
        } else {
            jl_buf_adds(&b, "null");
            cli_error("cannot decode the result (%s); is this CLI older than the service?",
                      r->result_type);
            rc = CLI_FAILED;
        }
    }
    jl_buf_adds(&b, "}\n");
    if (cli_print_json(&b, "reply") != CLI_OK)
        rc = CLI_FAILED;
    jl_buf_cleanup(&b);
    if (r->code != JL_CODE_OK)
        rc = cli_reply_status(r);
    return rc;
}

/* Whether @p name is a producer service's: its stream (the name in upper case) holds
 * "<name>.events.>", as `events` finds it. One JetStream request, asked only when nothing
 * answered a projector's admin subject: a stopped projector is worth a retry, a service there
 * never answers. (A projector cannot share a service's name: both answer "<name>.query.*".) */
static bool names_a_service(jl_conn *conn, const char *name)
{
    char stream[JL_NAME_MAX], want[JL_NAME_MAX + 16];
    jsStreamInfo *si = NULL;
    bool yes = false;
    cli_stream_name(stream, sizeof(stream), name);
    snprintf(want, sizeof(want), "%s.events.>", name);
    if (js_GetStreamInfo(&si, jl_conn_js(conn), stream, NULL, NULL) == NATS_OK) {
        for (int i = 0; si->Config != NULL && i < si->Config->SubjectsLen && !yes; i++)
            yes = strcmp(si->Config->Subjects[i], want) == 0;
        jsStreamInfo_Destroy(si);
    }
    return yes;
}

static bool last_timed_out; /* the CLI is one thread */

bool cli_request_timed_out(void)
{
    return last_timed_out;
}

static bool quiet_unanswered; /* see cli_quiet_unanswered() */

void cli_quiet_unanswered(bool on)
{
    quiet_unanswered = on;
}

int cli_request(const cli_ctx *ctx, jl_conn *conn, const char *kind, const char *name,
                const char *subject, const ProtobufCMessage *msg, jl_reply *out)
{
    int rc = CLI_OK;
    natsMsg *req = NULL, *rep = NULL;
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *body = malloc(len ? len : 1);
    if (body == NULL)
        return CLI_FAILED;
    protobuf_c_message_pack(msg, body);

    natsStatus ns = natsMsg_Create(&req, subject, NULL, (const char *)body, (int)len);
    if (ns == NATS_OK && ctx->opts.command_id)
        ns = natsMsgHeader_Set(req, "Jl-Command-Id", ctx->opts.command_id);
    if (ns == NATS_OK && ctx->opts.correlation_id)
        ns = natsMsgHeader_Set(req, "Jl-Correlation-Id", ctx->opts.correlation_id);
    if (ns == NATS_OK)
        ns = natsConnection_RequestMsg(&rep, jl_conn_nats(conn), req, ctx->opts.timeout_ms);
    last_timed_out = ns == NATS_TIMEOUT;
    size_t n = strlen(name);
    bool admin = strncmp(subject, name, n) == 0 && strncmp(subject + n, ".admin.", 7) == 0;
    if (ns == NATS_NO_RESPONDERS && quiet_unanswered) {
        rc = CLI_UNAVAILABLE;
    } else if (ns == NATS_NO_RESPONDERS && admin && names_a_service(conn, name)) {
        /* Usage, not "unreachable": a script would retry it for ever. */
        cli_error("%s is a producer service (its stream holds %s.events.>), not a projector: "
                  "rebuild, verify, dead-letters and outbox take a projector",
                  name, name);
        rc = CLI_USAGE;
    } else if (ns == NATS_NO_RESPONDERS && admin && ctx->opts.instance != NULL) {
        cli_error("no instance %s of projector %s is running (nothing answers %s): an instance "
                  "is named by its durable (JL_DURABLE, else the projector's name; `jetledger "
                  "status` lists the durables, with a \"_<STREAM>\" after the name for a "
                  "projector of several streams)",
                  ctx->opts.instance, name, subject);
        rc = CLI_UNAVAILABLE;
    } else if (ns == NATS_NO_RESPONDERS) {
        bool projector = strcmp(kind, "projector") == 0;
        cli_error("no %s named %s is running (nothing answers %s)%s; or is %s a %s? (%s "
                  "take a %s)",
                  kind, name, subject,
                  projector && strstr(subject, ".query.") != NULL
                      ? ", or it is still catching up with its stream (it answers queries once "
                        "it has; see its log)"
                      : "",
                  name, projector ? "service" : "projector",
                  projector ? "query, rebuild, verify, dead-letters and outbox"
                            : "command, history, state and events",
                  kind);
        rc = CLI_UNAVAILABLE;
    } else if (ns == NATS_TIMEOUT && ctx->opts.command_id != NULL) {
        cli_error("no reply on %s within %" PRId64 " ms: the command may still be carried out; "
                  "send it again with --command-id %s to get its outcome without running it "
                  "twice",
                  subject, ctx->opts.timeout_ms, ctx->opts.command_id);
        rc = CLI_UNAVAILABLE;
    } else if (ns == NATS_TIMEOUT) {
        cli_error("no reply on %s within %" PRId64 " ms", subject, ctx->opts.timeout_ms);
        rc = CLI_UNAVAILABLE;
    } else if (ns == NATS_MAX_PAYLOAD) {
        /* Usage, not "unreachable": sent again, it would be refused again. */
        cli_error("the request of %zu bytes is more than the server accepts (its max_payload: "
                  "%" PRId64 " bytes, headers included)",
                  len, natsConnection_GetMaxPayload(jl_conn_nats(conn)));
        rc = CLI_USAGE;
    } else if (ns != NATS_OK) {
        cli_error("request on %s failed: %s", subject, natsStatus_GetText(ns));
        rc = ns == NATS_NO_MEMORY ? CLI_FAILED : CLI_UNAVAILABLE; /* ours, not the server's */
    } else if (jl_reply_decode(out, natsMsg_GetData(rep), (size_t)natsMsg_GetDataLength(rep)) !=
               JL_OK) {
        cli_error("the reply on %s is not a jetledger.Reply", subject);
        rc = CLI_FAILED;
    }
    natsMsg_Destroy(req);
    natsMsg_Destroy(rep);
    free(body);
    return rc;
}

ProtobufCMessage *cli_ask(const cli_ctx *ctx, jl_conn *conn, const char *kind, const char *name,
                          const char *subject, const ProtobufCMessage *msg,
                          const ProtobufCMessageDescriptor *want, int *rc)
{
    ProtobufCMessage *res = NULL;
    jl_reply r;
    jl_reply_init(&r);
    *rc = cli_request(ctx, conn, kind, name, subject, msg, &r);
    if (*rc == CLI_OK)
        *rc = cli_reply_status(&r);
    if (*rc == CLI_OK) {
        res = cli_reply_result(&r, want);
        if (res == NULL)
            *rc = CLI_FAILED;
    }
    jl_reply_cleanup(&r);
    return res;
}

static int request(cli_ctx *ctx, const char *kind, const char *verb)
{
    bool is_command = strcmp(kind, "command") == 0;
    if (ctx->argc != 3) {
        cli_error("usage: jetledger %s <%s> <%s> '<json>'%s", kind,
                  is_command ? "service" : "projector", is_command ? "Command" : "Query",
                  is_command ? " [--command-id ID] [--correlation-id ID]" : "");
        return CLI_USAGE;
    }
    const char *service = ctx->argv[0], *name = ctx->argv[1], *json = ctx->argv[2];
    const ProtobufCMessageDescriptor *d = resolve_type(service, name);
    if (d == NULL)
        return CLI_USAGE;

    ProtobufCMessage *msg = NULL;
    char err[512] = "";
    if (jl_json_to_pb(&msg, d, json, strlen(json), err, sizeof(err)) != JL_OK) {
        cli_error("bad JSON for %s: %s", d->name, err);
        return CLI_USAGE;
    }
    char subject[512], generated[JL_UUID_LEN + 8];
    snprintf(subject, sizeof(subject), "%s.%s.%s", service, verb, d->short_name);
    if (is_command && ctx->opts.command_id == NULL) {
        /* Always an id: after a lost reply the same command can be sent again safely. */
        char uuid[JL_UUID_LEN + 1];
        jl_uuid_new(uuid);
        snprintf(generated, sizeof(generated), "cli-%s", uuid);
        ctx->opts.command_id = generated;
    }
    int rc = CLI_UNAVAILABLE;
    jl_reply r;
    jl_reply_init(&r);
    jl_conn *conn = cli_connect(ctx, &rc);
    if (conn != NULL)
        rc =
            cli_request(ctx, conn, is_command ? "service" : "projector", service, subject, msg, &r);
    if (rc == CLI_OK)
        rc = print_reply(&r);
    if (ctx->opts.command_id == generated)
        ctx->opts.command_id = NULL; /* the buffer goes now */
    jl_reply_cleanup(&r);
    jl_conn_close(conn, 0);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

int cli_command(cli_ctx *ctx)
{
    return request(ctx, "command", "cmd");
}

int cli_query(cli_ctx *ctx)
{
    return request(ctx, "query", "query");
}
