/* The mask kernel: token walks against a lexer DFA, in C.
 *
 * walk_trie is the compiled twin of mask.py's numpy walks (which stay the fallback, and
 * the reference the tests compare against): token-trie subtrees from lexer states, the
 * whole vocabulary from one state or the rest of tokens whose lexeme ended inside them.
 * Tokens live in a byte trie (preorder; tokens sorted by bytes), walked depth first; a
 * dead byte skips its whole subtree at once.
 *
 * Results: tokens read without leaving the lexeme are OR-ed into a uint32 bitmask;
 * "boundary" subtrees (the lexeme completed before a node's byte) come back as three
 * int64 byte strings (trie node, byte offset, accepting state). The GIL is released
 * while walking, so masks of different sequences can be built on several threads.
 *
 * Elsewhere: Product, the lexer's product DFA built lazily (twin of lexer.LexerCore), in
 * _native_product.c; Earley, the parser's columns and closure (twin of
 * earley.EarleyParser), in _native_earley.c.
 */
#include "_native_walk.h" /* first: it includes Python.h */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The interface version the Python side checks (constrain/native.py ``ABI``): bump both
 * with every change of a function, method or type the Python side calls. */
#define SGL_NATIVE_ABI 2

static void bounds_push(Bounds *b, int64_t id, int64_t pos, int64_t state) {
    if (b->failed) return;
    if (b->n == b->cap) {
        Py_ssize_t cap = b->cap ? b->cap * 2 : 256;
        int64_t *ids = realloc(b->ids, cap * sizeof(int64_t));
        if (ids) b->ids = ids;
        int64_t *pos_ = realloc(b->pos, cap * sizeof(int64_t));
        if (pos_) b->pos = pos_;
        int64_t *st = realloc(b->state, cap * sizeof(int64_t));
        if (st) b->state = st;
        if (!ids || !pos_ || !st) { b->failed = 1; return; }
        b->cap = cap;
    }
    b->ids[b->n] = id;
    b->pos[b->n] = pos;
    b->state[b->n] = state;
    b->n++;
}

void bounds_free(Bounds *b) {
    free(b->ids);
    free(b->pos);
    free(b->state);
}

/* y# turns a NULL pointer into None: empty vectors point at a real (empty) buffer */
static char empty[1];
#define VEC(v, b) ((b)->n ? (char *)(b)->v : empty), ((b)->n * (Py_ssize_t)sizeof(int64_t))

static PyObject *result3(Bounds *b) {
    if (b->failed) return PyErr_NoMemory();
    return Py_BuildValue("(y#y#y#)", VEC(ids, b), VEC(pos, b), VEC(state, b));
}

static int check_buf(Py_buffer *buf, Py_ssize_t itemsize, Py_ssize_t min_items, const char *name) {
    if (buf->len % itemsize || buf->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name, min_items, itemsize);
        return -1;
    }
    return 0;
}

/* check_trie(nodes Node[N+1], ids i64[T], n_words) -> None: validates a trie once, so
 * that walks can trust it (every index in range, subtrees nested, depths consistent,
 * token ids within a bitmask of n_words words). */
static PyObject *check_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, ib;
    Py_ssize_t n_words;
    if (!PyArg_ParseTuple(args, "y*y*n", &nb, &ib, &n_words)) return NULL;
    const Node *nd = nb.buf;
    const int64_t *ids = ib.buf;
    Py_ssize_t n = nb.len / (Py_ssize_t)sizeof(Node) - 1, n_tok = ib.len / 8;
    int bad = nb.len % sizeof(Node) || ib.len % 8 || n < 0 || nd[n].tok != n_tok;
    for (Py_ssize_t t = 0; t < n_tok && !bad; t++) bad = ids[t] < 0 || (ids[t] >> 5) >= n_words;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        bad = nd[i].depth < 1 || nd[i].depth >= 1024 || nd[i].end <= i || nd[i].end > n ||
              nd[i].tok < 0 || nd[i + 1].tok < nd[i].tok || nd[i].tok > n_tok ||
              (i + 1 < n && nd[i + 1].depth > nd[i].depth + 1) || (i == 0 && nd[i].depth != 1);
    }
    PyBuffer_Release(&nb);
    PyBuffer_Release(&ib);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "check_trie: malformed trie");
        return NULL;
    }
    Py_RETURN_NONE;
}

