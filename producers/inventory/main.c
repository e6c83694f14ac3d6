/*
 * The inventory service: answers inventory.cmd.* and appends to the INVENTORY stream.
 * Its rules live in domain.c, its definition in service.c; the rest is the jetledger runtime.
 */
#include "jetledger/app.h"

#include "service.h"

int main(int argc, char **argv)
{
    return jl_app_run_producer(&inventory_service, argc, argv);
}
