/*
 * The order_summary projection: one row per order (customer, status, item count, total,
 * version, last update) and its queries GetOrder and ListOrders. Shared by main() and tests.
 */
#ifndef JETLEDGER_ORDER_SUMMARY_PROJECTION_H
#define JETLEDGER_ORDER_SUMMARY_PROJECTION_H

#include "jetledger/projector.h"

/** Rows per ListOrders page: default and maximum. */
#define ORDER_SUMMARY_DEFAULT_LIMIT 50
#define ORDER_SUMMARY_MAX_LIMIT 500

extern const jl_projector_def order_summary_projector;

#endif /* JETLEDGER_ORDER_SUMMARY_PROJECTION_H */
