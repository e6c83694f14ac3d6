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
# The nats-server the tests run: /usr/sbin's before any on PATH, as scripts/lib.sh
# nats_server_bin (scripts/bootstrap installs and version-checks that one; an older one may come
# first on PATH). The scripts pass the one they checked as -DNATS_SERVER at every configure.
find_program(NATS_SERVER nats-server HINTS /usr/sbin PATHS /usr/local/sbin)
