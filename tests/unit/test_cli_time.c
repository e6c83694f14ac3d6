/*
 * The CLI's RFC 3339 parser (--at-time, --from-time): what it accepts, to the nanosecond, and
 * that everything else is refused with its reason rather than read as some other instant.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "unit.h"

#define NS 1000000000LL

static const struct {
    const char *text;
    int64_t ns;
} good[] = {
    {"1970-01-01T00:00:00Z", 0},
    {"2026-11-26T12:00:00+01:00", 1795690800LL * NS},
    {"2026-11-26t11:00:00z", 1795690800LL * NS}, /* RFC 3339 5.6: lower-case t and z */
    {"2026-11-26T12:00:00.123456789+01:00", 1795690800LL * NS + 123456789},
    {"2026-11-26T11:00:00.5Z", 1795690800LL * NS + 500000000},
    {"2024-02-29T00:00:00Z", 1709164800LL * NS},     /* a leap day */
    {"2016-12-31T23:59:60Z", 1483228800LL * NS},     /* a leap second: the next :00 */
    {"1970-01-01T00:00:00+01:00", -3600LL * NS},     /* before the epoch */
    {"2000-01-01T00:00:00-05:30", 946704600LL * NS}, /* a negative offset */
    {"2262-04-11T23:47:16.854775807Z", INT64_MAX},   /* the last int64 nanosecond */
    {"1677-09-21T00:12:44Z", -9223372036LL * NS},    /* near the first */
};

static const struct {
    const char *text, *why;
} bad[] = {
    {"", "expected YYYY-MM-DDTHH:MM:SS"},
    {"2026-11-26 12:00:00Z", "expected YYYY-MM-DDTHH:MM:SS"},
    {"2026-11-26T12:00Z", "expected YYYY-MM-DDTHH:MM:SS"},
    {"26-11-2026T12:00:00Z", "expected YYYY-MM-DDTHH:MM:SS"},
    {"2026-11-26T12:00:00", "expected Z or an offset"},
    {"2026-11-26T12:00:00+0100", "the offset must be +hh:mm"},
    {"2026-11-26T12:00:00+25:00", "the offset must be +hh:mm"},
    {"2026-11-26T12:00:00+01:60", "the offset must be +hh:mm"},
    {"2026-11-26T12:00:00.Z", "no digits after the '.'"},
    {"2026-11-26T12:00:00.1234567891Z", "more than 9 digits of fraction"},
    {"2026-11-26T12:00:00Z ", "unexpected text after the time"},
    {"2026-11-26T12:00:00+01:00x", "unexpected text after the time"},
    {"2026-02-30T00:00:00Z", "no such date"},
    {"2023-02-29T00:00:00Z", "no such date"}, /* not a leap year */
    {"2100-02-29T00:00:00Z", "no such date"}, /* nor is a century not divisible by 400 */
    {"2026-13-01T00:00:00Z", "no such date"},
    {"2026-00-10T00:00:00Z", "no such date"},
    {"2026-11-00T00:00:00Z", "no such date"},
    {"2026-11-26T24:00:00Z", "no such time of day"},
    {"2026-11-26T12:60:00Z", "no such time of day"},
    {"2026-11-26T12:30:60Z", "no such time of day"}, /* a leap second ends a minute */
    {"2262-04-11T23:47:16.854775808Z", "outside the years 1677 to 2262"},
    {"1600-01-01T00:00:00Z", "outside the years 1677 to 2262"},
    {"9999-12-31T23:59:59Z", "outside the years 1677 to 2262"},
};

START_TEST(rfc3339_times_are_read_to_the_nanosecond)
{
    int64_t ns = 42;
    char err[128] = "";
    int rc = cli_parse_time(&ns, good[_i].text, err, sizeof(err));
    ck_assert_msg(rc == 0, "'%s' refused: %s", good[_i].text, err);
    ck_assert_msg(ns == good[_i].ns, "'%s' read as %lld, want %lld", good[_i].text, (long long)ns,
                  (long long)good[_i].ns);
}
END_TEST

START_TEST(anything_else_is_refused_with_its_reason_and_no_value)
{
    int64_t ns = 42;
    char err[128] = "";
    ck_assert_msg(cli_parse_time(&ns, bad[_i].text, err, sizeof(err)) == -1, "'%s' accepted",
                  bad[_i].text);
    ck_assert_msg(strstr(err, bad[_i].why) != NULL, "'%s': '%s' lacks '%s'", bad[_i].text, err,
                  bad[_i].why);
    ck_assert_int_eq(ns, 42);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli_time");
    TCase *tc = tcase_create("rfc3339");
    tcase_add_loop_test(tc, rfc3339_times_are_read_to_the_nanosecond, 0,
                        (int)(sizeof(good) / sizeof(good[0])));
    tcase_add_loop_test(tc, anything_else_is_refused_with_its_reason_and_no_value, 0,
                        (int)(sizeof(bad) / sizeof(bad[0])));
    suite_add_tcase(s, tc);
    return jl_ck_run(s);
}