uint8_t filter_flags(WalkFilter *f, const Product *P, int32_t s) {
    if (s >= f->cap) {
        Py_ssize_t cap = P->cap > s ? P->cap : (Py_ssize_t)s + 1;
        uint8_t *fl = realloc(f->flags, cap);
        if (!fl) return 0;
        memset(fl + f->cap, 0, cap - f->cap);
        f->flags = fl, f->cap = cap;
    }
    if (f->flags[s]) return f->flags[s];
    const int32_t *comp = P->comps + (Py_ssize_t)s * P->k;
    uint8_t fl = FILTER_KNOWN | FILTER_PURE;
    for (int32_t j = 0; j < P->k; j++) {
        if (comp[j] < 0) continue;
        if (!f->keep[j]) { fl &= (uint8_t)~FILTER_PURE; continue; }
        fl |= FILTER_ALIVE;
        if (P->dfas[j]->accepting[comp[j]]) fl |= FILTER_ACC;
    }
    return f->flags[s] = fl;
}

/* The walk (see _native_walk.h): depth first with a stack of lexer states by depth;
 * through filter f where not NULL (trie_walk_filtered; inlined twice, so that the plain
 * walk tests nothing of it). */
static inline __attribute__((always_inline)) int walk_impl(const Trie *t, Product *P, const int32_t *start_nodes,
                                                           const int32_t *start_states, Py_ssize_t n_points,
                                                           uint32_t *words, Bounds *b, WalkFilter *f) {
    const Node *nd = t->nd;
    const uint64_t *sub = t->sub;
    const uint8_t *max_chars = t->max_chars;
    const int64_t *ids = t->ids;
    Py_ssize_t n_nodes = t->n_nodes;
    int32_t stk[1024];
    int bad = 0, code = 0;
    product_lock(P);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t pt = 0; pt < n_points && !bad && !code; pt++) {
        Py_ssize_t i = start_nodes[pt];
        int32_t p0 = start_states[pt];
        if (i < 0 || i >= n_nodes || p0 < 0 || p0 >= P->n) { bad = 1; break; }
        if ((code = product_build(P, p0))) break;
        if (f) { /* a start no kept lexeme is alive in reads nothing and ends nothing */
            uint8_t fl = filter_flags(f, P, p0);
            if (!fl) { code = -3; break; }
            if (!(fl & FILTER_ALIVE)) continue;
        }
        const int32_t *tbl = P->table;
        const uint8_t *acc = P->accepting, *built = P->built;
        const uint64_t *loops = P->loops;
        const Count *cnt = P->cnt;
        Py_ssize_t stop = nd[i].end;
        stk[nd[i].depth - 1] = p0;
        while (i < stop) {
            const Node *x = nd + i;
            int32_t d = x->depth;
            int32_t p = stk[d - 1];
            const uint64_t *sp = sub + i * 4;
            int take = 0;
            if (built[p] >= 2 && x->end > i + 1) {
                /* every byte of the subtree loops on p, or (a UTF-8 loopy p) its ASCII
                 * bytes loop on p and the rest is well-formed UTF-8, every character
                 * of which leads back to p: all its tokens end inside. (Not for a
                 * leaf: its one byte is read as cheaply, without loading its byte set,
                 * a cache miss in most walks.) */
                const uint64_t *lp = loops + (Py_ssize_t)p * 4;
                take = !(sp[0] & ~lp[0]) && !(sp[1] & ~lp[1]) &&
                       ((built[p] == 3 && x->utf8) || (!(sp[2] & ~lp[2]) && !(sp[3] & ~lp[3])));
            }
            /* a counting state (each character moves one state on): a subtree of its
             * characters, no token longer than the chain, is all inside. A chain known
             * too short (ASCII's is the longest; below 2 chars nothing worth taking) is
             * rejected before reading the node's counts and byte set: cache misses,
             * where walks start at scattered nodes (a one-char lexeme's boundaries). */
            if (!take && cnt[p].step_kind != 1 && x->end > i + 1 && (!f || (f->flags[p] & FILTER_PURE)) &&
                !(cnt[p].chain[0].done == 1 && cnt[p].chain[0].len < 2) && max_chars[i] < MAX_CHARS &&
                !(cnt[p].chain[0].done == 1 && cnt[p].chain[0].len < max_chars[i])) {
                if (!cnt[p].step_kind) {
                    if ((code = product_step_info(P, p))) break;
                    tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt;
                }
                const Count *c = cnt + p;
                int utf = (sp[2] | sp[3]) != 0; /* non-ASCII bytes: well-formed UTF-8 only */
                if (c->step_kind == 2 && !(sp[0] & ~c->set[0]) && !(sp[1] & ~c->set[1]) && (!utf || x->utf8)) {
                    int r = product_count(P, p, max_chars[i], utf);
                    if (r < 0) { code = r; break; }
                    tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt;
                    take = r;
                }
            }
            if (take) {
                for (int32_t t = x->tok, e = nd[x->end].tok; t < e; t++) {
                    int64_t id = ids[t];
                    words[id >> 5] |= (uint32_t)1 << (id & 31);
                }
                i = x->end;
                continue;
            }
            int32_t nx = tbl[(Py_ssize_t)p * 256 + x->byte];
            if (f && nx >= 0) { /* dead unless a kept lexeme is alive */
                uint8_t fl = nx < f->cap ? f->flags[nx] : 0;
                if (!fl && !(fl = filter_flags(f, P, nx))) { code = -3; break; }
                if (!(fl & FILTER_ALIVE)) nx = -1;
            }
            if (nx < 0) {
                /* the lexeme ends before this byte: the whole subtree's tokens go on
                 * in the next lexeme, which the caller walks from this node */
                if (d > 1 && (f ? (f->flags[p] & FILTER_ACC) != 0 : acc[p] != 0) && nd[x->end].tok > x->tok)
                    bounds_push(b, i, d - 1, p);
                i = x->end;
                continue;
            }
            if (!built[nx] && x->end > i + 1) { /* the children read nx's row */
                if ((code = product_build(P, nx))) break;
                tbl = P->table, acc = P->accepting, built = P->built, loops = P->loops, cnt = P->cnt; /* may have moved */
            }
            stk[d] = nx;
            for (int32_t t = x->tok, e = x[1].tok; t < e; t++) {
                int64_t id = ids[t];
                words[id >> 5] |= (uint32_t)1 << (id & 31);
            }
            i++;
        }
    }
    PyThread_release_lock(P->lock);
    Py_END_ALLOW_THREADS
    return code ? code : bad;
}

