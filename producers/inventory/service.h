/*
 * The inventory service definition (commands, events, decide/evolve), shared by its main() and
 * the integration tests that run it in-process.
 */
#ifndef JETLEDGER_INVENTORY_SERVICE_H
#define JETLEDGER_INVENTORY_SERVICE_H

#include "jetledger/producer.h"

extern const jl_service_def inventory_service;

#endif /* JETLEDGER_INVENTORY_SERVICE_H */
