/*
 * Misuse of the scrubheap C interface: every refusal is checked by its code, the heap
 * is checked unchanged after each (same counters, invariants hold), and the last error
 * says something. Exits 0 when every refusal was the expected one.
 */
#include "scrubheap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FRAME 4096u
#define NODE_FRAMES 1024u

static unsigned checks;

static void mem_zero(void *ctx, uint64_t first, uint64_t count) { (void)ctx, (void)first, (void)count; }
static bool mem_is_zero(void *ctx, uint64_t first, uint64_t count) {
    (void)ctx, (void)first, (void)count;
    return true;
}
static void mem_copy(void *ctx, uint64_t src, uint64_t dst, uint64_t count) {
    (void)ctx, (void)src, (void)dst, (void)count;
}

static bool always_yield(void *ctx) {
    (void)ctx;
    return true;
}

/* Expects `call` to return `want`, with a last error message and the heap unchanged. */
static void refused(ScrubheapHeap *h, ScrubheapStatus got, ScrubheapStatus want, const char *what, int line) {
    char msg[512];
    size_t n = scrubheap_last_error(msg, sizeof msg);
    if (got != want) {
        fprintf(stderr, "misuse.c:%d: %s: got %d (%s), expected %d (%s); last error: %s\n", line, what, (int)got,
                scrubheap_status_str(got), (int)want, scrubheap_status_str(want), msg);
        exit(1);
    }
    if (n == 0) {
        fprintf(stderr, "misuse.c:%d: %s: refused with no last error message\n", line, what);
        exit(1);
    }
    if (h != NULL && scrubheap_check_invariants(h) != SCRUBHEAP_OK) {
        scrubheap_last_error(msg, sizeof msg);
        fprintf(stderr, "misuse.c:%d: %s: invariants broken after the refusal: %s\n", line, what, msg);
        exit(1);
    }
    printf("refused as expected: %-44s %-32s %s\n", what, scrubheap_status_str(want), msg);
    checks++;
}

