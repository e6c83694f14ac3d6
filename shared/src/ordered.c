/*
 * The ordered pipeline: a ring of slots in push order. head: the next slot to finish; prep: the
 * next slot a worker may take (never behind head); tail: the next free slot. Counters grow
 * forever; a slot is counter % cap. Whoever makes the head ready finishes it and what follows
 * while ready ("pumping"), so finish calls never overlap and keep push order. Unordered, a
 * worker copies the slot it takes out of the ring (head moves up to prep at once) and finishes
 * it itself; finish calls then overlap.
 */
#include "ordered.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "deadline.h"

enum { SLOT_READY = 0, SLOT_NEEDS = 1, SLOT_TAKEN = 2 };

typedef struct slot {
    void *item;
    void *prepared;
    uint64_t tag;
    int64_t pushed_ns; /* CLOCK_MONOTONIC, when jl__ordered_push() was called */
    int state;
} slot;

struct jl__ordered {
    pthread_mutex_t mu;
    pthread_cond_t work;  /* a slot needs preparing, or stop */
    pthread_cond_t space; /* a slot was freed */
    pthread_cond_t idle;  /* nothing waiting and nobody finishing */
    slot *slots;
    size_t cap;
    uint64_t head, prep, tail;
    bool pumping;
    bool stopping;
    bool ordered;  /* false: a worker finishes what it prepared, in any order */
    int finishing; /* workers finishing an item (unordered) */
    int nthreads;
    int started; /* workers that took their index in busy */
    pthread_t *threads;
    /* Per worker: CLOCK_MONOTONIC ns since it has worked on its item without a beat, 0 while
     * it waits for one (see jl__ordered_busy_ms()). */
    _Atomic int64_t *busy;
    jl__ordered_prepare_fn prepare;
    jl__ordered_finish_fn finish;
    void *ctx;
};

/* The calling worker's entry of busy (NULL on any other thread): see jl__ordered_beat(). */
static _Thread_local _Atomic int64_t *my_busy;

void jl__ordered_beat(void)
{
    if (my_busy != NULL && atomic_load_explicit(my_busy, memory_order_relaxed) != 0)
        atomic_store_explicit(my_busy, jl__mono_ns(), memory_order_relaxed);
}

int64_t jl__ordered_busy_ms(jl__ordered *o)
{
    if (o == NULL)
        return 0;
    int64_t now = jl__mono_ns(), most = 0;
    for (int i = 0; i < o->nthreads; i++) {
        int64_t since = atomic_load_explicit(&o->busy[i], memory_order_relaxed);
        if (since != 0 && now - since > most)
            most = now - since;
    }
    return most / 1000000;
}

/* Finish the ready slots at the head, unless another thread is at it. Called with mu held. */
static void pump(jl__ordered *o)
{
    if (o->pumping)
        return;
    o->pumping = true;
    while (o->head < o->tail && o->slots[o->head % o->cap].state == SLOT_READY) {
        slot s = o->slots[o->head % o->cap];
        o->head++;
        pthread_cond_signal(&o->space);
        pthread_mutex_unlock(&o->mu);
        o->finish(o->ctx, s.item, s.prepared, s.tag, s.pushed_ns);
        pthread_mutex_lock(&o->mu);
    }
    o->pumping = false;
    if (o->head == o->tail)
        pthread_cond_broadcast(&o->idle);
}

/* The next slot that needs preparing, or NULL. Called with mu held. */
static slot *next_to_prepare(jl__ordered *o)
{
    if (o->prep < o->head)
        o->prep = o->head;
    while (o->prep < o->tail && o->slots[o->prep % o->cap].state != SLOT_NEEDS)
        o->prep++;
    return o->prep < o->tail ? &o->slots[o->prep % o->cap] : NULL;
}

