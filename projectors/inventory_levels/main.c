/*
 * The inventory_levels projector: builds <data-dir>/inventory_levels.db from the INVENTORY
 * stream and answers inventory_levels.query.GetStock / ListLowStock. The projection is in
 * projection.c.
 */
#include "jetledger/app.h"

#include "projection.h"

int main(int argc, char **argv)
{
    return jl_app_run_projector(&inventory_levels_projector, argc, argv);
}
