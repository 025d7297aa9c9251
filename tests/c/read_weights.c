/* Read a gpt2_weights.bin (docs/binary-weight-format.md) and print a checksum.
 *
 *   gcc -O2 -std=c99 -Wall -Wextra -o read_weights tests/c/read_weights.c
 *   ./read_weights assets/weights/124M/gpt2_weights.bin
 *
 * Output, one line per tensor then a summary:
 *   tensor <name> <ndim> <dim0>x<dim1>... first=<first float, %.9g>
 *   tensors=<count> elements=<total> checksum=<sum>
 * checksum = sum over every float32's bit pattern times its 1-based position in the file's
 * data, modulo 2^64 (exact, order sensitive). utils/pretrained/binary.py:checksum computes
 * the same. Exits 1 with a message on a truncated or inconsistent file.
 * Assumes a little-endian host (x86, ARM), as the format is little-endian. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_exact(FILE *f, void *buf, size_t n, const char *what) {
    if (fread(buf, 1, n, f) != n) {
        fprintf(stderr, "error: file truncated while reading %s\n", what);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s gpt2_weights.bin\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    uint32_t count;
    if (!read_exact(f, &count, 4, "the tensor count")) return 1;
    uint64_t position = 0, checksum = 0;
    for (uint32_t t = 0; t < count; t++) {
        uint32_t name_length, ndim, dims[8];
        char name[1025];
        if (!read_exact(f, &name_length, 4, "a name length")) return 1;
        if (name_length > 1024) { fprintf(stderr, "error: name length %u\n", name_length); return 1; }
        if (!read_exact(f, name, name_length, "a name")) return 1;
        name[name_length] = '\0';
        if (!read_exact(f, &ndim, 4, "ndim")) return 1;
        if (ndim > 8) { fprintf(stderr, "error: %s has ndim %u\n", name, ndim); return 1; }
        if (!read_exact(f, dims, 4 * (size_t)ndim, "dims")) return 1;
        uint64_t elements = 1;
        printf("tensor %s %u ", name, ndim);
        for (uint32_t d = 0; d < ndim; d++) {
            elements *= dims[d];
            printf(d ? "x%u" : "%u", dims[d]);
        }
        float first = 0.0f;
        uint32_t bits;
        for (uint64_t i = 0; i < elements; i++) {
            if (!read_exact(f, &bits, 4, name)) return 1;
            if (i == 0) memcpy(&first, &bits, 4);
            position++;
            checksum += (uint64_t)bits * position;
        }
        printf(" first=%.9g\n", first);
    }
    if (fgetc(f) != EOF) {
        fprintf(stderr, "error: bytes left after %u tensors\n", count);
        return 1;
    }
    fclose(f);
    printf("tensors=%u elements=%llu checksum=%llu\n", count,
           (unsigned long long)position, (unsigned long long)checksum);
    return 0;
}
