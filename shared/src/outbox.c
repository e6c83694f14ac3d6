/*
 * The transactional outbox of process managers: commands decided by apply are rows of
 * jl_outbox, written in the batch's transaction; a sender thread requests them in order and
 * records each reply. A command without a reply is sent again (same command id) until one
 * comes: producers answer a repeated id once, so it has one effect.
 *
 * Rows are sent in the order they were decided: a command that gets no reply (service down)
 * holds back the ones after it, because a later command may depend on it (a release sent before
 * its reservation would find nothing and the reservation would then hold stock forever). A row
 * answered "not now" (a producer's unavailable, conflict or timeout: not decided) holds back
 * the rows of its order key only, when it has one (jl_outbox_add_keyed()): the others go on,
 * and may be what makes room for it (a commit of another order's reservation). A row without
 * a key is a barrier: it waits for every row before it, and every row after it waits for it.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deadline.h"
#include "hash.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/log.h"
#include "jetledger/producer.h"
#include "projector_int.h"

#define OUTBOX_BATCH 32
/* Every column of jl_outbox (see jl__state_sql in projector.c). */
#define OUTBOX_COLUMNS                                                                             \
    "id, command_id, service, command, body, correlation_id, causation_id, created_at_ns, "        \
    "replied_at_ns, reply_code, reply_message, attempts, order_key"
/* How often a wait for a reply looks whether the projector is stopping. */
#define OUTBOX_STOP_CHECK_MS 200
#define PRUNE_CHUNK 1000
#define PRUNE_EVERY_NS (60 * 1000000000LL)
/* The longest wait before a row is sent again: 5 s, longer when many orders are held "not
 * now", so that their retries together stay near 100 a second however many are held. */
#define OUTBOX_BACKOFF_MS 5000
#define OUTBOX_RETRIES_PER_S 100
/* A row without a reply holds back every later one: past its first attempts (1, 2, 4, 8, ...
 * logged at warn), it is still logged at warn this often while it blocks. */
#define OUTBOX_BLOCKED_WARN_NS (60 * 1000000000LL)

typedef struct row {
    int64_t id;
    char service[64];
    char command[72];
    char command_id[128];
    char correlation[128];
    char causation[128];
    char key[JL_OUTBOX_KEY_MAX + 1]; /* "": none, a barrier */
    int64_t attempts;                /* before this one */
    int64_t created_ns;              /* jl__now_ns() when decided */
    void *body;
    int len;
} row;

jl_status jl_outbox_add(jl_db *db, const char *service, const ProtobufCMessage *cmd,
                        const char *command_id, const char *correlation_id,
                        const char *causation_id)
{
    return jl_outbox_add_keyed(db, service, cmd, command_id, correlation_id, causation_id, NULL);
}

jl_status jl_outbox_add_keyed(jl_db *db, const char *service, const ProtobufCMessage *cmd,
                              const char *command_id, const char *correlation_id,
                              const char *causation_id, const char *order_key)
{
    /* The sender keeps each field in a bounded buffer, and producers refuse longer ids: one
     * that does not fit is refused here, not cut (two ids cut alike would be one command). */
    /* What a producer would refuse is refused here, not sent and answered invalid later. */
    if (command_id == NULL || !jl_valid_id(command_id) ||
        (correlation_id != NULL && *correlation_id != 0 && !jl_valid_id(correlation_id)) ||
        (causation_id != NULL && *causation_id != 0 && !jl_valid_id(causation_id)) ||
        service == NULL || !jl_valid_name(service) ||
        strlen(service) >= sizeof(((row *)0)->service) ||
        (order_key != NULL && strlen(order_key) > JL_OUTBOX_KEY_MAX) ||
        strlen(cmd->descriptor->short_name) >= sizeof(((row *)0)->command))
        return JL_ERR_INVALID;
    size_t n = protobuf_c_message_get_packed_size(cmd);
    if (n > JL_MAX_COMMAND_BYTES) /* what a producer takes */
        return JL_ERR_TOO_LARGE;
    uint8_t *body = malloc(n ? n : 1);
    if (body == NULL)
        return JL_ERR_NOMEM;
    protobuf_c_message_pack(cmd, body);
    /* A command id queued before (a batch applied again) is not queued twice; any other
     * failure to store the row (OR IGNORE would skip a NOT NULL one too) fails the batch. */
    sqlite3_stmt *st = jl_db_stmt(db, "INSERT INTO jl_outbox (command_id, service, command, "
                                      "body, correlation_id, causation_id, created_at_ns, "
                                      "order_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                                      "ON CONFLICT (command_id) DO NOTHING");
    jl_status s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, command_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, service, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, cmd->descriptor->short_name, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 4, body, (int)n, SQLITE_STATIC); /* freed after the step */
        sqlite3_bind_text(st, 5, correlation_id ? correlation_id : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, causation_id ? causation_id : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, jl__now_ns());
        sqlite3_bind_text(st, 8, order_key ? order_key : "", -1, SQLITE_STATIC);
        s = jl_db_step_done(db, st);
    }
    free(body);
    if (s == JL_OK)
        jl__fault("outbox.added"); /* decided, in the batch's transaction, not committed */
    return s;
}

jl_status jl_outbox_withdraw(jl_db *db, const char *command_id, const char *why)
{
    if (command_id == NULL)
        return JL_ERR_INVALID;
    sqlite3_stmt *st = jl_db_stmt(db, "UPDATE jl_outbox SET replied_at_ns = ?, reply_code = "
                                      "'withdrawn', reply_message = ? WHERE command_id = ? AND "
                                      "replied_at_ns IS NULL");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_int64(st, 1, jl__now_ns());
    sqlite3_bind_text(st, 2, why ? why : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, command_id, -1, SQLITE_STATIC);
    return jl_db_step_done(db, st);
}

/* The sender's replies: one subscription for its life, one reply subject per request (a reply
 * that comes after its request was given up is told from the current one and dropped). */
typedef struct sender {
    natsSubscription *sub; /* <inbox>.*, or NULL until it could be made */
    char *inbox;
    uint64_t n;           /* requests so far */
    int64_t warned_ns;    /* jl__mono_ns() of the last warning of a row without a reply */
    bool refusal_handled; /* on_refused committed in this pass: rows it queued wait to go */
} sender;

/* Let go of @p snd's subscription (made again for the next request). */
static void sender_close(jl_projector *p, sender *snd)
{
    jl_conn_sub_destroy(p->conn, snd->sub); /* a reply given up on may be on its way */
    natsInbox_Destroy(snd->inbox);
    snd->sub = NULL;
    snd->inbox = NULL;
    snd->n = 0;
}