int trie_walk(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
              Py_ssize_t n_points, uint32_t *words, Bounds *b) {
    return walk_impl(t, P, start_nodes, start_states, n_points, words, b, NULL);
}

int trie_walk_filtered(const Trie *t, Product *P, const int32_t *start_nodes, const int32_t *start_states,
                       Py_ssize_t n_points, uint32_t *words, Bounds *b, WalkFilter *f) {
    return walk_impl(t, P, start_nodes, start_states, n_points, words, b, f);
}

/* walk_trie(nodes Node[N+1] (checked), subtree_bytes u64[N*4], max_chars u8[N], tok_ids i64[T], product,
 *           start_nodes i32[P], start_states i32[P], words u32[W]) -> (boundary nodes, pos, state) as int64 bytes.
 * max_chars: per node, the most characters (UTF-8 lead or ASCII bytes) any token below it
 * holds from the node's byte on, MAX_CHARS meaning that many or more.
 * Walks the subtree of each start node, whose parent (the byte before it) left the lexer
 * in the given state; tokens read without leaving the lexeme are OR-ed into words.
 * Tokens whose first byte is dead are skipped (the caller handles them as starting the
 * next lexeme). Lexer rows are built on the way, as the walk reaches them. */
static PyObject *walk_trie(PyObject *self, PyObject *args) {
    Py_buffer nb, sb, mb, ti, sn, ss, wo;
    Product *P;
    if (!PyArg_ParseTuple(args, "y*y*y*y*O!y*y*w*", &nb, &sb, &mb, &ti, &ProductType, &P, &sn, &ss, &wo))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1, n_points = sn.len / 4;
    Py_ssize_t n_tok = ti.len / 8;
    Bounds b = {0};
    if (check_buf(&sn, 4, 0, "start_nodes") || check_buf(&ss, 4, n_points, "start_states") ||
        check_buf(&sb, 32, n_nodes, "subtree_bytes") || check_buf(&mb, 1, n_nodes, "max_chars"))
        goto done;
    if (n_nodes < 0 || ((const Node *)nb.buf)[n_nodes].tok != n_tok) {
        PyErr_SetString(PyExc_ValueError, "walk_trie: trie and token ids disagree");
        goto done;
    }
    /* ids were checked against the bitmask width by check_trie */
    Trie t = {nb.buf, sb.buf, mb.buf, ti.buf, n_nodes};
    int code = trie_walk(&t, P, sn.buf, ss.buf, n_points, wo.buf, &b);
    if (code < 0) {
        product_error(code);
        goto done;
    }
    if (code) {
        PyErr_SetString(PyExc_ValueError, "walk_trie: start point out of range");
        goto done;
    }
    res = result3(&b);
done:
    bounds_free(&b);
    PyBuffer_Release(&nb); PyBuffer_Release(&sb); PyBuffer_Release(&mb); PyBuffer_Release(&ti); PyBuffer_Release(&sn);
    PyBuffer_Release(&ss); PyBuffer_Release(&wo);
    return res;
}