#define REFUSED(h, call, want) refused((h), (call), (want), #call, __LINE__)
#define OK(call)                                                                          \
    do {                                                                                  \
        ScrubheapStatus s_ = (call);                                                      \
        if (s_ != SCRUBHEAP_OK) {                                                         \
            char m_[512];                                                                 \
            scrubheap_last_error(m_, sizeof m_);                                          \
            fprintf(stderr, "misuse.c:%d: %s returned %d: %s\n", __LINE__, #call, (int)s_, m_); \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static ScrubheapConfig config(const uint64_t *frames, uint32_t nodes) {
    ScrubheapConfig c = {
        .frame_size = FRAME,
        .node_count = nodes,
        .node_frames = frames,
        .movable_from = NODE_FRAMES / 2,
        .policy = SCRUBHEAP_POLICY_SCRUBHEAP,
        .memory = {.zero = mem_zero, .is_zero = mem_is_zero, .copy = mem_copy},
    };
    return c;
}

static void bad_construction(void) {
    uint64_t frames[2] = {NODE_FRAMES, NODE_FRAMES};
    ScrubheapHeap *h = NULL;
    ScrubheapConfig c = config(frames, 2);
    REFUSED(NULL, scrubheap_heap_new(NULL, &h), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_heap_new(&c, NULL), SCRUBHEAP_E_NULL);
    c.memory.zero = NULL;
    REFUSED(NULL, scrubheap_heap_new(&c, &h), SCRUBHEAP_E_NULL);
    c = config(frames, 0);
    REFUSED(NULL, scrubheap_heap_new(&c, &h), SCRUBHEAP_E_INVALID_CONFIG);
    c = config(NULL, 2);
    REFUSED(NULL, scrubheap_heap_new(&c, &h), SCRUBHEAP_E_NULL);
    c = config(frames, 2);
    c.policy = 99;
    REFUSED(NULL, scrubheap_heap_new(&c, &h), SCRUBHEAP_E_INVALID_ARG);
    c = config(frames, 2);
    c.frame_size = 3000;
    REFUSED(NULL, scrubheap_heap_new(&c, &h), SCRUBHEAP_E_INVALID_CONFIG);
    if (h != NULL) {
        fprintf(stderr, "misuse.c: a refused construction wrote a handle\n");
        exit(1);
    }
}

static void null_handles(void) {
    ScrubheapExtent e;
    ScrubheapStats st;
    ScrubheapAllocRequest req = {.order = 0, .owner = 1, .node = SCRUBHEAP_ANY_NODE};
    REFUSED(NULL, scrubheap_alloc(NULL, &req, &e), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_free(NULL, 0, 0, 1), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_stats(NULL, &st), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_check_invariants(NULL), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_ticket_advance(NULL, NULL, NULL, &e), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_ticket_drop(NULL), SCRUBHEAP_E_NULL);
    REFUSED(NULL, scrubheap_heap_destroy(NULL), SCRUBHEAP_E_NULL);
}

/* Allocates through a ticket, yielding after every batch. */
static void alloc_by_ticket(ScrubheapHeap *h, const ScrubheapAllocRequest *req, ScrubheapExtent *out) {
    ScrubheapTicket *t = NULL;
    ScrubheapStatus s = scrubheap_alloc_start(h, req, out, &t);
    if (s == SCRUBHEAP_PENDING) {
        while ((s = scrubheap_ticket_advance(t, always_yield, NULL, out)) == SCRUBHEAP_PENDING) {
        }
        OK(s);
        OK(scrubheap_ticket_drop(t));
    } else {
        OK(s);
    }
}

static void bad_frames(ScrubheapHeap *h) {
    ScrubheapAllocRequest req = {.order = 4, .owner = 1, .node = 0};
    ScrubheapExtent a, p;
    /* 16 dirty frames are more than one batch (8): scrubheap_alloc will not scrub them with
     * no preemption point; a ticket does. */
    REFUSED(h, scrubheap_alloc(h, &req, &a), SCRUBHEAP_E_NEEDS_SCRUB_TICKET);
    alloc_by_ticket(h, &req, &a);
    REFUSED(h, scrubheap_free(h, a.mfn, a.order, 2), SCRUBHEAP_E_WRONG_OWNER);
    REFUSED(h, scrubheap_free(h, 2 * NODE_FRAMES + 5, 0, 1), SCRUBHEAP_E_OUT_OF_RANGE);
    REFUSED(h, scrubheap_free(h, UINT64_MAX, 0, 1), SCRUBHEAP_E_OUT_OF_RANGE);
    REFUSED(h, scrubheap_free(h, a.mfn + 1, 4, 1), SCRUBHEAP_E_UNALIGNED);
    REFUSED(h, scrubheap_free(h, a.mfn, 19, 1), SCRUBHEAP_E_INVALID_ORDER);
    REFUSED(h, scrubheap_free(h, a.mfn, 5, 1), SCRUBHEAP_E_ORDER_TOO_LARGE);
    REFUSED(h, scrubheap_unpin(h, a.mfn, 0, 1), SCRUBHEAP_E_NOT_PINNED);
    OK(scrubheap_pin(h, a.mfn, 0, 1, NULL, NULL, NULL, &p));
    REFUSED(h, scrubheap_free(h, a.mfn, a.order, 1), SCRUBHEAP_E_PINNED);
    OK(scrubheap_unpin(h, a.mfn, 0, 1));
    OK(scrubheap_free(h, a.mfn, a.order, 1));
    REFUSED(h, scrubheap_free(h, a.mfn, a.order, 1), SCRUBHEAP_E_NOT_ALLOCATED); /* double free */
    uint64_t onlined;
    REFUSED(h, scrubheap_online(h, a.mfn, 16, NULL, NULL, &onlined), SCRUBHEAP_E_NOT_OFFLINE);
    REFUSED(h, scrubheap_online(h, a.mfn, 0, NULL, NULL, &onlined), SCRUBHEAP_E_BAD_RANGE);
}

static void bad_requests(ScrubheapHeap *h) {
    ScrubheapExtent e;
    ScrubheapAllocRequest req = {.order = 19, .owner = 1, .node = SCRUBHEAP_ANY_NODE};
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_INVALID_ORDER);
    req.order = 0, req.node = 7;
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_NO_SUCH_NODE);
    req.node = 0, req.flags = 0x80;
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_INVALID_ARG);
    req.node = SCRUBHEAP_ANY_NODE, req.flags = SCRUBHEAP_ALLOC_EXACT;
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_INVALID_ARG);
    req.flags = SCRUBHEAP_ALLOC_SEALED | SCRUBHEAP_ALLOC_MOVABLE;
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_SEALED_MOVABLE);
    req.node = 0, req.flags = 0;
    REFUSED(h, scrubheap_alloc(h, NULL, &e), SCRUBHEAP_E_NULL);
    REFUSED(h, scrubheap_alloc(h, &req, NULL), SCRUBHEAP_E_NULL);
    req.order = 11, req.flags = SCRUBHEAP_ALLOC_EXACT; /* a whole node is 2^10 frames */
    REFUSED(h, scrubheap_alloc(h, &req, &e), SCRUBHEAP_E_OUT_OF_MEMORY);
    ScrubheapClaim big = {.node = 0, .frames = NODE_FRAMES + 1};
    REFUSED(h, scrubheap_claim_set(h, 3, &big, 1), SCRUBHEAP_E_CLAIM_EXCEEDS_FREE);
    big.node = 9;
    REFUSED(h, scrubheap_claim_set(h, 3, &big, 1), SCRUBHEAP_E_NO_SUCH_NODE);
    REFUSED(h, scrubheap_claim_set(h, 3, NULL, 1), SCRUBHEAP_E_NULL);
    uint64_t z;
    REFUSED(h, scrubheap_scrub_step(h, 2, 16, NULL, NULL, &z), SCRUBHEAP_E_NO_SUCH_NODE);
    ScrubheapNodeStats ns;
    REFUSED(h, scrubheap_node_stats(h, 2, &ns), SCRUBHEAP_E_NO_SUCH_NODE);
    /* A page in the Movable zone cannot be pinned without a migrator to move it. */
    ScrubheapAllocRequest mov = {.order = 0, .owner = 4, .node = 1, .flags = SCRUBHEAP_ALLOC_MOVABLE};
    ScrubheapExtent m, p;
    OK(scrubheap_alloc(h, &mov, &m));
    REFUSED(h, scrubheap_pin(h, m.mfn, 0, 4, NULL, NULL, NULL, &p), SCRUBHEAP_E_MIGRATION_REFUSED);
    ScrubheapOfflined done;
    REFUSED(h, scrubheap_offline(h, m.mfn, 1, NULL, NULL, NULL, NULL, &done), SCRUBHEAP_E_OFFLINE_BLOCKED);
    OK(scrubheap_free(h, m.mfn, 0, 4));
}

