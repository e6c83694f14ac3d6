/*
 * The order_summary projector: builds <data-dir>/order_summary.db from the ORDERS stream and
 * answers order_summary.query.GetOrder / ListOrders. The projection is in projection.c.
 */
#include "jetledger/app.h"

#include "projection.h"

int main(int argc, char **argv)
{
    return jl_app_run_projector(&order_summary_projector, argc, argv);
}