/* A loop memo (loop_frontier): what a walk does below each root whose children it enters
 * in a loopy state of signature sig (the bytes on which the state loops to itself, and
 * whether it is UTF-8 loopy, built 3), read from the signature alone: the tokens read
 * inside (bits, by position in the trie's token order) and the nodes where the walk
 * leaves the state (exits, in preorder; those of the root of byte b are exits[off[b] ..
 * off[b + 1]]). At a node whose parent is in such a state, walk_trie takes the subtree
 * when its bytes loop (or, UTF-8 loopy, its ASCII bytes loop and it is well-formed
 * UTF-8), descends in the same state when the node's byte loops, and otherwise reads
 * the state's own row: so everything but the exits depends on the signature only (when
 * the state has no counting step, step_kind 1: checked before a memo is used). */
#define SIG_BYTES 33 /* 4 x 64 loop bits, then the UTF-8 flag */

static PyObject *loop_frontier(PyObject *self, PyObject *args) {
    Py_buffer nb, sb, rb, gb, ib;
    Py_ssize_t n_words;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*n", &nb, &sb, &rb, &gb, &ib, &n_words)) return NULL;
    PyObject *res = NULL;
    uint64_t *bits = NULL;
    uint32_t *dense = NULL;
    int32_t *exits = NULL, off[257];
    Py_ssize_t n_exits = 0, cap = 0;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1;
    if (check_buf(&sb, 32, n_nodes, "subtree_bytes") || check_buf(&rb, 4, 256, "root_of_byte") ||
        check_buf(&gb, SIG_BYTES, 1, "signature") || n_nodes < 0)
        goto done;
    if (ib.len % 8 || ib.len / 8 != ((const Node *)nb.buf)[n_nodes].tok || n_words < 1) {
        PyErr_SetString(PyExc_ValueError, "loop_frontier: trie and token ids disagree");
        goto done;
    }
    const int64_t *ids = ib.buf; /* checked against n_words by check_trie */
    const Node *nd = nb.buf;
    const uint64_t *sub = sb.buf;
    const int32_t *root_of_byte = rb.buf;
    uint64_t L[4];
    memcpy(L, gb.buf, 32);
    int utf8 = ((const uint8_t *)gb.buf)[32] != 0;
    Py_ssize_t n_tok = nd[n_nodes].tok, n_bits = (n_tok + 63) / 64;
    bits = calloc(n_bits ? n_bits : 1, sizeof(uint64_t));
    if (!bits) { PyErr_NoMemory(); goto done; }
    for (int c = 0; c < 256; c++) {
        off[c] = (int32_t)n_exits;
        Py_ssize_t r = root_of_byte[c];
        if (r < 0) continue;
        if (r >= n_nodes) {
            PyErr_SetString(PyExc_ValueError, "loop_frontier: root_of_byte out of range");
            goto done;
        }
        Py_ssize_t i = r + 1, stop = nd[r].end;
        while (i < stop) { /* every node reached here has its parent in the loopy state */
            const Node *x = nd + i;
            const uint64_t *sp = sub + i * 4;
            if (x->end > i + 1 && !(sp[0] & ~L[0]) && !(sp[1] & ~L[1]) &&
                ((utf8 && x->utf8) || (!(sp[2] & ~L[2]) && !(sp[3] & ~L[3])))) {
                for (int32_t t = x->tok, e = nd[x->end].tok; t < e; t++) bits[t >> 6] |= (uint64_t)1 << (t & 63);
                i = x->end;
                continue;
            }
            if ((L[x->byte >> 6] >> (x->byte & 63)) & 1) {
                for (int32_t t = x->tok, e = x[1].tok; t < e; t++) bits[t >> 6] |= (uint64_t)1 << (t & 63);
                i++;
                continue;
            }
            if (n_exits == cap) {
                cap = cap ? cap * 2 : 1024;
                int32_t *grown = realloc(exits, cap * sizeof(int32_t));
                if (!grown) { PyErr_NoMemory(); goto done; }
                exits = grown;
            }
            exits[n_exits++] = (int32_t)i;
            i = x->end;
        }
    }
    off[256] = (int32_t)n_exits;
    /* the same tokens by id, for walks that enter most roots in this state */
    dense = calloc(n_words, sizeof(uint32_t));
    if (!dense) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t t = 0; t < n_tok; t++) {
        if ((bits[t >> 6] >> (t & 63)) & 1) {
            int64_t id = ids[t];
            if ((id >> 5) >= n_words) {
                PyErr_SetString(PyExc_ValueError, "loop_frontier: token id beyond n_words");
                goto done;
            }
            dense[id >> 5] |= (uint32_t)1 << (id & 31);
        }
    }
    res = Py_BuildValue("(y#y#y#y#)", (char *)bits, n_bits * (Py_ssize_t)sizeof(uint64_t),
                        n_exits ? (char *)exits : empty, n_exits * (Py_ssize_t)sizeof(int32_t),
                        (char *)off, (Py_ssize_t)sizeof(off), (char *)dense, n_words * (Py_ssize_t)sizeof(uint32_t));
