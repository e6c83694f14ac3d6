/* `jetledger events`: print a service's stored events, oldest first, one JSON object a line. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "jetledger/codec.h"
#include "jetledger/json.h"

jl_status cli_print_event(jl_buf *line, const jl_event *ev, jl_status s)
{
    jl_buf_reset(line);
    jl_status js = jl_event_to_json(line, ev);
    if (js != JL_OK) {
        /* Never half an object: the line without its payload, and why. */
        jl_event ev_only = *ev;
        ev_only.payload = NULL;
        jl_buf_reset(line);
        jl_event_to_json(line, &ev_only);
        s = js;
    }
    if (s != JL_OK && line->len > 0) {
        line->len--; /* reopen the object to say why the payload is null */
        jl_buf_addf(line, ",\"error\":\"%s\"}", jl_status_str(s));
    }
    puts(jl_buf_str(line));
    return s;
}

int cli_unreadable(size_t n)
{
    cli_error("%zu event%s could not be shown whole (see \"error\" on %s line%s)", n,
              n == 1 ? "" : "s", n == 1 ? "its" : "their", n == 1 ? "" : "s");
    return CLI_FAILED;
}

/* Print every event of one stream message; returns how many lines could not show their event
 * whole (a message that is no commit, an event this CLI cannot decode). */
static size_t print_commit(natsMsg *m, uint64_t seq, jl_buf *line)
{
    jl_commit *c = NULL;
    char err[512] = "";
    if (jl_commit_decode(&c, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), seq, err,
                         sizeof(err)) != JL_OK) {
        /* Not ours to judge: show it and go on, the stream is what it is. */
        const char *subj = natsMsg_GetSubject(m);
        jl_buf_reset(line);
        jl_buf_addf(line, "{\"seq\":%" PRIu64 ",\"subject\":", seq);
        jl_json_add_string(line, subj, strlen(subj));
        jl_buf_adds(line, ",\"error\":");
        jl_json_add_string(line, err, strlen(err));
        jl_buf_adds(line, "}");
        puts(jl_buf_str(line));
        return 1;
    }
    size_t bad = 0;
    for (size_t i = 0; i < jl_commit_count(c); i++) {
        jl_event ev;
        jl_status s = jl_commit_event(c, i, NULL, &ev, err, sizeof(err));
        bad += cli_print_event(line, &ev, s) != JL_OK;
    }
    jl_commit_free(c);
    return bad;
}

