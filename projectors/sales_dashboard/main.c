/*
 * The sales_dashboard projector: builds <data-dir>/sales_dashboard.db from the ORDERS and
 * INVENTORY streams and answers sales_dashboard.query.TopProducts / DailySeries / OrderCounts.
 * The projection is in projection.c.
 */
#include "jetledger/app.h"

#include "projection.h"

int main(int argc, char **argv)
{
    return jl_app_run_projector(&sales_dashboard_projector, argc, argv);
}
