#include "jetledger/registry.h"

#include <string.h>

/* Defined in the generated jl_registry.c (cmake/GenRegistry.cmake), NULL-terminated. */
extern const ProtobufCMessageDescriptor *const jl_registry_messages[];

const ProtobufCMessageDescriptor *jl_registry_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; jl_registry_messages[i] != NULL; i++) {
        if (strcmp(jl_registry_messages[i]->name, name) == 0)
            return jl_registry_messages[i];
    }
    return NULL;
}

const ProtobufCMessageDescriptor *jl_registry_find_in(const char *package, const char *short_name)
{
    if (package == NULL || short_name == NULL)
        return NULL;
    for (size_t i = 0; jl_registry_messages[i] != NULL; i++) {
        const ProtobufCMessageDescriptor *d = jl_registry_messages[i];
        if (strcmp(d->package_name, package) == 0 && strcmp(d->short_name, short_name) == 0)
            return d;
    }
    return NULL;
}

void jl_registry_each(void (*fn)(const ProtobufCMessageDescriptor *d, void *closure), void *closure)
{
    for (size_t i = 0; jl_registry_messages[i] != NULL; i++)
        fn(jl_registry_messages[i], closure);
}
