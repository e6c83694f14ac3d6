# Compiler settings every jetledger target gets through jl_target_defaults().
option(ENABLE_SANITIZERS "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

function(jl_target_defaults target)
  target_compile_features(${target} PRIVATE c_std_11)
  # Without it, -std=c11 hides strdup/clock_gettime and pointers get truncated.
  target_compile_definitions(${target} PRIVATE _POSIX_C_SOURCE=200809L _DEFAULT_SOURCE)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
                                           -Wformat=2 -Wno-format-nonliteral)
  if(ENABLE_SANITIZERS)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined
                                             -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()