done:
    free(bits);
    free(exits);
    free(dense);
    PyBuffer_Release(&nb); PyBuffer_Release(&sb); PyBuffer_Release(&rb); PyBuffer_Release(&gb); PyBuffer_Release(&ib);
    return res;
}

#define MAX_MEMOS 16
#define MEMO_MIN_TOKENS 256 /* a root entered loopy with fewer tokens below: walked as before */

typedef struct {
    Py_buffer sig, bits, exits, off, dense;
} Memo;

/* The memos of walk_roots' argument, checked against the trie (0, or -1 with an error
 * set); parsed only when a walk first meets a loopy root (most walks never do). */
static int parse_memos(PyObject *seq, Memo *memos, int *n_memos, Py_ssize_t n_tok, Py_ssize_t n_nodes,
                       Py_ssize_t words_len) {
    PyObject *fast = PySequence_Fast(seq, "walk_roots: memos must be a sequence");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int bad = n > MAX_MEMOS;
    for (Py_ssize_t m = 0; m < n && !bad; m++) {
        Memo *me = memos + *n_memos;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, m), "y*y*y*y*y*", &me->sig, &me->bits, &me->exits,
                              &me->off, &me->dense)) {
            Py_DECREF(fast);
            return -1;
        }
        (*n_memos)++;
        /* sizes only here: the offsets and exits of a root are checked where a walk uses
         * them (memo_exits), not all of them per call (~17k exits a memo: checking 16 memos'
         * exits on every walk that met a loopy root was ~3% of MaskBench's mask time) */
        bad = me->sig.len != SIG_BYTES || me->bits.len < ((n_tok + 63) / 64) * 8 || me->exits.len % 4 ||
              me->off.len != 257 * 4 || ((const int32_t *)me->off.buf)[0] != 0 ||
              ((const int32_t *)me->off.buf)[256] != me->exits.len / 4 || me->dense.len != words_len;
    }
    Py_DECREF(fast);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "walk_roots: malformed memos");
        return -1;
    }
    return 0;
}

/* walk_roots(nodes, subtree_bytes, max_chars, tok_ids, product, root_of_byte i32[256], state, words,
 *            memos=()) -> (boundary nodes, pos, state, missing signature or None)
 * As walk_trie from every depth-1 node (root_of_byte[b]: the node of first byte b, -1
 * none), in byte order: the whole vocabulary from one lexer state. The roots whose byte
 * is dead in the state's row are left out before their nodes are read (a dead root reads
 * nothing and pushes no boundary in walk_trie either; its node, one cache line at a
 * scattered address, was most of a small walk's time: a key's state has one or two live
 * bytes of 256). memos: (signature, bits, exits, off) each (loop_frontier's, with its
 * signature): a root entered in a loopy state of a memo's signature gets its tokens and
 * the memo's bits below it, and only the memo's exits are walked, from that state
 * (their boundaries come in the same preorder). missing: the signature of a loopy state
 * that entered a root of MEMO_MIN_TOKENS+ tokens with no memo, for the caller to make. */