static natsStatus sender_open(jl_projector *p, sender *snd)
{
    char subject[128];
    natsStatus ns = natsInbox_Create(&snd->inbox);
    if (ns == NATS_OK) {
        snprintf(subject, sizeof(subject), "%s.*", snd->inbox);
        ns = natsConnection_SubscribeSync(&snd->sub, jl_conn_nats(p->conn), subject);
    }
    if (ns != NATS_OK)
        sender_close(p, snd);
    return ns;
}

/*
 * How long a command's reply is waited for: as long as a producer may take to answer (its turn
 * behind the commands before it, then its append, each up to the request timeout), so that a
 * slow answer (a stream leader being elected) is not taken for none and the command sent again
 * while the first is still being carried out. A stopping projector, or a rebuild's switch
 * waiting for outbox_mu, gives up at once: the row is sent again (after the restart, or after
 * the switch), and the producer answers a repeated id once. (The producer's own request timeout
 * may differ from this process's: a wait too short only costs a repeat.)
 */
static int64_t reply_wait_ms(const jl_projector *p)
{
    return 2 * p->timeout_ms + 1000;
}

/* Whether the sender must let go of outbox_mu now: stopping, or a rebuild's switch waits. */
static bool give_up(jl_projector *p)
{
    return atomic_load(&p->stopping) || atomic_load(&p->outbox_yield);
}

/* Request one command; true when a reply came (whatever its code), with it in @p r. Else
 * *out_attempt says whether it counts as an attempt (not sent, or waited for in vain; not when
 * given up for a stop or a switch). */
static bool send_row(jl_projector *p, sender *snd, const row *w, jl_reply *r, char *why, size_t n,
                     bool *out_attempt)
{
    char subject[160], reply[160];
    natsMsg *req = NULL, *rep = NULL;
    natsStatus ns = snd->sub != NULL ? NATS_OK : sender_open(p, snd);
    snprintf(subject, sizeof(subject), "%s.cmd.%s", w->service, w->command);
    if (ns == NATS_OK) {
        snprintf(reply, sizeof(reply), "%s.%" PRIu64, snd->inbox, ++snd->n);
        ns = natsMsg_Create(&req, subject, reply, w->body, w->len);
    }
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(req, "Jl-Command-Id", w->command_id);
    if (ns == NATS_OK && w->correlation[0])
        ns = natsMsgHeader_Set(req, "Jl-Correlation-Id", w->correlation);
    if (ns == NATS_OK && w->causation[0])
        ns = natsMsgHeader_Set(req, "Jl-Causation-Id", w->causation);
    /* Not sent at all when the switch already waits: its reply would be dropped at once. */
    bool gave_up = ns == NATS_OK && give_up(p);
    if (gave_up)
        ns = NATS_CONNECTION_CLOSED; /* see why, below */
    if (ns == NATS_OK)
        ns = natsConnection_PublishMsg(jl_conn_nats(p->conn), req);
    bool sent = ns == NATS_OK;
    natsStatus send_ns = ns;
    int64_t deadline = jl__mono_ms() + reply_wait_ms(p);
    while (ns == NATS_OK && rep == NULL) {
        int64_t left = deadline - jl__mono_ms();
        if ((gave_up = give_up(p)))
            ns = NATS_CONNECTION_CLOSED; /* see why, below */
        else if (left <= 0)
            ns = NATS_TIMEOUT;
        else if ((ns = natsSubscription_NextMsg(
                      &rep, snd->sub, left < OUTBOX_STOP_CHECK_MS ? left : OUTBOX_STOP_CHECK_MS)) ==
                 NATS_TIMEOUT)
            ns = NATS_OK;
        else if (ns == NATS_OK && strcmp(natsMsg_GetSubject(rep), reply) != 0) {
            natsMsg_Destroy(rep); /* the late reply of a request given up */
            rep = NULL;
        } else if (ns == NATS_OK && natsMsg_IsNoResponders(rep)) {
            ns = NATS_NO_RESPONDERS;
        }
    }
    bool ok = ns == NATS_OK &&
              jl_reply_decode(r, natsMsg_GetData(rep), (size_t)natsMsg_GetDataLength(rep)) == JL_OK;
    /* A producer names the aggregate in every acceptance. An empty message (or bytes that
     * happen to parse) decodes as "ok" with every field unset: not a reply to trust with the
     * step, which would then never be sent again. */
    bool odd = ok && r->code == JL_CODE_OK && r->aggregate_id[0] == 0;
    ok = ok && !odd;
    if (!ok && !sent && !gave_up)
        snprintf(why, n, "not sent: %s", natsStatus_GetText(send_ns));
    else if (!ok)
        snprintf(why, n, "%s",
                 odd             ? "a reply accepting the command names no aggregate"
                 : ns == NATS_OK ? "undecodable reply"
                 : !gave_up ? (ns == NATS_TIMEOUT ? "no reply in time" : natsStatus_GetText(ns))
                 : atomic_load(&p->stopping) ? "stopping"
                                             : "let go for a rebuild's switch");
    /* Not sent counts too (a payload over the server's limit, a connection closed for good):
     * such a row holds back every later one, which its row and the log must show. */
    *out_attempt = !ok && !gave_up;
    if (ns != NATS_OK && ns != NATS_TIMEOUT && ns != NATS_NO_RESPONDERS && !gave_up)
        sender_close(p, snd); /* made again for the next request */
    natsMsg_Destroy(req);
    natsMsg_Destroy(rep);
    return ok;
}

/* A reply that says "not now": the command was not decided (the producer was shutting down,
 * the event store did not confirm, writers kept racing on the aggregate), or could not be
 * (internal: a history the service cannot read, which needs an operator; final, it would leave
 * a saga waiting for good). Sent again with the same id, it is decided afresh: producers
 * remember only what they stored. */
static bool retryable(jl_code code)
{
    return code == JL_CODE_UNAVAILABLE || code == JL_CODE_CONFLICT || code == JL_CODE_TIMEOUT ||
           code == JL_CODE_INTERNAL;
}

/* What became of a row sent. */
typedef enum sent {
    SENT_FINAL,   /* a final reply, recorded */
    SENT_NOT_NOW, /* "not now" (not decided), recorded: sent again later */
    SENT_FAILED,  /* no reply, or the reply not recorded */
    SENT_LET_GO,  /* its reply no longer waited for: a rebuild's switch takes outbox_mu */
} sent;

/* Whether to log the @p attempt th attempt of a row at warn (the first ones, then ever more
 * rarely: 1, 2, 4, 8, ...), so that a row retried for hours does not flood the log. */
