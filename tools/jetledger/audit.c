/* `jetledger history` and `jetledger state`: an aggregate's audit trail and its past states,
 * asked of the producer ("<service>.query.GetHistory|GetState"), which replays with its own
 * evolve function. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/json.h"

/* Check "<service> <aggregate-id>", then connect. On CLI_OK, @p id holds the canonical UUID,
 * @p subject the query subject and *out_conn the connection. */
static int open_aggregate(const cli_ctx *ctx, const char *usage, const char *query,
                          char id[JL_UUID_LEN + 1], char *subject, size_t n, jl_conn **out_conn)
{
    if (ctx->argc != 2) {
        cli_error("usage: jetledger %s", usage);
        return CLI_USAGE;
    }
    if (jl_uuid_canonical(id, ctx->argv[1]) != JL_OK) {
        cli_error("aggregate id '%s' is not a UUID", ctx->argv[1]);
        return CLI_USAGE;
    }
    snprintf(subject, n, "%s.query.%s", ctx->argv[0], query);
    int rc;
    *out_conn = cli_connect(ctx, &rc);
    return rc;
}

/* Whether @p got names aggregate @p id (canonical): a reply about another is not this one's. */
static bool same_aggregate(const char *got, const char *id)
{
    char canon[JL_UUID_LEN + 1];
    return got != NULL && jl_uuid_canonical(canon, got) == JL_OK && strcmp(canon, id) == 0;
}

/* Print one event of a history page; JL_OK, or why its line holds an error. */
static jl_status print_stored(jl_buf *line, const Jetledger__StoredEvent *se)
{
    const Jetledger__Envelope *e = se->envelope;
    if (e == NULL) {
        printf("{\"seq\":%" PRIu64 ",\"error\":\"no envelope\"}\n", se->stream_sequence);
        return JL_ERR_DECODE;
    }
    jl_status s = JL_OK;
    ProtobufCMessage *payload = cli_unpack(e->event_type, e->payload.data, e->payload.len, &s);
    jl_event ev = {.event_id = e->event_id,
                   .event_type = e->event_type,
                   .aggregate_type = e->aggregate_type,
                   .aggregate_id = e->aggregate_id,
                   .correlation_id = e->correlation_id,
                   .causation_id = e->causation_id,
                   .aggregate_version = e->aggregate_version,
                   .occurred_at_ns = e->occurred_at_ns,
                   .schema_version = e->schema_version,
                   .stream_seq = se->stream_sequence,
                   .payload = payload};
    s = cli_print_event(line, &ev, s);
    if (payload != NULL)
        protobuf_c_message_free_unpacked(payload, NULL);
    return s;
}

/*
 * Whether history page @p h, asked from version @p from, holds events of @p id in order from
 * it and below its next_version, and at least one when it says there is more: a page that does
 * not move forward, or another aggregate's, is not printed (it would loop or mislead).
 */
static bool page_sound(const Jetledger__HistoryResult *h, uint64_t from, const char *id)
{
    uint64_t last = 0;
    if (h->next_version != 0 && h->n_events == 0) {
        cli_error("the service sent an empty history page that says there is more");
        return false;
    }
    for (size_t i = 0; i < h->n_events; i++) {
        const Jetledger__Envelope *e = h->events[i]->envelope;
        if (e == NULL)
            continue; /* printed as such, and counted */
        if (!same_aggregate(e->aggregate_id, id)) {
            cli_error("the service sent an event of another aggregate (%s)", e->aggregate_id);
            return false;
        }
        uint64_t v = e->aggregate_version;
        if (v < from || v <= last || (h->next_version != 0 && v >= h->next_version)) {
            cli_error("the service sent version %" PRIu64 " out of order on a page from %" PRIu64,
                      v, from);
            return false;
        }
        last = v;
    }
    return true;
}

