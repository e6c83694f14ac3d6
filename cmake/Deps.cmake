# Dependencies from Debian packages; no vendored copies (see scripts/bootstrap).
find_package(PkgConfig REQUIRED)
# find_package(cnats) fails on Debian 12's libnats-dev 3.4.1 (its config names a static lib not
# shipped there); pkg-config works on it and on Debian 13's 3.10 alike.
pkg_check_modules(NATS REQUIRED IMPORTED_TARGET libnats)
pkg_check_modules(PROTOBUFC REQUIRED IMPORTED_TARGET libprotobuf-c)
pkg_check_modules(UUID REQUIRED IMPORTED_TARGET uuid)
pkg_check_modules(CHECK REQUIRED IMPORTED_TARGET check)
find_package(SQLite3 REQUIRED)
find_package(Threads REQUIRED)
find_program(PROTOC_C NAMES protoc-c protoc-gen-c REQUIRED)
find_program(NATS_SERVER nats-server PATHS /usr/sbin /usr/local/sbin)