static jl_log_level retry_level(int64_t attempt)
{
    return attempt > 0 && (attempt & (attempt - 1)) == 0 ? JL_LOG_WARN : JL_LOG_DEBUG;
}

/* Whether row @p w still waits for a reply: one withdrawn (its order cancelled) since the
 * batch it came in was read is not sent. True when unknown (it is then sent: the producer
 * answers a repeated id once). */
static bool still_pending(jl_db *db, const row *w)
{
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT replied_at_ns IS NULL FROM jl_outbox WHERE id = ?");
    if (st == NULL)
        return true;
    sqlite3_bind_int64(st, 1, w->id);
    bool pending = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 0;
    sqlite3_reset(st);
    return pending;
}

/* How many rows after @p w wait for a reply (-1: unknown). */
static int64_t rows_behind(jl_db *db, const row *w)
{
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT count(*) FROM jl_outbox WHERE replied_at_ns IS "
                                      "NULL AND id > ?");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, w->id);
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    return n;
}

/* Log that row @p w (@p id, escaped) got no reply (@p why): each later row waits for it (see
 * the top of this file), so while it blocks an operator must hear of it, with how long it has
 * waited and how many wait behind it; its first attempts (@p attempt: a request went), then
 * once a minute, at warn. */
static void no_reply_log(jl_db *db, sender *snd, const row *w, bool attempt, const char *id,
                         const char *why)
{
    int64_t now = jl__mono_ns();
    bool warn = attempt && (retry_level(w->attempts + 1) == JL_LOG_WARN ||
                            now - snd->warned_ns >= OUTBOX_BLOCKED_WARN_NS);
    if (!warn && !jl_log_enabled(JL_LOG_DEBUG))
        return;
    if (warn)
        snd->warned_ns = now;
    int64_t waited = w->created_ns > 0 ? (jl__now_ns() - w->created_ns) / 1000000000LL : 0;
    jl_log(warn ? JL_LOG_WARN : JL_LOG_DEBUG, "outbox: no reply, will retry",
           "\"service\":\"%s\",\"command\":\"%s\",\"command_id\":\"%s\",\"attempt\":%" PRId64
           ",\"waiting_s\":%" PRId64 ",\"rows_behind\":%" PRId64 ",\"error\":\"%s\"",
           w->service, w->command, id, w->attempts + 1, waited < 0 ? 0 : waited, rows_behind(db, w),
           why);
}

/* Send row @p w and record its reply in @p db, under outbox_mu. */
static sent send_one(jl_projector *p, sender *snd, jl_db *db, const row *w, jl_reply *r)
{
    char why[128], esc[512], id[300];
    bool attempt = false;
    jl_reply_reset(r);
    jl_log_str(id, sizeof(id), w->command_id);
    if (!still_pending(db, w))
        return SENT_FINAL; /* withdrawn meanwhile */
    jl__fault("outbox.before_send");
    if (!send_row(p, snd, w, r, why, sizeof(why), &attempt)) {
        no_reply_log(db, snd, w, attempt, id, why);
        /* Counted, so that a command no producer answers shows in its row. */
        sqlite3_stmt *st =
            attempt ? jl_db_stmt(db, "UPDATE jl_outbox SET reply_code = NULL, reply_message = ?, "
                                     "attempts = attempts + 1 WHERE id = ? AND "
                                     "replied_at_ns IS NULL")
                    : NULL;
        if (st != NULL) {
            char msg[160];
            snprintf(msg, sizeof(msg), "no reply: %s", why);
            sqlite3_bind_text(st, 1, msg, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, w->id);
            (void)jl_db_step_done(db, st); /* only a count: the row is sent again anyway */
        }
        return atomic_load(&p->outbox_yield) && !atomic_load(&p->stopping) ? SENT_LET_GO
                                                                           : SENT_FAILED;
    }
    jl__fault("outbox.after_send");
    bool again = retryable(r->code), recorded = false, handler_failed = false;
    /* A refusal for good and what the process manager queues for it: one transaction. */
    bool refused = !again && r->code != JL_CODE_OK && p->def->on_refused != NULL;
    bool began = refused && jl_db_begin(db, true) == JL_OK;
    char herr[256] = "";
    /* A "not now" leaves a row withdrawn meanwhile as it is (not to be sent again); a final
     * reply is recorded over the withdrawal: it tells what the command did. */
    static const char record_sql[] =
        "UPDATE jl_outbox SET replied_at_ns = ?1, reply_code = ?2, reply_message = ?3, "
        "attempts = attempts + 1 WHERE id = ?4 AND (?1 IS NOT NULL OR replied_at_ns IS NULL)";
    sqlite3_stmt *st = refused && !began ? NULL : jl_db_stmt(db, record_sql);
    if (st != NULL) {
        if (again)
            sqlite3_bind_null(st, 1); /* not answered for good: sent again */
        else
            sqlite3_bind_int64(st, 1, jl__now_ns());
        sqlite3_bind_text(st, 2, jl_code_str(r->code), -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, r->message, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, w->id);
        recorded = jl_db_step_done(db, st) == JL_OK;
    }
    if (recorded && began) {
        jl_outbox_refusal f = {.service = w->service,
                               .command = w->command,
                               .command_id = w->command_id,
                               .correlation_id = w->correlation,
                               .order_key = w->key,
                               .reply = r};
        jl_status hs = p->def->on_refused(db, &f, herr, sizeof(herr));
        if (hs == JL_OK)
            jl__fault("outbox.refusal_handled"); /* compensation queued, not committed */
        handler_failed = hs != JL_OK;
        recorded = hs == JL_OK && jl_db_commit(db) == JL_OK;
        snd->refusal_handled |= recorded;
    }
    if (began && !recorded)
        jl_db_rollback(db);
    if (!recorded) {
        /* Sent again later (the rows behind must not overtake it); the producer answers the
         * repeated id with this same reply, or decides a refused command afresh. */
        jl_log(JL_LOG_ERROR, "outbox: cannot record the reply, will send the command again",
               "\"command\":\"%s\",\"command_id\":\"%s\",\"code\":\"%s\",\"error\":\"%s\"",
               w->command, id, jl_code_str(r->code),
               jl_log_str(esc, sizeof(esc), herr[0] ? herr : jl_db_errmsg(db)));
        /* A refusal the process manager cannot take (a damaged row of its own, say) would come
         * back at every attempt: held with its order's later rows only, as a "not now" is, so
         * that other orders go on. The database failing holds every row (nothing is
         * recorded). */
        return handler_failed && w->key[0] != 0 ? SENT_NOT_NOW : SENT_FAILED;
    }
    if (again && w->key[0] == 0) {
        /* It holds back every later row, as one without a reply does: said the same way. */
        char said[sizeof(r->message) + 32];
        snprintf(said, sizeof(said), "answered %s: %s", jl_code_str(r->code), r->message);
        no_reply_log(db, snd, w, true, id, jl_log_str(esc, sizeof(esc), said));
        return SENT_NOT_NOW;
    }
    if (again) {
        jl_log(retry_level(w->attempts + 1), "outbox: command not decided, will retry",
               "\"command\":\"%s\",\"command_id\":\"%s\",\"code\":\"%s\",\"attempt\":%" PRId64,
               w->command, id, jl_code_str(r->code), w->attempts + 1);
        return SENT_NOT_NOW;
    }
    if (r->code != JL_CODE_OK)
        jl_log(JL_LOG_WARN, "outbox: command refused",
               "\"command\":\"%s\",\"command_id\":\"%s\",\"code\":\"%s\",\"error\":\"%s\"",
               w->command, id, jl_code_str(r->code), jl_log_str(esc, sizeof(esc), r->message));
    return SENT_FINAL;
}

