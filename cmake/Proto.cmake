# Generate C from every schemas/**/*.proto into the build tree at build time, plus a registry of
# all message descriptors so the CLI converts any message to and from JSON by name.
set(JL_PROTO_ROOT ${PROJECT_SOURCE_DIR}/schemas)
set(JL_GEN_ROOT ${PROJECT_BINARY_DIR}/gen)

function(jl_add_schemas target)
  file(GLOB_RECURSE protos CONFIGURE_DEPENDS RELATIVE ${JL_PROTO_ROOT} ${JL_PROTO_ROOT}/*.proto)
  list(SORT protos)
  set(srcs)
  set(hdrs)
  foreach(rel IN LISTS protos)
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    set(c ${JL_GEN_ROOT}/${stem}.pb-c.c)
    set(h ${JL_GEN_ROOT}/${stem}.pb-c.h)
    add_custom_command(
      OUTPUT ${c} ${h}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${JL_GEN_ROOT}
      COMMAND ${PROTOC_C} --c_out=${JL_GEN_ROOT} -I${JL_PROTO_ROOT} ${JL_PROTO_ROOT}/${rel}
      DEPENDS ${JL_PROTO_ROOT}/${rel}
      COMMENT "protoc-c ${rel}"
      VERBATIM)
    list(APPEND srcs ${c})
    list(APPEND hdrs ${h})
  endforeach()
  set(registry ${JL_GEN_ROOT}/jl_registry.c)
  add_custom_command(
    OUTPUT ${registry}
    COMMAND ${CMAKE_COMMAND} -DOUT=${registry} -DGEN_ROOT=${JL_GEN_ROOT} "-DHEADERS=${hdrs}"
            -P ${PROJECT_SOURCE_DIR}/cmake/GenRegistry.cmake
    DEPENDS ${hdrs} ${PROJECT_SOURCE_DIR}/cmake/GenRegistry.cmake
    COMMENT "descriptor registry"
    VERBATIM)
  add_library(${target} STATIC ${srcs} ${registry})
  target_include_directories(${target} PUBLIC ${JL_GEN_ROOT})
  target_link_libraries(${target} PUBLIC PkgConfig::PROTOBUFC)
  target_compile_features(${target} PRIVATE c_std_11)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()
