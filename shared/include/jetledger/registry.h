/*
 * Lookup of protobuf message descriptors by name, over every schema in schemas/ (the table is
 * generated at build time from protoc-c's output). This is what lets the CLI and the runtime turn
 * a type name from a subject, a header or an envelope into a descriptor with no per-type code.
 */
#ifndef JETLEDGER_REGISTRY_H
#define JETLEDGER_REGISTRY_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/**
 * The descriptor of the message whose full name is @p name ("orders.CreateOrder"), or NULL.
 * Thread-safe; the result is static.
 */
const ProtobufCMessageDescriptor *jl_registry_find(const char *name);

/**
 * The descriptor of message @p short_name ("CreateOrder") in protobuf package @p package
 * ("orders"), or NULL. Thread-safe.
 */
const ProtobufCMessageDescriptor *jl_registry_find_in(const char *package, const char *short_name);

/**
 * Call @p fn for every registered message in a stable order (for listing what exists).
 */
void jl_registry_each(void (*fn)(const ProtobufCMessageDescriptor *d, void *closure),
                      void *closure);

#endif /* JETLEDGER_REGISTRY_H */
