/* The decode plan's shortest float32 (dcim/drivers/modbus/decodeplan.py, `_shortest_float32`) against the
 * codec's (dcim/drivers/modbus/codec.py), on every finite float32 value or a stride of them.
 *
 * The codec tries 6, 7, 8 and 9 significant digits in turn and keeps the first that is the same float32;
 * the plan tries 7 first; where 7 did, it tries 6 as well only if the text is longer than 6 characters and
 * either does not start with a digit from 1 to 7 or the value is below the smallest normal float32; where
 * 7 did not, it tries 8, then 9.
 * Both are written here as in Python: C's "%.*g" and strtod round correctly as Python's formatting and
 * float() do, and the cast to float rounds to nearest even as struct.pack(">f") does.
 *
 *     gcc -O2 -o /tmp/f32_shortest bench/f32_shortest.c -lm
 *     /tmp/f32_shortest 1 0                     # all 4,278,190,080 finite values: about 70 min on one core
 *     /tmp/f32_shortest 2 0 & /tmp/f32_shortest 2 1 &   # the same on two cores, half each
 *
 * Arguments: stride and offset (bit patterns offset, offset + stride, ...). Every power of two and its four
 * neighbours each side are checked first, whatever the stride. Exit status 1 on any difference. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The smallest positive normal float32 (FLT_MIN): below it the spacing of float32 values is fixed. */
static const double FLT_MIN_NORMAL = 1.17549435082228750797e-38;

static int same_float32(double candidate, uint32_t bits) {
    float f = (float)candidate;
    uint32_t got;
    memcpy(&got, &f, 4);
    return got == bits;
}

static double rounded(int digits, double value, char *text) {
    snprintf(text, 64, "%.*g", digits, value);
    return strtod(text, NULL);
}

static double codec(double value, uint32_t bits) {
    char text[64];
    for (int digits = 6; digits <= 9; digits++) {
        double candidate = rounded(digits, value, text);
        if (same_float32(candidate, bits)) return candidate;
    }
    return value;
}

static double plan(double value, uint32_t bits) {
    char text[64], other[64];
    double candidate = rounded(7, value, text);
    if (same_float32(candidate, bits)) {
        if (strlen(text) <= 6) return candidate;
        if (text[0] >= '1' && text[0] <= '7' && value >= FLT_MIN_NORMAL) return candidate;
        double shorter = rounded(6, value, other);
        return same_float32(shorter, bits) ? shorter : candidate;
    }
    candidate = rounded(8, value, text);
    if (same_float32(candidate, bits)) return candidate;
    candidate = rounded(9, value, text);
    return same_float32(candidate, bits) ? candidate : value;
}

static long checked = 0, differ = 0;

static void check(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    if (!isfinite(f)) return;
    double value = f, want = codec(value, bits), got = plan(value, bits);
    checked++;
    if (memcmp(&want, &got, 8) != 0 && differ++ < 20)
        printf("differ: %08x %.17g codec %.17g plan %.17g\n", bits, value, want, got);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s STRIDE OFFSET\n", argv[0]);
        return 2;
    }
    uint64_t stride = strtoull(argv[1], NULL, 10), offset = strtoull(argv[2], NULL, 10);
    if (stride == 0) return 2;
    for (int64_t sign = 0; sign < 2; sign++)
        for (int64_t exponent = 0; exponent < 255; exponent++)
            for (int step = -4; step <= 4; step++) {
                int64_t bits = (sign << 31 | exponent << 23) + step;
                if (bits >= 0 && bits <= 0xFFFFFFFFLL) check((uint32_t)bits);
            }
    for (uint64_t bits = offset; bits <= 0xFFFFFFFFULL; bits += stride) check((uint32_t)bits);
    printf("checked %ld values, %ld differ\n", checked, differ);
    return differ != 0;
}
