/*
 * The fulfilment process manager: consumes ORDERS and INVENTORY, keeps <data-dir>/fulfilment.db
 * (each order's step, and the outbox of the commands it decided), sends those commands to the
 * orders and inventory services and answers fulfilment.query.GetFulfilment / ListFulfilments.
 * The process is in process.c.
 */
#include "jetledger/app.h"

#include "process.h"

int main(int argc, char **argv)
{
    return jl_app_run_projector(&fulfilment_process, argc, argv);
}
