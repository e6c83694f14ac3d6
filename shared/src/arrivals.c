/* When a request delivered now had already arrived: see arrivals.h. */
#include "arrivals.h"

int64_t jl__arrivals_note(jl__arrivals *a, int64_t now_ns, uint64_t queued)
{
    uint64_t k = ++a->delivered;
    /* Marks that did not count this delivery (it came after them) say nothing of it. */
    while (a->n > 0 && a->upto[a->head] < k) {
        a->head = (a->head + 1) % JL_ARRIVAL_MARKS;
        a->n--;
    }
    int64_t arrived = a->n > 0 && a->at_ns[a->head] < now_ns ? a->at_ns[a->head] : now_ns;
    if (queued == 0 || a->n == JL_ARRIVAL_MARKS)
        return arrived; /* full: later deliveries are taken for younger, never older */
    size_t last = (a->head + a->n + JL_ARRIVAL_MARKS - 1) % JL_ARRIVAL_MARKS;
    if (a->n == 0 ||
        (now_ns - a->at_ns[last] >= JL_ARRIVAL_MARK_NS && k + queued > a->upto[last])) {
        size_t at = (a->head + a->n) % JL_ARRIVAL_MARKS;
        a->at_ns[at] = now_ns;
        a->upto[at] = k + queued;
        a->n++;
    }
    return arrived;
}
