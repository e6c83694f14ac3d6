/* RFC 3339 date-times for --at-time and --from-time, parsed by hand: strptime depends on the
 * locale and accepts too much (no offsets with a colon, no fractions). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* Largest whole seconds whose nanoseconds fit an int64 (2262-04-11). */
#define MAX_SECS 9223372036LL

/* The @p n decimal digits at @p s; -1 when any is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* Fixed-width fields of "YYYY-MM-DDTHH:MM:SS", -1 where a digit or separator is wrong. */
static bool read_fields(const char *s, int f[6])
{
    static const struct {
        int at, width;
        char after;
    } layout[] = {{0, 4, '-'}, {5, 2, '-'}, {8, 2, 'T'}, {11, 2, ':'}, {14, 2, ':'}, {17, 2, 0}};
    if (strnlen(s, 19) < 19)
        return false;
    for (int i = 0; i < 6; i++) {
        const char *p = s + layout[i].at;
        char sep = p[layout[i].width];
        f[i] = digits(p, layout[i].width);
        if (f[i] < 0)
            return false;
        /* RFC 3339 5.6 allows a lower-case 't' (and 'z'). */
        if (layout[i].after != 0 && sep != layout[i].after &&
            !(layout[i].after == 'T' && sep == 't'))
            return false;
    }
    return true;
}

int cli_parse_time(int64_t *out_ns, const char *s, char *err, size_t errlen)
{
    int f[6]; /* year, month, day, hour, minute, second */
    long frac = 0;
    int offset_s = 0;
    const char *why = NULL;

    if (!read_fields(s, f)) {
        why = "expected YYYY-MM-DDTHH:MM:SS";
        goto done;
    }
    const char *p = s + 19;
    if (*p == '.') {
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++) {
            if (n == 9) {
                why = "more than 9 digits of fraction";
                goto done;
            }
            frac = frac * 10 + (*p - '0');
        }
        if (n == 0) {
            why = "no digits after the '.'";
            goto done;
        }
        for (; n < 9; n++)
            frac *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int h = digits(p + 1, 2), m = h < 0 || p[3] != ':' ? -1 : digits(p + 4, 2);
        if (h < 0 || m < 0 || h > 23 || m > 59) {
            why = "the offset must be +hh:mm or -hh:mm";
            goto done;
        }
        offset_s = (*p == '-' ? -1 : 1) * (h * 3600 + m * 60);
        p += 6;
    } else {
        why = "expected Z or an offset such as +01:00 after the seconds";
        goto done;
    }
    if (*p != 0) {
        why = "unexpected text after the time";
        goto done;
    }
    if (f[1] < 1 || f[1] > 12 || f[2] < 1 || f[2] > days_in_month(f[0], f[1])) {
        why = "no such date";
        goto done;
    }
    /* A leap second (:60, only ever at a minute's end) reads as the next minute's :00, as in
     * POSIX time. */
    if (f[3] > 23 || f[4] > 59 || f[5] > 60 || (f[5] == 60 && f[4] != 59)) {
        why = "no such time of day";
        goto done;
    }
    struct tm tm = {.tm_year = f[0] - 1900,
                    .tm_mon = f[1] - 1,
                    .tm_mday = f[2],
                    .tm_hour = f[3],
                    .tm_min = f[4],
                    .tm_sec = f[5]};
    int64_t secs = (int64_t)timegm(&tm) - offset_s;
    if (secs < -MAX_SECS || secs > MAX_SECS || (secs == MAX_SECS && frac > 854775807L)) {
        why = "outside the years 1677 to 2262";
        goto done;
    }
    *out_ns = secs * 1000000000LL + frac;
done:
    if (why != NULL)
        snprintf(err, errlen, "%s", why);
    return why == NULL ? 0 : -1;
}
