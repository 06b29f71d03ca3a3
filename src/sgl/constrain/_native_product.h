/* Shared by the mask kernel's C files: the lexer's lazy product DFA (_native_product.c),
 * read by the trie walk (_native.c). */
#ifndef SGL_NATIVE_PRODUCT_H
#define SGL_NATIVE_PRODUCT_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <pythread.h>

#define UNKNOWN (-2) /* a row not built yet */

typedef struct {
    PyObject_HEAD
    int32_t n;        /* states */
    const int32_t *table; /* n x 256: next state or -1 */
    uint8_t *accepting;
    Py_buffer held;   /* a read-only table, used in place (held.obj NULL: table is a copy) */
    PyObject *weakreflist; /* lexer.py keeps one Dfa per content in a weak dictionary */
} Dfa;

/* What a state does on characters, for counting states (a string with maxLength: each
 * character moves one state on, none loops). Filled on demand (product_step_info,
 * product_count), never by a plain row build. */
typedef struct {
    int32_t len;   /* chars of the class known to be readable from this state... */
    int32_t at;    /* ...which lead to this state */
    uint8_t done;  /* 0 not fully known, 1 it breaks after len chars, 2 it never breaks */
} Chain;

typedef struct {
    uint64_t set[2];  /* the ASCII bytes that step to step_to (at least MIN_STEP_BYTES) */
    int32_t step_to;
    uint8_t step_kind; /* 0 unknown, 1 no step, 2 its ASCII step bytes lead to step_to */
    uint8_t utf8;      /* 0 unknown, 1 no, 2 every UTF-8 char of 2-4 bytes leads to step_to too */
    Chain chain[2];    /* reading ASCII step bytes only [0], or UTF-8 characters too [1] */
} Count;

#define MIN_STEP_BYTES 16
#define MAX_CHARS 255 /* per-node char counts saturate here (mask.py's max_chars) */

typedef struct {
    PyObject_HEAD
    PyObject *dfa_tuple; /* the k Dfa objects, kept alive */
    Dfa **dfas;
    int32_t k;
    int32_t *comps;    /* n x k */
    int32_t *table;    /* n x 256: target, -1 dead, UNKNOWN not built */
    uint8_t *accepting, *built; /* built: 0 not yet, 1 built, 2 built and "loopy", 3 loopy and UTF-8 loopy */
    uint64_t *loops;              /* n x 4: the bytes on which a built state loops to itself */
    Count *cnt;                   /* n: counting-state facts, filled on demand */
    Py_ssize_t n, cap, max_states;
    int32_t *slots;    /* open addressing: state id or -1 */
    Py_ssize_t n_slots;
    int32_t *scratch;  /* k */
    int in_utf8_check; /* rows built for a UTF-8 check get no check of their own (bounded depth) */
    int direct;        /* one lexeme: state ids are its DFA's states, rows its table (nothing to build) */
    PyThread_type_lock lock;
} Product;

extern PyTypeObject DfaType, ProductType;

/* Build the row (and loop facts) of state s: 0, or -2 (state budget) / -3 (memory). */
int product_build(Product *p, int32_t s);
/* Fill s's step facts (cnt[s]). 0, or <0 as product_build. */
int product_step_info(Product *p, int32_t s);
/* Can m chars of s's step class be read from s? 1 yes, 0 no, <0 as product_build. */
int product_count(Product *p, int32_t s, int m, int utf);
/* Set the Python error for a negative code; returns -1. */
int product_error(int code);
/* Lock a product without waiting for it while holding the GIL. */
void product_lock(Product *p);

#endif