/* How a pass ended: every row answered; more to send at once; rows of some keys held back
 * "not now" (each waits its own backoff, the rest were sent); stopped at a row without a reply
 * (or an unreadable outbox), which every later row waits for. */
typedef enum pass { PASS_DONE, PASS_MORE, PASS_HELD, PASS_STOPPED } pass;

/* The order keys held back: an open-addressing set of copies, as large as it needs to be (a
 * backlog may hold back thousands of orders; a cap would stop a pass at the rows that make room
 * for them). Each key waits its own backoff, across passes: a wake by a commit re-sends only
 * the keys whose time has come, not every one held. */
typedef struct held_entry {
    char key[JL_OUTBOX_KEY_MAX + 1]; /* "" = free slot (a held key is never "") */
    int64_t until_ns;                /* jl__mono_ns(): not sent again before */
    int backoff_ms;                  /* the last wait, doubled up to held_max_ms() */
} held_entry;

typedef struct held_set {
    held_entry *e;
    size_t cap, n; /* cap: 0 or a power of two */
} held_set;

static size_t held_slot(const held_set *h, const char *key)
{
    size_t i = (size_t)jl__fnv1a64_str(key) & (h->cap - 1);
    while (h->e[i].key[0] != 0 && strcmp(h->e[i].key, key) != 0)
        i = (i + 1) & (h->cap - 1);
    return i;
}

static const held_entry *held_find(const held_set *h, const char *key)
{
    if (h->cap == 0)
        return NULL;
    const held_entry *e = &h->e[held_slot(h, key)];
    return e->key[0] != 0 ? e : NULL;
}

/* Hold @p key until @p until_ns; false when out of memory. */
static bool held_put(held_set *h, const char *key, int64_t until_ns, int backoff_ms)
{
    if (2 * (h->n + 1) > h->cap) {
        held_set bigger = {.cap = h->cap ? 2 * h->cap : 64};
        if ((bigger.e = calloc(bigger.cap, sizeof(held_entry))) == NULL)
            return false;
        for (size_t i = 0; i < h->cap; i++) {
            if (h->e[i].key[0] != 0)
                bigger.e[held_slot(&bigger, h->e[i].key)] = h->e[i];
        }
        bigger.n = h->n;
        free(h->e);
        *h = bigger;
    }
    held_entry *e = &h->e[held_slot(h, key)];
    if (e->key[0] == 0) {
        snprintf(e->key, sizeof(e->key), "%s", key);
        h->n++;
    }
    e->until_ns = until_ns;
    e->backoff_ms = backoff_ms;
    return true;
}

/* The longest backoff of a held key while @p h holds as many. */
static int held_max_ms(const held_set *h)
{
    size_t spread = h->n * 1000 / OUTBOX_RETRIES_PER_S;
    return spread > OUTBOX_BACKOFF_MS ? (spread > INT32_MAX / 2 ? INT32_MAX / 2 : (int)spread)
                                      : OUTBOX_BACKOFF_MS;
}

/* Whether a key of @p h is due at @p now (or none is held). */
static bool held_any_due(const held_set *h, int64_t now)
{
    for (size_t i = 0; i < h->cap; i++) {
        if (h->e[i].key[0] != 0 && h->e[i].until_ns <= now)
            return true;
    }
    return h->n == 0;
}

/* Read up to OUTBOX_BATCH rows without a final reply after row @p after, in order. Returns the
 * count, -1 when they cannot be read (logged). */
static int read_pending(jl_db *db, int64_t after, row rows[OUTBOX_BATCH])
{
    int n = 0;
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT id, service, command, command_id, correlation_id, "
                                      "causation_id, body, order_key, attempts, created_at_ns "
                                      "FROM jl_outbox WHERE replied_at_ns IS NULL AND id > ? "
                                      "ORDER BY id LIMIT ?");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int(st, 2, OUTBOX_BATCH);
    int rc = SQLITE_DONE;
    while (n < OUTBOX_BATCH && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        row *w = &rows[n];
        w->id = sqlite3_column_int64(st, 0);
        /* NOT NULL columns: NULL is out of memory, and "(null)" must not go out as an id. */
        bool texts = true;
        for (int k = 1; k <= 7; k++)
            texts = texts && (k == 6 || sqlite3_column_text(st, k) != NULL);
        if (!texts) {
            rc = SQLITE_NOMEM;
            break;
        }
        snprintf(w->service, sizeof(w->service), "%s", sqlite3_column_text(st, 1));
        snprintf(w->command, sizeof(w->command), "%s", sqlite3_column_text(st, 2));
        snprintf(w->command_id, sizeof(w->command_id), "%s", sqlite3_column_text(st, 3));
        snprintf(w->correlation, sizeof(w->correlation), "%s", sqlite3_column_text(st, 4));
        snprintf(w->causation, sizeof(w->causation), "%s", sqlite3_column_text(st, 5));
        snprintf(w->key, sizeof(w->key), "%s", sqlite3_column_text(st, 7));
        w->attempts = sqlite3_column_int64(st, 8);
        w->created_ns = sqlite3_column_int64(st, 9);
        w->len = sqlite3_column_bytes(st, 6);
        w->body = malloc((size_t)w->len + 1);
        if (w->body == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        const void *blob = sqlite3_column_blob(st, 6); /* an empty blob reads as NULL */
        if (w->len > 0 && blob == NULL) {
            free(w->body);
            rc = SQLITE_NOMEM;
            break;
        }
        if (w->len > 0)
            memcpy(w->body, blob, (size_t)w->len);
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        /* Not "nothing to send": the rows are sent after a backoff, in order, once readable. */
        char esc[512];
        jl_db_fail(db, rc, "reading the outbox");
        jl_log(JL_LOG_WARN, "outbox: cannot read the rows to send, will retry", "\"error\":\"%s\"",
               jl_log_str(esc, sizeof(esc), jl_db_errmsg(db)));
        for (int i = 0; i < n; i++)
            free(rows[i].body);
        return -1;
    }
    return n;
}

