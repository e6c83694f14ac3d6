/*
 * The inventory_levels projection: per sku its name and its on-hand, reserved and available
 * units, and the queries GetStock and ListLowStock (schemas/inventory/inventory.proto). Shared
 * by main() and tests.
 */
#ifndef JETLEDGER_INVENTORY_LEVELS_PROJECTION_H
#define JETLEDGER_INVENTORY_LEVELS_PROJECTION_H

#include "jetledger/projector.h"

/** ListLowStock: skus with fewer available units than this when the query gives 0. */
#define INVENTORY_LEVELS_DEFAULT_THRESHOLD 10
/** Rows per ListLowStock page: default and maximum. */
#define INVENTORY_LEVELS_DEFAULT_LIMIT 50
#define INVENTORY_LEVELS_MAX_LIMIT 500
/** Longest sku a query accepts (the inventory service's cap). */
#define INVENTORY_LEVELS_MAX_SKU 64

/**
 * The projector "inventory_levels": stream INVENTORY, filter "inventory.events.>", every
 * inventory event type. Static data.
 */
extern const jl_projector_def inventory_levels_projector;

#endif /* JETLEDGER_INVENTORY_LEVELS_PROJECTION_H */
