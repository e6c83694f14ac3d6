/* The inventory service as the jetledger runtime sees it: its commands, events and rules. */
#include "service.h"

#include "domain.h"

/* Every command names its warehouse; empty means the one warehouse (default_aggregate_id). */
static const jl_command_def commands[] = {
    {&inventory__register_product__descriptor, "warehouse_id", false},
    {&inventory__restock__descriptor, "warehouse_id", false},
    {&inventory__reserve_stock__descriptor, "warehouse_id", false},
    {&inventory__release_reservation__descriptor, "warehouse_id", false},
    {&inventory__commit_reservation__descriptor, "warehouse_id", false},
};

static const ProtobufCMessageDescriptor *const events[] = {
    &inventory__product_registered__descriptor,   &inventory__restocked__descriptor,
    &inventory__stock_reserved__descriptor,       &inventory__reservation_rejected__descriptor,
    &inventory__reservation_released__descriptor, &inventory__reservation_committed__descriptor,
};

const jl_service_def inventory_service = {
    .name = "inventory",
    .stream = "INVENTORY",
    .aggregate_type = "warehouse",
    .schema_version = 1,
    .state_size = sizeof(inventory_state),
    .state_init = inventory_state_init,
    .evolve = inventory_evolve,
    .decide = inventory_decide,
    .commands = commands,
    .n_commands = JL_COUNT(commands),
    .events = JL_TYPES(events),
    .state_type = &inventory__warehouse_state__descriptor,
    .state_pack = inventory_state_pack,
    .state_unpack = inventory_state_unpack,
    .state_version = 1,
    .default_aggregate_id = INVENTORY_WAREHOUSE_ID,
};
