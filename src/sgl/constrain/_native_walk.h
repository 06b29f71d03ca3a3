/* Shared by the mask kernel's C files: the token trie walk (_native.c), also run by the
 * boundary recursion (_native_boundary.c) for the sub-walks it makes itself. */
#ifndef SGL_NATIVE_WALK_H
#define SGL_NATIVE_WALK_H
#include "_native_product.h"

/* One trie node, packed (12 bytes): its subtree ends before node `end`; tokens
 * tok .. next node's tok end here; `depth` 1 = a token's first byte. */
typedef struct {
    int32_t end;
    int32_t tok;
    uint16_t depth;
    uint8_t byte;
    uint8_t utf8; /* the subtree from this byte on is well-formed UTF-8 (see mask.py) */
} Node;

/* A checked trie (check_trie) as a walk reads it: n_nodes nodes plus the sentinel. */
typedef struct {
    const Node *nd;
    const uint64_t *sub;       /* n_nodes x 4: the byte values in each subtree */
    const uint8_t *max_chars;  /* n_nodes */
    const int64_t *ids;        /* token ids in trie order */
    Py_ssize_t n_nodes;
} Trie;

/* A walk's boundary subtrees: (trie node, byte offset, accepting state) each. */
typedef struct {
    int64_t *ids, *pos, *state;
    Py_ssize_t n, cap;
    int failed;
} Bounds;

void bounds_free(Bounds *b);

/* Walk the subtrees of start_nodes[i] from lexer states start_states[i], OR-ing the tokens
 * read inside into words and pushing boundary subtrees onto b. Called with the GIL held
 * (released while walking). 0; 1 a start point out of range; < 0 a product_build code
 * (no Python error set: the caller reports it, product_error). */
int trie_walk(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
              Py_ssize_t n_points, uint32_t *words, Bounds *b);

/* A walk of a product seen as the product of a subset of its lexemes (a filtered allowed
 * set: the lexemes kept): a state is alive where a kept lexeme is alive, accepting where a
 * kept lexeme accepts. Transitions are componentwise, so this is the walk the product of
 * the kept lexemes alone makes (its states are the projections of these), over rows that
 * are built once for the wider set. flags: per state, FILTER_* bits computed on first use
 * (owned by the caller, grown here; free it with free()). */
typedef struct {
    const uint8_t *keep; /* per component of the product: 1 kept */
    uint8_t *flags;      /* per state: 0 unknown, else FILTER_KNOWN | ... */
    Py_ssize_t cap;
} WalkFilter;

#define FILTER_KNOWN 1
#define FILTER_ALIVE 2  /* a kept lexeme is alive */
#define FILTER_ACC 4    /* a kept lexeme accepts */
#define FILTER_PURE 8   /* every alive lexeme is kept (below it the walks agree) */

/* The flags of state s of P under f (P locked); 0 on memory. */
uint8_t filter_flags(WalkFilter *f, const Product *P, int32_t s);

/* trie_walk through f (see WalkFilter); -3 also when f's flags cannot grow. */
int trie_walk_filtered(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
                       Py_ssize_t n_points, uint32_t *words, Bounds *b, WalkFilter *f);

#endif
