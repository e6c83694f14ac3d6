/* The orders service as the jetledger runtime sees it: its commands, events and rules. */
#include "service.h"

#include "domain.h"

static const jl_command_def commands[] = {
    {&orders__create_order__descriptor, "order_id", true},
    {&orders__add_item__descriptor, "order_id", false},
    {&orders__remove_item__descriptor, "order_id", false},
    {&orders__place_order__descriptor, "order_id", false},
    {&orders__cancel_order__descriptor, "order_id", false},
    {&orders__confirm_order__descriptor, "order_id", false},
};

static const ProtobufCMessageDescriptor *const events[] = {
    &orders__order_created__descriptor,   &orders__item_added__descriptor,
    &orders__item_removed__descriptor,    &orders__order_placed__descriptor,
    &orders__order_cancelled__descriptor, &orders__order_confirmed__descriptor,
};

const jl_service_def orders_service = {
    .name = "orders",
    .stream = "ORDERS",
    .aggregate_type = "order",
    .schema_version = 1,
    .state_size = sizeof(orders_state),
    .state_init = orders_state_init,
    .evolve = orders_evolve,
    .decide = orders_decide,
    .commands = commands,
    .n_commands = JL_COUNT(commands),
    .events = JL_TYPES(events),
    .state_type = &orders__order_state__descriptor,
    .state_pack = orders_state_pack,
    .state_unpack = orders_state_unpack,
    .state_version = 1,
};