int cli_history(cli_ctx *ctx)
{
    char id[JL_UUID_LEN + 1], subject[256];
    jl_conn *conn = NULL;
    jl_buf line;
    jl_buf_init(&line, CLI_JSON_MAX);
    int rc = open_aggregate(ctx, "history <service> <aggregate-id>", "GetHistory", id, subject,
                            sizeof(subject), &conn);
    Jetledger__GetHistory q = JETLEDGER__GET_HISTORY__INIT;
    q.aggregate_id = id;
    q.from_version = 1;
    size_t unreadable = 0;
    /* Versions go up by one an event: a version skipped is one the stream no longer holds. */
    uint64_t expect = 1, missing = 0;
    while (rc == CLI_OK) {
        Jetledger__HistoryResult *h = (Jetledger__HistoryResult *)cli_ask(
            ctx, conn, "service", ctx->argv[0], subject, &q.base,
            &jetledger__history_result__descriptor, &rc);
        if (h == NULL)
            break;
        if (!page_sound(h, q.from_version, id)) {
            protobuf_c_message_free_unpacked(&h->base, NULL);
            rc = CLI_FAILED;
            break;
        }
        for (size_t i = 0; i < h->n_events; i++) {
            unreadable += print_stored(&line, h->events[i]) != JL_OK;
            const Jetledger__Envelope *e = h->events[i]->envelope;
            if (e != NULL && expect != 0 && e->aggregate_version > expect) {
                if (missing == 0)
                    cli_error("versions %" PRIu64 " to %" PRIu64 " of %s are not in the stream "
                              "(aged out under --max-age, or removed)",
                              expect, e->aggregate_version - 1, id);
                missing += e->aggregate_version - expect;
            }
            expect = e != NULL ? e->aggregate_version + 1 : 0; /* 0: unknown */
        }
        uint64_t next = h->next_version;
        q.from_sequence = h->next_sequence; /* the next page reads on from there */
        protobuf_c_message_free_unpacked(&h->base, NULL);
        if (next == 0 || ferror(stdout))
            break; /* the last page; or stdout failed (a full disk, `| head`): said by main */
        /* A page that does not move forward would loop for ever. */
        if (next <= q.from_version) {
            cli_error("the service paged from version %" PRIu64 " back to %" PRIu64, q.from_version,
                      next);
            rc = CLI_FAILED;
        }
        q.from_version = next;
    }
    if (unreadable > 0 && rc == CLI_OK)
        rc = cli_unreadable(unreadable);
    if (missing > 0 && rc == CLI_OK) {
        /* Printed, but a script must not take the trail for whole. */
        cli_error("%" PRIu64 " version%s missing: the trail is not whole", missing,
                  missing == 1 ? "" : "s");
        rc = CLI_FAILED;
    }
    fflush(stdout);
    jl_buf_cleanup(&line);
    jl_conn_close(conn, 0);
    return rc;
}

/* Print a StateResult as one JSON object, its state decoded by state_type. */
static int print_state(const Jetledger__StateResult *st)
{
    int rc = CLI_OK;
    char when[48] = "null";
    jl_buf b;
    jl_buf_init(&b, CLI_JSON_MAX);
    /* 0: the service could not tell (its last event's time unread), not 1970. */
    if (st->occurred_at_ns != 0) {
        when[0] = '"';
        jl_format_time(when + 1, sizeof(when) - 2, st->occurred_at_ns);
        strcat(when, "\"");
    }
    jl_buf_adds(&b, "{\"aggregate_id\":");
    jl_json_add_string(&b, st->aggregate_id, strlen(st->aggregate_id));
    jl_buf_addf(&b,
                ",\"version\":%" PRIu64 ",\"stream_sequence\":%" PRIu64
                ",\"occurred_at\":%s,\"state_type\":",
                st->version, st->stream_sequence, when);
    jl_json_add_string(&b, st->state_type, strlen(st->state_type));
    jl_buf_adds(&b, ",\"state\":");
    ProtobufCMessage *m = cli_unpack(st->state_type, st->state.data, st->state.len, NULL);
    if (m == NULL || jl_pb_to_json(&b, m) != JL_OK) {
        jl_buf_adds(&b, "null");
        cli_error("cannot show the state (%s); is this CLI older than the service?",
                  st->state_type);
        rc = CLI_FAILED;
    }
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    jl_buf_adds(&b, "}\n");
    if (cli_print_json(&b, "state") != CLI_OK)
        rc = CLI_FAILED;
    jl_buf_cleanup(&b);
    return rc;
}

int cli_state(cli_ctx *ctx)
{
    char id[JL_UUID_LEN + 1], subject[256];
    jl_conn *conn = NULL;
    int rc = open_aggregate(ctx,
                            "state <service> <aggregate-id> [--at-seq N | --at-time RFC3339 | "
                            "--at-version V]",
                            "GetState", id, subject, sizeof(subject), &conn);
    if (rc == CLI_OK) {
        Jetledger__GetState q = JETLEDGER__GET_STATE__INIT;
        q.aggregate_id = id;
        q.at_seq = ctx->opts.at_seq;
        q.at_version = ctx->opts.at_version;
        /* 0 means "now" on the wire: the epoch itself is asked as 1 ns before it, which no
         * event can tell apart. */
        if (ctx->opts.has_at_time)
            q.at_time_ns = ctx->opts.at_time_ns != 0 ? ctx->opts.at_time_ns : -1;
        Jetledger__StateResult *st =
            (Jetledger__StateResult *)cli_ask(ctx, conn, "service", ctx->argv[0], subject, &q.base,
                                              &jetledger__state_result__descriptor, &rc);
        if (st != NULL && (!same_aggregate(st->aggregate_id, id) || st->version == 0)) {
            cli_error("the service answered with a state of %s at version %" PRIu64
                      ", not one of the aggregate asked for",
                      st->aggregate_id, st->version);
            rc = CLI_FAILED;
        } else if (st != NULL) {
            rc = print_state(st);
        }
        if (st != NULL)
            protobuf_c_message_free_unpacked(&st->base, NULL);
    }
    jl_conn_close(conn, 0);
    return rc;
}