static PyObject *walk_roots(PyObject *self, PyObject *args) {
    Py_buffer nb, sb, mb, ti, rb, wo;
    Product *P;
    int state;
    PyObject *memo_seq = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*y*O!y*iw*|O", &nb, &sb, &mb, &ti, &ProductType, &P, &rb, &state, &wo,
                          &memo_seq))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1;
    Py_ssize_t n_tok = ti.len / 8;
    Bounds b = {0};
    Memo memos[MAX_MEMOS];
    int n_memos = 0;
    int32_t *pts = NULL, *sts = NULL;
    Py_ssize_t n_points = 0, cap = 0;
    int have_missing = 0, memos_parsed = 0;
    int8_t root_memo[256]; /* the memo each root was entered with, -1 none */
    memset(root_memo, -1, sizeof(root_memo));
    uint32_t *tmp = NULL;
    uint8_t missing[SIG_BYTES];
    if (check_buf(&rb, 4, 256, "root_of_byte") || check_buf(&sb, 32, n_nodes, "subtree_bytes") ||
        check_buf(&mb, 1, n_nodes, "max_chars"))
        goto done;
    if (n_nodes < 0 || ((const Node *)nb.buf)[n_nodes].tok != n_tok) {
        PyErr_SetString(PyExc_ValueError, "walk_roots: trie and token ids disagree");
        goto done;
    }
    /* in range only (reading the 256 nodes here would undo the point): which node is
     * each byte's root is the caller's (TokenTable.root_of_byte, checked when made) */
    const int32_t *root_of_byte = rb.buf;
    for (int c = 0; c < 256; c++) {
        if (root_of_byte[c] >= n_nodes) {
            PyErr_SetString(PyExc_ValueError, "walk_roots: root_of_byte out of range");
            goto done;
        }
    }
    const Node *nd = nb.buf;
    const int64_t *ids = ti.buf;
    uint32_t *words = wo.buf;
    int code = 0;
    product_lock(P);
    if (state < 0 || state >= P->n) code = 1;
    else code = product_build(P, state);
    for (int c = 0; c < 256 && !code; c++) {
        int32_t r = root_of_byte[c];
        if (r < 0) continue;
        int32_t nx = P->table[(Py_ssize_t)state * 256 + c];
        if (nx < 0) continue;
        const Memo *use = NULL;
        if (!memos_parsed || n_memos || !have_missing) {
            int32_t below = nd[nd[r].end].tok - nd[r + 1 < n_nodes ? r + 1 : r].tok;
            if (nd[r].end > r + 1 && below >= MEMO_MIN_TOKENS) {
                if ((code = product_build(P, nx))) break;
                if (P->built[nx] >= 2 && (code = product_step_info(P, nx))) break;
                if (P->built[nx] >= 2 && P->cnt[nx].step_kind == 1) {
                    if (!memos_parsed) {
                        memos_parsed = 1;
                        if (memo_seq && memo_seq != Py_None &&
                            parse_memos(memo_seq, memos, &n_memos, n_tok, n_nodes, wo.len) < 0) {
                            code = 2;
                            break;
                        }
                    }
                    uint8_t sig[SIG_BYTES];
                    memcpy(sig, P->loops + (Py_ssize_t)nx * 4, 32);
                    sig[32] = P->built[nx] == 3;
                    for (int m = 0; m < n_memos && !use; m++)
                        if (!memcmp(memos[m].sig.buf, sig, SIG_BYTES)) use = memos + m;
                    if (!use && !have_missing) {
                        memcpy(missing, sig, SIG_BYTES);
                        have_missing = 1;
                    }
                }
            }
        }
        const int32_t *off = use ? use->off.buf : NULL;
        if (use && !(off[c] >= 0 && off[c] <= off[c + 1] && off[c + 1] <= use->exits.len / 4)) {
            code = 3; /* malformed memos: raised below, once the lock is released */
            break;
        }
        Py_ssize_t need = n_points + (use ? off[c + 1] - off[c] : 1);
        if (need > cap) {
            Py_ssize_t ncap = cap ? cap : 256;
            while (ncap < need) ncap *= 2;
            int32_t *np_ = realloc(pts, ncap * sizeof(int32_t)), *ns_ = np_ ? realloc(sts, ncap * sizeof(int32_t)) : NULL;
            if (np_) pts = np_;
            if (!np_ || !ns_) { code = -3; break; }
            sts = ns_, cap = ncap;
        }
        if (!use) {
            pts[n_points] = r;
            sts[n_points++] = state;
            continue;
        }
        /* the root's own tokens (its byte is live), the memo's below it, its exits from nx */
        for (int32_t t = nd[r].tok, e = nd[r + 1].tok; t < e; t++) {
            int64_t id = ids[t];
            words[id >> 5] |= (uint32_t)1 << (id & 31);
        }
        root_memo[c] = (int8_t)(use - memos);
        const int32_t *ex = use->exits.buf;
        for (int32_t e = off[c]; e < off[c + 1]; e++) {
            if (ex[e] < 0 || ex[e] >= n_nodes) code = 3;
            pts[n_points] = ex[e];
            sts[n_points++] = nx;
        }
        if (code) break;
    }
    PyThread_release_lock(P->lock);
    /* the memos' tokens below their roots: read by trie position under each such root, or,
     * where that is more tokens than the other roots hold, the memo's words less the
     * other roots' tokens (roots hold disjoint tokens: their first bytes differ) */
    Py_ssize_t n_words = wo.len / 4;
    for (int m = 0; m < n_memos && !code; m++) {
        Py_ssize_t scan = 0, clear = n_words / 2;
        for (int c = 0; c < 256; c++) {
            int32_t r = root_of_byte[c];
            if (r < 0) continue;
            if (root_memo[c] == m) scan += nd[nd[r].end].tok - nd[r + 1].tok;
            else clear += nd[nd[r].end].tok - nd[r].tok;
        }
        if (scan == 0) continue;
        const uint64_t *bits = memos[m].bits.buf;
        if (clear < scan) {
            if (!tmp && !(tmp = malloc(n_words * sizeof(uint32_t)))) { code = -3; break; }
            memcpy(tmp, memos[m].dense.buf, n_words * sizeof(uint32_t));
            for (int c = 0; c < 256; c++) {
                int32_t r = root_of_byte[c];
                if (r < 0 || root_memo[c] == m) continue;
                for (int32_t t = nd[r].tok, e = nd[nd[r].end].tok; t < e; t++) {
                    int64_t id = ids[t];
                    tmp[id >> 5] &= ~((uint32_t)1 << (id & 31));
                }
            }
            for (Py_ssize_t w = 0; w < n_words; w++) words[w] |= tmp[w];
            continue;
        }
        for (int c = 0; c < 256; c++) {
            int32_t r = root_of_byte[c];
            if (r < 0 || root_memo[c] != m) continue;
            for (int32_t t = nd[r + 1].tok, e = nd[nd[r].end].tok; t < e;) {
                if (!(t & 63) && e - t >= 64) { /* a whole 64-bit word of positions */
                    for (uint64_t w = bits[t >> 6]; w; w &= w - 1) {
                        int64_t id = ids[t + __builtin_ctzll(w)];
                        words[id >> 5] |= (uint32_t)1 << (id & 31);
                    }
                    t += 64;
                    continue;
                }
                if ((bits[t >> 6] >> (t & 63)) & 1) {
                    int64_t id = ids[t];
                    words[id >> 5] |= (uint32_t)1 << (id & 31);
                }
                t++;
            }
        }
    }
    if (!code && n_points) {
        Trie t = {nb.buf, sb.buf, mb.buf, ti.buf, n_nodes};
        code = trie_walk(&t, P, pts, sts, n_points, wo.buf, &b);
    }
    if (code < 0) {
        product_error(code);
        goto done;
    }
    if (code == 2) goto done; /* parse_memos set the error */
    if (code == 3) {
        PyErr_SetString(PyExc_ValueError, "walk_roots: malformed memos");
        goto done;
    }
    if (code) {
        PyErr_SetString(PyExc_ValueError, "walk_roots: state out of range");
        goto done;
    }
    if (b.failed) {
        PyErr_NoMemory();
        goto done;
    }
    if (have_missing)
        res = Py_BuildValue("(y#y#y#y#)", VEC(ids, &b), VEC(pos, &b), VEC(state, &b), (char *)missing,
                            (Py_ssize_t)SIG_BYTES);
    else
        res = Py_BuildValue("(y#y#y#O)", VEC(ids, &b), VEC(pos, &b), VEC(state, &b), Py_None);
