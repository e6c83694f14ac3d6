# jl_add_check_test(<name> SOURCES ... [LIBS ...] [LABELS ...] [TIMEOUT s])
# One Check suite = one executable = one CTest test. Integration tests get the path of
# nats-server in JL_NATS_SERVER and start their own servers (tests/harness).
function(jl_add_check_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  jl_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CHECK)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/harness)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  # MALLOC_PERTURB_: glibc fills memory it hands out and takes back with a pattern, so that a
  # use after free (a handler running on a closed producer, say) reads garbage and fails, even
  # in a build without the sanitizers (ASan has its own allocator and ignores it).
  set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "JL_NATS_SERVER=${NATS_SERVER};JL_BIN_DIR=${PROJECT_BINARY_DIR}/bin;CK_DEFAULT_TIMEOUT=120;MALLOC_PERTURB_=165")
  if(T_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}")
  endif()
endfunction()