/* One pass over the rows without a final reply, in order, after row *io_from: PASS_MORE when
 * a full batch went (more may wait) or a rebuild switched files, PASS_HELD when rows of some
 * keys were answered (or are still held) "not now", PASS_STOPPED when one got no reply (both
 * sent again after a backoff). Past a keyed row answered "not now" the pass goes on, batch
 * after batch, with the rows of other keys (see the top of this file). *io_from receives the
 * last row the pass settled (answered, or held with its key). */
static pass send_pending(jl_projector *p, sender *snd, held_set *held, jl_db *db, uint64_t gen,
                         int64_t *io_from)
{
    row rows[OUTBOX_BATCH];
    held_set next = {0}; /* the keys held after this pass */
    int n = 0;
    /* From *io_from on (0: every row): a pass woken by a commit while every row before it
     * is held "not now" reads only the rows after (thousands of held orders are not read
     * again per commit); those held keep their wait, and so do their later rows. */
    bool incremental = *io_from > 0;
    int64_t from = *io_from, after = from, settled = from, now = jl__mono_ns();
    /* failed: some row was not answered for good; no_reply: the pass stopped at one that got no
     * reply (or could not be read or recorded), which every later row waits for. */
    bool failed = incremental, no_reply = false, stop = false, moved = false, oom = false;
    jl_reply r;
    jl_reply_init(&r);
    do {
        if ((n = read_pending(db, after, rows)) < 0) {
            failed = no_reply = true;
            break;
        }
        for (int i = 0; i < n && !stop && !atomic_load(&p->stopping); i++) {
            const row *w = &rows[i];
            after = w->id;
            if (w->key[0] == 0 && failed) {
                stop = true; /* a barrier waits for the rows before it */
                break;
            }
            settled = w->id;
            const held_entry *was = w->key[0] != 0 ? held_find(held, w->key) : NULL;
            if (w->key[0] != 0 && held_find(&next, w->key) != NULL)
                continue; /* held in this pass: its later rows wait */
            if (was != NULL && (was->until_ns > now || incremental)) {
                /* Its time has not come (or its earlier row, before this pass, is to go
                 * first): held on, not sent. */
                oom = !held_put(&next, w->key, was->until_ns, was->backoff_ms);
                failed = true;
                stop = no_reply = oom;
                continue;
            }
            while (atomic_load(&p->outbox_yield) && !atomic_load(&p->stopping))
                nats_Sleep(5); /* a rebuild's switch is about to take outbox_mu: let it */
            pthread_mutex_lock(&p->outbox_mu);
            moved = p->outbox_gen != gen;
            sent got = moved ? SENT_FAILED : send_one(p, snd, db, w, &r);
            pthread_mutex_unlock(&p->outbox_mu);
            int most = held_max_ms(held);
            int backoff =
                was != NULL ? (was->backoff_ms > most / 2 ? most : was->backoff_ms * 2) : 200;
            if (moved || got == SENT_LET_GO) {
                /* A rebuild switched files (or is about to): read the rows again from the new
                 * one at once, not after a backoff for a row without a reply. */
                moved = true;
                stop = true;
            } else if (got == SENT_NOT_NOW && w->key[0] != 0 &&
                       held_put(&next, w->key, jl__mono_ns() + backoff * 1000000LL, backoff)) {
                failed = true;
            } else if (got != SENT_FINAL) {
                failed = no_reply = true;
                stop = true;
            }
        }
        for (int i = 0; i < n; i++)
            free(rows[i].body);
        /* Without a failure a full batch ends the pass (the loop prunes, then comes back):
         * after one, the rows past the batch are read on now, or the held ones would come
         * first again next time and the others never. */
    } while (!stop && failed && n == OUTBOX_BATCH && !atomic_load(&p->stopping));
    jl_reply_cleanup(&r);
    /* Keys the pass did not reach keep their wait (after an incremental pass, all of them:
     * their rows were not read). */
    for (size_t i = 0; !oom && i < held->cap; i++) {
        const held_entry *e = &held->e[i];
        if (e->key[0] != 0 && (e->until_ns > now || incremental) &&
            held_find(&next, e->key) == NULL)
            oom = !held_put(&next, e->key, e->until_ns, e->backoff_ms);
    }
    free(held->e);
    *held = next;
    *io_from = settled;
    if (oom)
        no_reply = true; /* whole passes, backed off, until memory is there again */
    if (incremental)
        jl_log(JL_LOG_DEBUG, "outbox: pass past the held rows",
               "\"from\":%" PRId64 ",\"to\":%" PRId64 ",\"held\":%zu", from, settled, held->n);
    return moved              ? PASS_MORE
           : no_reply         ? PASS_STOPPED
           : failed           ? PASS_HELD
           : n < OUTBOX_BATCH ? PASS_DONE
                              : PASS_MORE;
}

/* Answered rows are history once they are older than the keep time (by default as long as
 * producers remember command ids; after that a row has nothing left to prove): delete them,
 * oldest first, in transactions of PRUNE_CHUNK rows so that apply never waits long. Rows still
 * waiting (a reservation held back "not now", say) stay, and do not keep the answered rows after
 * them; so do final refusals, which nothing else acts on (an operator does, README). */
static void prune_failed(jl_db *db)
{
    char esc[512];
    jl_log(JL_LOG_WARN, "outbox: cannot delete answered rows, trying again in a minute",
           "\"error\":\"%s\"", jl_log_str(esc, sizeof(esc), jl_db_errmsg(db)));
}