done:
    bounds_free(&b);
    free(pts);
    free(sts);
    free(tmp);
    for (int m = 0; m < n_memos; m++) {
        PyBuffer_Release(&memos[m].sig); PyBuffer_Release(&memos[m].bits);
        PyBuffer_Release(&memos[m].exits); PyBuffer_Release(&memos[m].off); PyBuffer_Release(&memos[m].dense);
    }
    PyBuffer_Release(&nb); PyBuffer_Release(&sb); PyBuffer_Release(&mb); PyBuffer_Release(&ti); PyBuffer_Release(&rb);
    PyBuffer_Release(&wo);
    return res;
}

/* trie_kills(nodes Node[N+1], table i32[n x 256], accepting u8[n], x, y) -> bytes | None.
 * Two states x, y of one DFA where every token read from x is read from y alike but where
 * x dies (x's language is y's less some words): the trie nodes (preorder, int32) at whose
 * byte x dies while y reads on. Then the walk from x is the walk from y less those nodes'
 * subtrees (mask.py, _key_not_in_walk). Descends the token trie while the two states
 * differ (equal states: the subtree is walked alike); None where the pair is not of that
 * kind (y dies where x does not, or an accepting state is met while they differ). */
typedef struct {
    const Node *nd;
    const int32_t *T;
    const uint8_t *acc;
    int32_t n;
    int32_t *out;
    Py_ssize_t len, cap;
} Kills;