int cli_events(cli_ctx *ctx)
{
    if (ctx->argc != 1) {
        cli_error("usage: jetledger events <service> [--aggregate ID] [--from-seq N]");
        return CLI_USAGE;
    }
    const char *service = ctx->argv[0];
    char stream[64], filter[256], id[JL_UUID_LEN + 1];
    cli_stream_name(stream, sizeof(stream), service);
    if (ctx->opts.aggregate != NULL) {
        if (jl_uuid_canonical(id, ctx->opts.aggregate) != JL_OK) {
            cli_error("--aggregate '%s' is not a UUID", ctx->opts.aggregate);
            return CLI_USAGE;
        }
        snprintf(filter, sizeof(filter), "%s.events.*.%s", service, id);
    } else {
        snprintf(filter, sizeof(filter), "%s.events.>", service);
    }

    int rc = CLI_OK;
    jl_conn *conn = cli_connect(ctx, &rc);
    natsSubscription *sub = NULL;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jl_buf line;
    jl_buf_init(&line, CLI_JSON_MAX);
    if (conn == NULL)
        goto done;
    /* The stream is named from the service in upper case: "Orders" finds ORDERS, whose
     * subjects are orders.events.>, and a filter on Orders.events.> would read nothing. */
    jsStreamInfo *si = NULL;
    uint64_t end_seq = UINT64_MAX; /* the stream's last sequence now: what is stored, no more */
    if (js_GetStreamInfo(&si, jl_conn_js(conn), stream, NULL, &jerr) == NATS_OK) {
        end_seq = si->State.LastSeq;
        char want[128];
        bool holds = false;
        snprintf(want, sizeof(want), "%s.events.>", service);
        const jsStreamConfig *sc = si->Config; /* NULL from a server that left it out */
        for (int i = 0; sc != NULL && i < sc->SubjectsLen && !holds; i++)
            holds = strcmp(sc->Subjects[i], want) == 0;
        if (!holds) {
            cli_error("stream %s does not hold %s (its first subject: %s): is the service "
                      "named otherwise? (names are case-sensitive)",
                      stream, want, sc != NULL && sc->SubjectsLen > 0 ? sc->Subjects[0] : "none");
            jsStreamInfo_Destroy(si);
            rc = CLI_USAGE;
            goto done;
        }
        if (ctx->opts.from_seq > si->State.LastSeq)
            cli_error("note: %s ends at sequence %" PRIu64 ": nothing from sequence %" PRIu64
                      " on (yet)",
                      stream, si->State.LastSeq, ctx->opts.from_seq);
        jsStreamInfo_Destroy(si);
    }
    /* An ordered consumer: no server state left behind, fastest way to read a stream. */
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Ordered = true;
    if (ctx->opts.from_seq > 0) {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = ctx->opts.from_seq;
    }
    natsStatus ns = js_SubscribeSync(&sub, jl_conn_js(conn), filter, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        bool missing = jerr == JSStreamNotFoundErr || ns == NATS_NOT_FOUND;
        if (jl_js_off(ns, jerr))
            cli_error("cannot read %s: nothing answers the JetStream API: JetStream is not "
                      "enabled on the server (nats-server -js), or not ready yet",
                      stream);
        else if (missing)
            cli_error("there is no stream %s: has the %s service ever run?", stream, service);
        else
            cli_error("cannot read %s: %s (JetStream error %d)", stream, natsStatus_GetText(ns),
                      (int)jerr);
        /* No stream: no such service (reachable, as history and state say it), exit 3 too. */
        rc = ns == NATS_TIMEOUT || ns == NATS_NO_RESPONDERS || missing ? CLI_UNAVAILABLE
                                                                       : CLI_FAILED;
        goto done;
    }
    ns = natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr);
    if (ns != NATS_OK) {
        cli_error("cannot read consumer state: %s", natsStatus_GetText(ns));
        rc = CLI_FAILED;
        goto done;
    }
    /* A push consumer may have delivered everything by now: what it will deliver in all is
     * what it delivered plus what is pending. Each message then says how many remain. */
    uint64_t pending = ci->NumPending + ci->Delivered.Consumer;
    size_t unreadable = 0;
    while (pending > 0) {
        natsMsg *m = NULL;
        ns = natsSubscription_NextMsg(&m, sub, ctx->opts.timeout_ms);
        if (ns != NATS_OK) {
            cli_error("reading %s stopped with %" PRIu64 " events left: %s", stream, pending,
                      natsStatus_GetText(ns));
            rc = CLI_UNAVAILABLE;
            break;
        }
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            /* Events appended since the start are not what was asked for: with producers
             * writing faster than this prints, it would never end. */
            if (meta->Sequence.Stream <= end_seq)
                unreadable += print_commit(m, meta->Sequence.Stream, &line);
            pending = meta->Sequence.Stream >= end_seq ? 0 : meta->NumPending;
            jsMsgMetaData_Destroy(meta);
        }
        natsMsg_Destroy(m);
        if (ferror(stdout))
            break; /* a full disk, a closed pipe (`| head`): said by main, no point reading on */
    }
    if (unreadable > 0 && rc == CLI_OK)
        rc = cli_unreadable(unreadable);
done:
    fflush(stdout);
    jsConsumerInfo_Destroy(ci);
    jl_conn_sub_destroy(conn, sub);
    jl_conn_close(conn, 0);
    jl_buf_cleanup(&line);
    return rc;
}