static void prune_answered(jl_projector *p, jl_db *db, uint64_t gen)
{
    int64_t cutoff = jl__now_ns() - p->outbox_keep_ns;
    for (int deleted = PRUNE_CHUNK; deleted == PRUNE_CHUNK && !give_up(p);) {
        /* Each chunk under outbox_mu, as replies are recorded: a rebuild's switch carries the
         * outbox over under it and must find the live file still. It waits one chunk at most
         * (it raises outbox_yield first, which ends the prune; the next one goes on). */
        pthread_mutex_lock(&p->outbox_mu);
        if (p->outbox_gen != gen) {
            pthread_mutex_unlock(&p->outbox_mu);
            return; /* switched: db is the old file */
        }
        /* Through jl_outbox_replied: reads the rows it deletes (and the refusals kept). */
        sqlite3_stmt *st =
            jl_db_stmt(db, "DELETE FROM jl_outbox WHERE id IN (SELECT id FROM jl_outbox WHERE "
                           " " JL_OUTBOX_ANSWERED_SQL " AND replied_at_ns < ? ORDER BY "
                           "replied_at_ns LIMIT ?)");
        bool ok = st != NULL;
        if (ok) {
            sqlite3_bind_int64(st, 1, cutoff);
            sqlite3_bind_int(st, 2, PRUNE_CHUNK);
            ok = jl_db_step_done(db, st) == JL_OK;
        }
        deleted = ok ? sqlite3_changes(jl_db_handle(db)) : 0;
        if (!ok)
            prune_failed(db);
        pthread_mutex_unlock(&p->outbox_mu);
    }
}

static void *sender_thread(void *arg)
{
    jl_projector *p = arg;
    jl_db *db = NULL;
    char path[1024] = "";
    int backoff_ms = 0;
    int64_t pruned_at = 0, open_failed_at = 0;
    int64_t resume = 0; /* where a pass woken by a commit may start (see send_pending) */
    uint64_t resume_gen = 0;
    bool woken = false; /* the last wait ended by a commit, not by its time */
    sender snd = {0};
    held_set held = {0};
    while (!atomic_load(&p->stopping)) {
        /* A commit from now on wakes the wait after this pass: the pass may not see its rows. */
        pthread_mutex_lock(&p->mu);
        p->outbox_wake = false;
        pthread_mutex_unlock(&p->mu);
        /* The live file changes with a rebuild: follow it. */
        pthread_mutex_lock(&p->outbox_mu);
        uint64_t gen = p->outbox_gen;
        pthread_mutex_unlock(&p->outbox_mu);
        /* Opened under the lock: a switch can then not remove the file in between (opening
         * it would create an empty one). */
        pthread_rwlock_rdlock(&p->switch_lock);
        bool moved = strcmp(path, p->db_path) != 0;
        char err[512];
        jl_status opened = JL_OK;
        if (moved) {
            snprintf(path, sizeof(path), "%s", p->db_path);
            jl_db_close(db);
            db = NULL;
            opened = jl_db_open(&db, path, false, err, sizeof(err));
        }
        pthread_rwlock_unlock(&p->switch_lock);
        if (opened != JL_OK) {
            /* At error once a minute while it lasts: nothing is sent meanwhile. */
            int64_t now = jl__mono_ns();
            bool loud = open_failed_at == 0 || now - open_failed_at >= 60 * 1000000000LL;
            if (loud)
                open_failed_at = now;
            char esc[700];
            jl_log(loud ? JL_LOG_ERROR : JL_LOG_DEBUG, "outbox: cannot open the read model",
                   "\"error\":\"%s\"", jl_log_str(esc, sizeof(esc), err));
            path[0] = 0;
        } else if (moved) {
            open_failed_at = 0;
        }
        int64_t from = 0;
        if (woken && resume > 0 && resume_gen == gen && !moved &&
            !held_any_due(&held, jl__mono_ns()))
            from = resume;
        pass got = db != NULL ? send_pending(p, &snd, &held, db, gen, &from) : PASS_STOPPED;
        bool held_pass = got == PASS_HELD;
        /* A refusal's compensation (a CancelOrder) was queued by the sender itself, which no
         * commit of the apply thread wakes for: a pass more at once, not after the wait. Past
         * rows held "not now" it reads on from where this pass ended (the compensation is
         * the newest row), as a pass woken by a commit does, not every held row again. */
        if (snd.refusal_handled && got != PASS_STOPPED)
            got = PASS_MORE;
        snd.refusal_handled = false;
        resume = held_pass ? from : 0;
        resume_gen = gen;
        int64_t t = jl__mono_ns(); /* an interval: not the wall clock */
        if (db != NULL && p->outbox_keep_ns > 0 &&
            (pruned_at == 0 ||
             t - pruned_at >=
                 (p->outbox_keep_ns < PRUNE_EVERY_NS ? p->outbox_keep_ns : PRUNE_EVERY_NS))) {
            pruned_at = t;
            prune_answered(p, db, gen);
        }
        if (got == PASS_MORE && !atomic_load(&p->stopping)) {
            backoff_ms = 0;
            woken = held_pass; /* only a held pass leaves a resume point (above) */
            continue;          /* a backlog: the next batch at once */
        }
        /*
         * Stopped at a row without a reply: nothing can go before it is sent again, so its
         * backoff is waited out whatever commits meanwhile (a wake per commit would send it
         * again per commit). Otherwise a commit wakes the sender at once (its rows may go);
         * the keys held "not now" are sent again at the first pass past their own backoff.
         */
        bool stopped = got == PASS_STOPPED;
        int64_t wait_ms = 1000;
        if (got == PASS_DONE) {
            backoff_ms = 0;
        } else {
            /* Passes at these times, not at each held key's own: keys held in one pass stay
             * together, and are sent again in the order they were decided. */
            backoff_ms = backoff_ms ? (backoff_ms * 2 > OUTBOX_BACKOFF_MS ? OUTBOX_BACKOFF_MS
                                                                          : backoff_ms * 2)
                                    : 200;
            wait_ms = backoff_ms;
        }
        pthread_mutex_lock(&p->mu);
        struct timespec until = jl__monotonic_in(wait_ms);
        while (!atomic_load(&p->stopping) && (stopped || !p->outbox_wake) &&
               pthread_cond_timedwait(&p->outbox_cv, &p->mu, &until) != ETIMEDOUT)
            ;
        woken = !stopped && p->outbox_wake;
        pthread_mutex_unlock(&p->mu);
    }
    sender_close(p, &snd);
    free(held.e);
    jl_db_close(db);
    return NULL;
}

jl_status jl__outbox_start(jl_projector *p, char *err, size_t errlen)
{
    int rc = jl__cond_init_monotonic(&p->outbox_cv);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the outbox: %s", strerror(rc));
        return JL_ERR_NOMEM;
    }
    rc = pthread_create(&p->outbox_thread, NULL, sender_thread, p);
    if (rc != 0) {
        pthread_cond_destroy(&p->outbox_cv);
        snprintf(err, errlen, "cannot start the outbox sender thread: %s", strerror(rc));
        return JL_ERR_NOMEM;
    }
    p->has_outbox_thread = true;
    return JL_OK;
}