static void *worker(void *arg)
{
    jl__ordered *o = arg;
    pthread_mutex_lock(&o->mu);
    my_busy = &o->busy[o->started++];
    for (;;) {
        slot *s = next_to_prepare(o);
        if (s == NULL) {
            if (o->stopping)
                break;
            pthread_cond_wait(&o->work, &o->mu);
            continue;
        }
        s->state = SLOT_TAKEN;
        o->prep++;
        void *item = s->item;
        if (!o->ordered) {
            /* Every slot before prep is taken: the ring frees up to there. */
            slot mine = *s;
            o->head = o->prep;
            o->finishing++;
            pthread_cond_signal(&o->space);
            pthread_mutex_unlock(&o->mu);
            atomic_store_explicit(my_busy, jl__mono_ns(), memory_order_relaxed);
            o->finish(o->ctx, item, o->prepare(o->ctx, item), mine.tag, mine.pushed_ns);
            atomic_store_explicit(my_busy, 0, memory_order_relaxed);
            pthread_mutex_lock(&o->mu);
            if (--o->finishing == 0 && o->head == o->tail)
                pthread_cond_broadcast(&o->idle);
            continue;
        }
        pthread_mutex_unlock(&o->mu);
        atomic_store_explicit(my_busy, jl__mono_ns(), memory_order_relaxed);
        void *prepared = o->prepare(o->ctx, item);
        atomic_store_explicit(my_busy, 0, memory_order_relaxed);
        pthread_mutex_lock(&o->mu);
        s->prepared = prepared; /* the slot stays put: head cannot pass a taken slot */
        s->state = SLOT_READY;
        pump(o);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

jl_status jl__ordered_create(jl__ordered **out, int workers, size_t capacity, bool ordered,
                             jl__ordered_prepare_fn prepare, jl__ordered_finish_fn finish,
                             void *ctx)
{
    jl__ordered *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return JL_ERR_NOMEM;
    o->cap = capacity > 0 ? capacity : 1;
    o->slots = calloc(o->cap, sizeof(*o->slots));
    o->threads = calloc(workers > 0 ? (size_t)workers : 1, sizeof(*o->threads));
    o->busy = calloc(workers > 0 ? (size_t)workers : 1, sizeof(*o->busy));
    if (o->slots == NULL || o->threads == NULL || o->busy == NULL) {
        free(o->slots);
        free(o->threads);
        free((void *)o->busy);
        free(o);
        return JL_ERR_NOMEM;
    }
    o->ordered = ordered || workers <= 0;
    o->prepare = prepare;
    o->finish = finish;
    o->ctx = ctx;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->work, NULL);
    pthread_cond_init(&o->space, NULL);
    pthread_cond_init(&o->idle, NULL);
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&o->threads[i], NULL, worker, o) != 0) {
            jl__ordered_destroy(o);
            return JL_ERR_INTERNAL;
        }
        o->nthreads++;
    }
    *out = o;
    return JL_OK;
}

/* Queue @p item (see jl__ordered_push_at); when @p wait is false and no room is left, false
 * and nothing queued. */
static bool push(jl__ordered *o, void *item, uint64_t tag, bool prepare, int64_t at_ns, bool wait)
{
    /* Stamped before any wait for room: that wait is part of the item's time in the queue. */
    int64_t now_ns = jl__mono_ns();
    pthread_mutex_lock(&o->mu);
    while (wait && o->tail - o->head == o->cap)
        pthread_cond_wait(&o->space, &o->mu);
    if (o->tail - o->head == o->cap) {
        pthread_mutex_unlock(&o->mu);
        return false;
    }
    slot *s = &o->slots[o->tail % o->cap];
    s->pushed_ns = at_ns > 0 && at_ns < now_ns ? at_ns : now_ns;
    s->item = item;
    s->prepared = NULL;
    s->tag = tag;
    s->state = (prepare || !o->ordered) && o->nthreads > 0 ? SLOT_NEEDS : SLOT_READY;
    o->tail++;
    if (s->state == SLOT_NEEDS)
        pthread_cond_signal(&o->work);
    else
        pump(o);
    pthread_mutex_unlock(&o->mu);
    return true;
}

void jl__ordered_push(jl__ordered *o, void *item, uint64_t tag, bool prepare)
{
    (void)push(o, item, tag, prepare, 0, true);
}

void jl__ordered_push_at(jl__ordered *o, void *item, uint64_t tag, bool prepare, int64_t at_ns)
{
    (void)push(o, item, tag, prepare, at_ns, true);
}

bool jl__ordered_try_push(jl__ordered *o, void *item, uint64_t tag, bool prepare)
{
    return push(o, item, tag, prepare, 0, false);
}

void jl__ordered_destroy(jl__ordered *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->mu);
    while (o->head != o->tail || o->pumping || o->finishing > 0)
        pthread_cond_wait(&o->idle, &o->mu);
    o->stopping = true;
    pthread_cond_broadcast(&o->work);
    pthread_mutex_unlock(&o->mu);
    for (int i = 0; i < o->nthreads; i++)
        pthread_join(o->threads[i], NULL);
    pthread_cond_destroy(&o->work);
    pthread_cond_destroy(&o->space);
    pthread_cond_destroy(&o->idle);
    pthread_mutex_destroy(&o->mu);
    free(o->slots);
    free(o->threads);
    free((void *)o->busy);
    free(o);
}
