/* placeholder */ typedef int jl_natsd_placeholder;