void jl__outbox_wake(jl_projector *p)
{
    /* Called with p->mu held (after a commit). */
    p->outbox_wake = true;
    pthread_cond_signal(&p->outbox_cv);
}

void jl__outbox_stop(jl_projector *p)
{
    if (!p->has_outbox_thread)
        return;
    pthread_mutex_lock(&p->mu);
    pthread_cond_signal(&p->outbox_cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->outbox_thread, NULL);
    pthread_cond_destroy(&p->outbox_cv);
    p->has_outbox_thread = false;
}

void jl__outbox_lock(jl_projector *p)
{
    atomic_fetch_add(&p->outbox_yield, 1);
    pthread_mutex_lock(&p->outbox_mu);
    atomic_fetch_sub(&p->outbox_yield, 1);
}

/* The columns an operator is shown of a row (see shown_row), and its state, classified by the
 * same conditions as the listing's (JL_OUTBOX_*_SQL): an index into shown_states. */
#define OUTBOX_SHOWN                                                                               \
    "id, command_id, service, command, order_key, attempts, reply_code, reply_message, "           \
    "created_at_ns, replied_at_ns, correlation_id, CASE WHEN " JL_OUTBOX_WAITING_SQL " THEN 0 "    \
    "WHEN " JL_OUTBOX_REFUSED_SQL " THEN 1 WHEN reply_code = 'ok' THEN 2 ELSE 3 END"
static const char *const shown_states[] = {"waiting", "refused", "ok", "withdrawn"};

/* Fill @p o from the OUTBOX_SHOWN columns of @p st's row; false when out of memory. Its strings
 * are freed by free_shown() (state is a constant). */
static bool shown_row(sqlite3_stmt *st, Jetledger__OutboxRow *o)
{
    jetledger__outbox_row__init(o);
    o->id = sqlite3_column_int64(st, 0);
    o->command_id = jl_db_text_dup(st, 1);
    o->service = jl_db_text_dup(st, 2);
    o->command = jl_db_text_dup(st, 3);
    o->order_key = jl_db_text_dup(st, 4);
    o->attempts = sqlite3_column_int64(st, 5);
    o->reply_code = jl_db_text_dup(st, 6);
    o->reply_message = jl_db_text_dup(st, 7);
    o->created_at_ns = sqlite3_column_int64(st, 8);
    o->replied_at_ns = sqlite3_column_int64(st, 9); /* NULL: 0 */
    o->correlation_id = jl_db_text_dup(st, 10);
    o->state = (char *)shown_states[sqlite3_column_int(st, 11) & 3];
    return o->command_id && o->service && o->command && o->order_key && o->reply_code &&
           o->reply_message && o->correlation_id;
}

static void free_shown(Jetledger__OutboxRow *o)
{
    free(o->command_id);
    free(o->service);
    free(o->command);
    free(o->order_key);
    free(o->reply_code);
    free(o->reply_message);
    free(o->correlation_id);
}

/* How long a dismissal waits for the writer (a batch being applied), then for SQLite's write
 * lock. It is answered on the instance's admin subscription, which also answers other
 * instances' Hello within a second (twins.c): it must not hold that up. */
#define DISMISS_WAIT_MS 400
#define DISMISS_BUSY_MS 200

/* @p r: that @p p has no outbox (false), for a request about it; true when it has one. */
static bool has_outbox(jl_projector *p, jl_reply *r)
{
    if (!p->def->outbox)
        jl_reply_error(r, JL_CODE_INVALID, "%s is not a process manager: it has no outbox",
                       p->def->name);
    return p->def->outbox;
}

/* Step @p st (OUTBOX_SHOWN columns) into @p out's rows, up to @p limit in all; its status. */
static jl_status shown_rows(jl_db *qdb, sqlite3_stmt *st, Jetledger__Outbox *out,
                            Jetledger__OutboxRow *rows, unsigned limit)
{
    jl_status s = JL_OK;
    int rc = SQLITE_DONE;
    while (out->n_rows < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        out->rows[out->n_rows] = &rows[out->n_rows];
        if (!shown_row(st, out->rows[out->n_rows++])) {
            s = JL_ERR_NOMEM;
            break;
        }
    }
    if (s == JL_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        s = jl_db_fail(qdb, rc, "reading the outbox");
    sqlite3_reset(st);
    return s;
}

void jl__outbox_list(jl_projector *p, bool all, unsigned limit, jl_reply *r)
{
    if (!has_outbox(p, r))
        return;
    Jetledger__Outbox out = JETLEDGER__OUTBOX__INIT;
    Jetledger__OutboxRow *rows = calloc(limit ? limit : 1, sizeof(*rows));
    out.rows = calloc(limit ? limit : 1, sizeof(*out.rows));
    jl_status s = rows != NULL && out.rows != NULL ? JL_OK : JL_ERR_NOMEM;
    jl_db *qdb = jl__proj_read_begin(p, &s);
    /* Through the partial indexes of the rows waiting and refused, never a scan of the week of
     * answered rows (this holds the queries' lock, on the thread that answers Hello): those
     * are counted, from their own index, and listed only when asked for. INDEXED BY: the
     * planner would otherwise take the index of every answered row for the refused ones. */
    sqlite3_stmt *st =
        s == JL_OK
            ? jl_db_stmt(qdb, "SELECT (SELECT count(*) FROM jl_outbox INDEXED BY "
                              "jl_outbox_unsent WHERE " JL_OUTBOX_WAITING_SQL "), (SELECT "
                              "count(*) FROM jl_outbox INDEXED BY jl_outbox_refused WHERE "
                              " " JL_OUTBOX_REFUSED_SQL "), CASE WHEN ?1 THEN (SELECT count(*) "
                              "FROM jl_outbox INDEXED BY jl_outbox_replied WHERE replied_at_ns "
                              "IS NOT NULL) ELSE 0 END")
            : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_int(st, 1, all);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            out.waiting = (uint64_t)sqlite3_column_int64(st, 0);
            out.refused = (uint64_t)sqlite3_column_int64(st, 1);
            out.answered = all ? (uint64_t)sqlite3_column_int64(st, 2) - out.refused : 0;
        } else {
            s = jl_db_fail(qdb, rc, "cannot count the outbox rows");
        }
        sqlite3_reset(st);
    }
    /* Those still to deal with, in sending order (a merge of the two indexes)... */
    st = s == JL_OK ? jl_db_stmt(qdb, "SELECT " OUTBOX_SHOWN " FROM jl_outbox INDEXED BY "
                                      "jl_outbox_unsent WHERE " JL_OUTBOX_WAITING_SQL " UNION "
                                      "ALL SELECT " OUTBOX_SHOWN " FROM jl_outbox INDEXED BY "
                                      "jl_outbox_refused WHERE " JL_OUTBOX_REFUSED_SQL
                                      " ORDER BY id LIMIT ?")
                    : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_int(st, 1, (int)limit);
        s = shown_rows(qdb, st, &out, rows, limit);
    }
    /* ...then, asked for, the answered ones, oldest first, as many as there is room for. */
    st = s == JL_OK && all && out.n_rows < limit
             ? jl_db_stmt(qdb, "SELECT " OUTBOX_SHOWN " FROM jl_outbox WHERE "
                               " " JL_OUTBOX_ANSWERED_SQL " ORDER BY id LIMIT ?")
             : NULL;
    if (s == JL_OK && all && out.n_rows < limit && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_int(st, 1, (int)(limit - out.n_rows));
        s = shown_rows(qdb, st, &out, rows, limit);
    }
    jl__proj_read_end(p, qdb, s, "cannot read the outbox", r);
    out.instance = p->instance;
    if (s == JL_OK)
        (void)jl_reply_set_result(r, &out.base); /* else it says why */
    for (size_t i = 0; i < out.n_rows; i++)
        free_shown(&rows[i]);
    free(rows);
    free(out.rows);
}