/* Calls in the wrong order: the heap destroyed under a live ticket, a finished ticket
 * advanced, a ticket handed over where a heap is expected. */
static void bad_order(ScrubheapHeap *h) {
    ScrubheapAllocRequest req = {.order = 6, .owner = 5, .node = 0};
    ScrubheapExtent e;
    ScrubheapTicket *t = NULL;
    ScrubheapStatus s = scrubheap_alloc_start(h, &req, &e, &t);
    if (s != SCRUBHEAP_PENDING || t == NULL) {
        fprintf(stderr, "misuse.c: a dirty heap gave no ticket (%d)\n", (int)s);
        exit(1);
    }
    REFUSED(h, scrubheap_heap_destroy(h), SCRUBHEAP_E_TICKETS_LIVE);
    REFUSED(h, scrubheap_check_invariants((ScrubheapHeap *)(void *)t), SCRUBHEAP_E_BAD_HANDLE);
    REFUSED(h, scrubheap_ticket_advance((ScrubheapTicket *)(void *)h, NULL, NULL, &e), SCRUBHEAP_E_BAD_HANDLE);
    REFUSED(h, scrubheap_ticket_advance(t, always_yield, NULL, NULL), SCRUBHEAP_E_NULL);
    while ((s = scrubheap_ticket_advance(t, always_yield, NULL, &e)) == SCRUBHEAP_PENDING) {
    }
    OK(s);
    REFUSED(h, scrubheap_ticket_advance(t, always_yield, NULL, &e), SCRUBHEAP_E_TICKET_FINISHED);
    OK(scrubheap_ticket_drop(t));
    REFUSED(h, scrubheap_free(h, e.mfn, e.order, 6), SCRUBHEAP_E_WRONG_OWNER);
    OK(scrubheap_free(h, e.mfn, e.order, 5));
}

int main(void) {
    bad_construction();
    null_handles();
    uint64_t frames[2] = {NODE_FRAMES, NODE_FRAMES};
    ScrubheapConfig c = config(frames, 2);
    c.initially_dirty = true;
    c.scrub_batch = 8; /* a ticket scrubs one batch before its first yield */
    ScrubheapHeap *h = NULL;
    OK(scrubheap_heap_new(&c, &h));
    ScrubheapStats before, after;
    OK(scrubheap_stats(h, &before));
    bad_frames(h);
    bad_requests(h);
    bad_order(h);
    OK(scrubheap_stats(h, &after));
    if (after.allocated != 0 || after.offline != 0 || after.free_clean + after.free_dirty != before.free_dirty) {
        fprintf(stderr, "misuse.c: the refusals changed the heap's counters\n");
        exit(1);
    }
    /* Every code has a message of its own; an unknown one is named so. */
    for (int code = -31; code <= 1; code++)
        if (scrubheap_status_str(code) == NULL) exit(1);
    if (strcmp(scrubheap_status_str(-1000), "unknown status code") != 0) exit(1);
    OK(scrubheap_heap_destroy(h));
    printf("misuse: %u refusals, each with the expected code and the heap unchanged\n", checks);
    return 0;
}