static int kills_rec(Kills *k, int32_t lo, int32_t hi, int32_t x, int32_t y) {
    for (int32_t c = lo; c < hi; c = k->nd[c].end) {
        uint8_t b = k->nd[c].byte;
        int32_t xs = k->T[(Py_ssize_t)x * 256 + b], ys = k->T[(Py_ssize_t)y * 256 + b];
        if (xs == ys) continue;
        if (xs < 0) {
            if (k->len == k->cap) {
                Py_ssize_t cap = k->cap ? 2 * k->cap : 64;
                int32_t *o = realloc(k->out, cap * sizeof(int32_t));
                if (!o) return -1;
                k->out = o, k->cap = cap;
            }
            k->out[k->len++] = c;
            continue;
        }
        if (ys < 0 || xs >= k->n || ys >= k->n || k->acc[xs] || k->acc[ys]) return 1;
        if (k->nd[c].end > c + 1) {
            int r = kills_rec(k, c + 1, k->nd[c].end, xs, ys);
            if (r) return r;
        }
    }
    return 0;
}

static PyObject *trie_kills(PyObject *self, PyObject *args) {
    Py_buffer nb, tb, ab;
    int x, y;
    if (!PyArg_ParseTuple(args, "y*y*y*ii", &nb, &tb, &ab, &x, &y)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n_nodes = nb.len / (Py_ssize_t)sizeof(Node) - 1, n = ab.len;
    Kills k = {nb.buf, tb.buf, ab.buf, (int32_t)n, NULL, 0, 0};
    if (nb.len % sizeof(Node) || n_nodes < 0 || tb.len != n * 256 * 4 || n >= INT32_MAX || x < 0 || y < 0 ||
        x >= n || y >= n) {
        PyErr_SetString(PyExc_ValueError, "trie_kills: bad arguments");
        goto done;
    }
    /* the trie was checked by check_trie: ends nested and in range */
    int r;
    if (k.acc[x] || k.acc[y])
        r = 1;
    else {
        Py_BEGIN_ALLOW_THREADS
        r = x == y ? 0 : kills_rec(&k, 0, (int32_t)n_nodes, x, y);
        Py_END_ALLOW_THREADS
    }
    if (r < 0)
        PyErr_NoMemory();
    else if (r)
        res = Py_NewRef(Py_None);
    else
        res = PyBytes_FromStringAndSize(k.len ? (char *)k.out : empty, k.len * (Py_ssize_t)sizeof(int32_t));
done:
    free(k.out);
    PyBuffer_Release(&nb); PyBuffer_Release(&tb); PyBuffer_Release(&ab);
    return res;
}

/* Earley (the parser's columns and closure) is in _native_earley.c */
extern PyTypeObject EarleyType;
/* Boundaries (the boundary recursion of mask misses) is in _native_boundary.c */
extern PyTypeObject BoundariesType;
/* the OR and compaction of mask words are in _native_words.c */
PyObject *take_words(PyObject *self, PyObject *args);
PyObject *or_parts(PyObject *self, PyObject *args);
PyObject *words_digest(PyObject *self, PyObject *arg);
PyObject *words_equal(PyObject *self, PyObject *args);
PyObject *mask_logits(PyObject *self, PyObject *args);

static PyMethodDef methods[] = {
    {"check_trie", check_trie, METH_VARARGS, "Validate a packed trie once."},
    {"walk_trie", walk_trie, METH_VARARGS, "Walk token trie subtrees from lexer states."},
    {"walk_roots", walk_roots, METH_VARARGS, "Walk the whole token trie from one lexer state."},
    {"trie_kills", trie_kills, METH_VARARGS, "Trie nodes where one DFA state dies and another reads on."},
    {"loop_frontier", loop_frontier, METH_VARARGS, "What a walk does below the roots in a loopy state."},
    {"take_words", take_words, METH_VARARGS, "A walk's words, compact when few, and clear the scratch."},
    {"or_parts", or_parts, METH_VARARGS, "OR dense and compact word parts into a bitmask."},
    {"words_digest", words_digest, METH_O, "A 64-bit digest of a bitmask."},
    {"words_equal", words_equal, METH_VARARGS, "Do two bitmasks hold the same bytes?"},
    {"mask_logits", mask_logits, METH_VARARGS, "Set the logits of a row's masked tokens to -inf."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "SGL's mask kernel.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&DfaType) < 0 || PyType_Ready(&ProductType) < 0 || PyType_Ready(&EarleyType) < 0 ||
        PyType_Ready(&BoundariesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ProductType);
    if (PyModule_AddObject(m, "Product", (PyObject *)&ProductType) < 0) {
        Py_DECREF(&ProductType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DfaType);
    if (PyModule_AddObject(m, "Dfa", (PyObject *)&DfaType) < 0) {
        Py_DECREF(&DfaType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EarleyType);
    if (PyModule_AddObject(m, "Earley", (PyObject *)&EarleyType) < 0) {
        Py_DECREF(&EarleyType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BoundariesType);
    if (PyModule_AddObject(m, "Boundaries", (PyObject *)&BoundariesType) < 0) {
        Py_DECREF(&BoundariesType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", SGL_NATIVE_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