void jl__outbox_dismiss(jl_projector *p, const char *command_id, jl_reply *r)
{
    if (!jl_valid_id(command_id)) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "command_id must be 1 to %d printable ASCII characters without spaces",
                       JL_MAX_ID_LEN);
        return;
    }
    if (!has_outbox(p, r))
        return;
    /* Through the live writer, under apply_mu: a rebuild's switch carries the outbox over to its
     * new file under it too, so the row is deleted from the file that stays. Not under
     * outbox_mu: the sender never touches a refused row, and taking it would have the sender
     * let go of the command it is waiting on. timedlock reads the wall clock: a step of it
     * changes this wait only. */
    struct timespec until = jl__realtime_in(DISMISS_WAIT_MS);
    if (pthread_mutex_timedlock(&p->apply_mu, &until) != 0) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "the read model is busy (applying a batch, or a rebuild finishing); try "
                       "again");
        return;
    }
    jl_db *db = p->db;
    sqlite3_busy_timeout(jl_db_handle(db), DISMISS_BUSY_MS);
    Jetledger__OutboxRow o = JETLEDGER__OUTBOX_ROW__INIT;
    bool found = false;
    jl_status s = jl_db_begin(db, true);
    sqlite3_stmt *st =
        s == JL_OK ? jl_db_stmt(db, "SELECT " OUTBOX_SHOWN " FROM jl_outbox WHERE command_id = ?")
                   : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_text(st, 1, command_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        found = rc == SQLITE_ROW;
        if (found && !shown_row(st, &o))
            s = JL_ERR_NOMEM;
        else if (!found && rc != SQLITE_DONE)
            s = jl_db_fail(db, rc, "reading the outbox");
        sqlite3_reset(st);
    }
    bool refused = s == JL_OK && found && strcmp(o.state, "refused") == 0;
    st = refused ? jl_db_stmt(db, "DELETE FROM jl_outbox WHERE id = ?") : NULL;
    if (refused && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_int64(st, 1, o.id);
        s = jl_db_step_done(db, st);
    }
    if (s == JL_OK && refused)
        s = jl_db_commit(db);
    if (s != JL_OK || !refused)
        jl_db_rollback(db);
    if (s != JL_OK)
        jl_reply_error(r, jl__proj_failure_code(s), "cannot dismiss the outbox row: %s",
                       s == JL_ERR_NOMEM ? "out of memory" : jl_db_errmsg(db));
    sqlite3_busy_timeout(jl_db_handle(db), JL_DB_BUSY_MS);
    pthread_mutex_unlock(&p->apply_mu);
    char id[300];
    if (s == JL_OK && !found) {
        jl_reply_error(r, JL_CODE_NOT_FOUND, "no outbox row has command id '%s'", command_id);
    } else if (s == JL_OK && !refused) {
        jl_reply_error(r, JL_CODE_RULE_VIOLATION,
                       "command '%s' was not refused: it is %s (%s); only a command refused for "
                       "good is dismissed",
                       command_id, o.state,
                       strcmp(o.state, "waiting") == 0 ? "it is still to be sent or answered"
                                                       : "it goes by itself after --outbox-keep");
    } else if (s == JL_OK) {
        jl_log(JL_LOG_INFO, "outbox: refused command dismissed",
               "\"command\":\"%s\",\"command_id\":\"%s\",\"code\":\"%s\"", o.command,
               jl_log_str(id, sizeof(id), command_id), o.reply_code);
        (void)jl_reply_set_result(r, &o.base); /* else it says why */
    }
    if (found) /* else its strings are the constant empty one */
        free_shown(&o);
}

jl_status jl__outbox_carry_over(jl_db *to, const char *from_path, char *err, size_t errlen)
{
    /* The outbox is the state of sending, not of the projection: a rebuilt file takes the live
     * one's (both stand at the same checkpoints, so the same rows, with what was replied). */
    sqlite3_stmt *st = jl_db_stmt(to, "ATTACH DATABASE ? AS jl_live");
    jl_status s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, from_path, -1, SQLITE_STATIC);
        s = jl_db_step_done(to, st);
    }
    if (s == JL_OK) {
        /* Columns by name: a file's columns are in the order their versions added them. */
        s = jl_db_exec(to,
                       "BEGIN IMMEDIATE; DELETE FROM main.jl_outbox; INSERT INTO main.jl_outbox "
                       "(" OUTBOX_COLUMNS ") SELECT " OUTBOX_COLUMNS " FROM jl_live.jl_outbox; "
                       "COMMIT;");
        if (s != JL_OK)
            jl_db_rollback(to);
    }
    if (s != JL_OK)
        snprintf(err, errlen, "cannot carry the outbox over: %s; the live read model is unchanged",
                 jl_db_errmsg(to));
    /* Left attached, the old file would stay open under the connection that becomes the live
     * writer, after the switch has removed it. */
    if (s == JL_OK && (s = jl_db_exec(to, "DETACH DATABASE jl_live")) != JL_OK)
        snprintf(err, errlen,
                 "cannot detach the live file after carrying the outbox over: %s; the live read "
                 "model is unchanged",
                 jl_db_errmsg(to));
    else if (s != JL_OK)
        (void)jl_db_exec(to, "DETACH DATABASE jl_live"); /* the failure said is the copy's */
    return s;
}
