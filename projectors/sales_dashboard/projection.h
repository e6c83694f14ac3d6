/*
 * The sales_dashboard projection: units and revenue of confirmed orders per (day, sku), counts
 * of orders by status and product names, from two streams (ORDERS and INVENTORY), with the
 * queries TopProducts, DailySeries and OrderCounts (schemas/dashboard/dashboard.proto). Shared
 * by main() and tests.
 */
#ifndef JETLEDGER_SALES_DASHBOARD_PROJECTION_H
#define JETLEDGER_SALES_DASHBOARD_PROJECTION_H

#include "jetledger/projector.h"

/** Products per TopProducts answer: default and maximum. */
#define SALES_DASHBOARD_DEFAULT_TOP 10
#define SALES_DASHBOARD_MAX_TOP 500
/** Most points in one DailySeries answer (ten years of days); a wider range is refused. */
#define SALES_DASHBOARD_MAX_DAYS 3660
/** Longest sku a query accepts (the orders and inventory services' cap). */
#define SALES_DASHBOARD_MAX_SKU 64

/**
 * The projector "sales_dashboard": sources ORDERS ("orders.events.>") and INVENTORY
 * ("inventory.events.>"), every event type of both. Static data.
 */
extern const jl_projector_def sales_dashboard_projector;

#endif /* JETLEDGER_SALES_DASHBOARD_PROJECTION_H */
