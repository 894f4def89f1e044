/*
 * What a hypervisor does with scrubheap, in C: boot over dirty memory (a malloc'ed arena
 * full of a previous boot's bytes), build guests through scrub tickets that yield, pin
 * a device page (moved out of the Movable zone by our own migrator), destroy guests,
 * run scrub steps as idle CPUs would, set claims, take memory offline and back. It checks
 * with its own code that every frame it is handed is zero and that the counters add up.
 * Exits 0 when every check passed; prints the first failure and exits 1 otherwise.
 */
#include "scrubheap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FRAME 4096u
#define NODES 2u
#define NODE_FRAMES 2048u
#define TOTAL (NODES * NODE_FRAMES)
#define MOVABLE_FROM 1536u
#define GUESTS 6u
#define GUEST_FRAMES 384u
#define MAX_EXTENTS 64u

static unsigned char *arena;
static uint64_t zeroed_frames, copies, migrations, yields;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "hypervisor.c:%d: check failed: %s: ", __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static const char *last_error(void) {
    static char buf[512];
    scrubheap_last_error(buf, sizeof buf);
    return buf;
}

#define OK(call)                                                              \
    do {                                                                      \
        ScrubheapStatus s_ = (call);                                          \
        CHECK(s_ == SCRUBHEAP_OK, "%s returned %d (%s): %s", #call, (int)s_,   \
              scrubheap_status_str(s_), last_error());                        \
    } while (0)

static unsigned char *frame(uint64_t mfn) { return arena + mfn * FRAME; }

/* The memory callbacks: the heap calls them for frames it owns at that moment. */
static void mem_zero(void *ctx, uint64_t first, uint64_t count) {
    (void)ctx;
    CHECK(first + count <= TOTAL, "zero beyond the arena: %llu+%llu", (unsigned long long)first,
          (unsigned long long)count);
    memset(frame(first), 0, count * FRAME);
    zeroed_frames += count;
}

static bool mem_is_zero(void *ctx, uint64_t first, uint64_t count) {
    (void)ctx;
    const unsigned char *p = frame(first);
    for (uint64_t i = 0; i < count * FRAME; i++)
        if (p[i] != 0) return false;
    return true;
}

static void mem_copy(void *ctx, uint64_t src, uint64_t dst, uint64_t count) {
    (void)ctx;
    memcpy(frame(dst), frame(src), count * FRAME);
    copies += count;
}

/* Preemption: yield after every batch, as a hypercall continuation would. */
static bool always_yield(void *ctx) {
    (void)ctx;
    yields++;
    return true;
}

/* A guest: its extents (its p2m, in short). */
struct guest {
    uint32_t dom;
    unsigned n;
    ScrubheapExtent ext[MAX_EXTENTS];
    uint64_t frames;
};

static struct guest guests[GUESTS + 1];

/* Our migrator, first half: copy one piece of the bytes (the guest keeps using `from`). */
static bool copy_piece(void *ctx, uint32_t owner, ScrubheapExtent from, ScrubheapExtent to, uint64_t offset,
                       uint64_t frames) {
    CHECK(ctx == (void *)guests, "the migrator's context did not come back");
    CHECK(owner >= 1 && owner <= GUESTS, "asked to move frames of unknown dom %u", owner);
    CHECK(offset + frames <= (1ull << from.order), "a piece past the end of the move");
    memcpy(frame(to.mfn + offset), frame(from.mfn + offset), frames * FRAME);
    return true;
}

/* Second half, once every piece is copied: point the guest's extent list at the new frames. */
static bool migrate(void *ctx, uint32_t owner, ScrubheapExtent from, ScrubheapExtent to) {
    CHECK(ctx == (void *)guests, "the migrator's context did not come back");
    CHECK(owner >= 1 && owner <= GUESTS, "asked to move frames of unknown dom %u", owner);
    struct guest *g = &guests[owner];
    migrations++;
    for (unsigned i = 0; i < g->n; i++) {
        ScrubheapExtent e = g->ext[i];
        if (from.mfn < e.mfn || from.mfn >= e.mfn + (1ull << e.order)) continue;
        CHECK(from.order == e.order, "this program pins and offlines whole extents only");
        g->ext[i] = to;
        return true;
    }
    CHECK(0, "dom %u: moved frames %llu not in its extents", owner, (unsigned long long)from.mfn);
    return false;
}

/* Every byte a guest holds is its own tag: nothing lost in a move, nothing overwritten. */
static void check_guest_data(void) {
    for (uint32_t d = 1; d <= GUESTS; d++)
        for (unsigned i = 0; i < guests[d].n; i++) {
            ScrubheapExtent e = guests[d].ext[i];
            const unsigned char *p = frame(e.mfn);
            for (uint64_t b = 0; b < (1ull << e.order) * FRAME; b++)
                CHECK(p[b] == 0x10 + d, "dom %u frame %llu holds %#x", d, (unsigned long long)(e.mfn + b / FRAME), p[b]);
        }
}

static void check_zero_and_fill(struct guest *g, ScrubheapExtent e) {
    uint64_t n = 1ull << e.order;
    CHECK(e.mfn + n <= TOTAL, "extent beyond the arena");
    const unsigned char *p = frame(e.mfn);
    for (uint64_t i = 0; i < n * FRAME; i++)
        CHECK(p[i] == 0, "dom %u handed frame %llu with byte %#x at offset %llu", g->dom,
              (unsigned long long)(e.mfn + i / FRAME), p[i], (unsigned long long)(i % FRAME));
    memset(frame(e.mfn), (int)(0x10 + g->dom), n * FRAME); /* the guest writes its data */
}

/* Builds a guest of GUEST_FRAMES frames, largest extents first, through tickets. */
static void build_guest(ScrubheapHeap *h, uint32_t dom, uint32_t node, uint32_t flags) {
    struct guest *g = &guests[dom];
    memset(g, 0, sizeof *g);
    g->dom = dom;
    ScrubheapClaim claim = {.node = node, .frames = GUEST_FRAMES};
    OK(scrubheap_claim_set(h, dom, &claim, 1));
    static const uint8_t orders[] = {8, 6, 6};
    for (unsigned i = 0; i < sizeof orders; i++) {
        ScrubheapAllocRequest req = {.order = orders[i], .owner = dom, .node = node, .flags = flags};
        ScrubheapExtent e;
        ScrubheapTicket *t = NULL;
        ScrubheapStatus s = scrubheap_alloc_start(h, &req, &e, &t);
        if (s == SCRUBHEAP_PENDING) {
            CHECK(t != NULL, "pending without a ticket");
            unsigned steps = 0;
            while ((s = scrubheap_ticket_advance(t, always_yield, NULL, &e)) == SCRUBHEAP_PENDING)
                CHECK(++steps < 100000, "ticket never finished");
            OK(s);
            OK(scrubheap_ticket_drop(t));
        } else {
            OK(s);
            CHECK(t == NULL, "ready but a ticket was returned");
        }
        CHECK(e.order == orders[i], "asked order %u, got %u", orders[i], e.order);
        check_zero_and_fill(g, e);
        g->ext[g->n++] = e;
        g->frames += 1ull << e.order;
    }
    CHECK(g->frames == GUEST_FRAMES, "dom %u got %llu frames", dom, (unsigned long long)g->frames);
}

static void destroy_guest(ScrubheapHeap *h, uint32_t dom) {
    struct guest *g = &guests[dom];
    for (unsigned i = 0; i < g->n; i++) OK(scrubheap_free(h, g->ext[i].mfn, g->ext[i].order, dom));
    OK(scrubheap_claim_cancel(h, dom));
    g->n = 0;
    g->frames = 0;
}

static uint64_t held_frames(void) {
    uint64_t sum = 0;
    for (unsigned d = 1; d <= GUESTS; d++) sum += guests[d].frames;
    return sum;
}

/* The counters add up: per node to the whole, states to every frame, allocated to what
 * our guests hold. */
static void check_counters(ScrubheapHeap *h, uint64_t offline) {
    ScrubheapStats st;
    OK(scrubheap_stats(h, &st));
    uint64_t clean = 0, dirty = 0, alloc = 0, off = 0, rsv = 0, parked = 0;
    for (uint32_t n = 0; n < NODES; n++) {
        ScrubheapNodeStats ns;
        OK(scrubheap_node_stats(h, n, &ns));
        uint64_t states = ns.free_clean + ns.free_dirty + ns.allocated + ns.offline + ns.reserved;
        CHECK(states == NODE_FRAMES, "node %u states add to %llu", n, (unsigned long long)states);
        CHECK(ns.parked_dirty <= ns.reserved, "node %u: %llu parked dirty of %llu reserved", n,
              (unsigned long long)ns.parked_dirty, (unsigned long long)ns.reserved);
        clean += ns.free_clean, dirty += ns.free_dirty, alloc += ns.allocated, off += ns.offline;
        rsv += ns.reserved, parked += ns.parked_dirty;
    }
    CHECK(clean == st.free_clean && dirty == st.free_dirty && alloc == st.allocated && off == st.offline &&
              rsv == st.reserved && parked == st.parked_dirty,
          "node counters do not sum to the heap's");
    /* C has no per-CPU fast path: nothing is ever in a reserve. */
    CHECK(st.reserved == 0 && st.parked_dirty == 0, "%llu frames reserved through C",
          (unsigned long long)st.reserved);
    CHECK(st.allocated == held_frames(), "heap says %llu allocated, guests hold %llu",
          (unsigned long long)st.allocated, (unsigned long long)held_frames());
    CHECK(st.offline == offline, "offline %llu, expected %llu", (unsigned long long)st.offline,
          (unsigned long long)offline);
    OK(scrubheap_check_invariants(h));
}

static uint64_t scrub_until_clean(ScrubheapHeap *h) {
    uint64_t total = 0;
    for (unsigned round = 0; round < 10000; round++) {
        uint64_t any = 0;
        for (uint32_t n = 0; n < NODES; n++) {
            uint64_t z = 0;
            OK(scrubheap_scrub_step(h, n, 512, NULL, NULL, &z));
            CHECK(z <= 512, "scrub step beyond its budget");
            any += z;
        }
        total += any;
        if (any == 0) return total;
    }
    CHECK(0, "scrubbing never finished");
    return 0;
}

/* Boot: the arena holds a previous boot's bytes, and the heap knows it is all dirty. */
static ScrubheapHeap *boot(void) {
    arena = malloc((size_t)TOTAL * FRAME);
    CHECK(arena != NULL, "no arena");
    memset(arena, 0xA5, (size_t)TOTAL * FRAME); /* a previous boot's bytes */

    uint64_t node_frames[NODES] = {NODE_FRAMES, NODE_FRAMES};
    ScrubheapConfig cfg = {
        .frame_size = FRAME,
        .first_frame = 0,
        .node_count = NODES,
        .node_frames = node_frames,
        .movable_from = MOVABLE_FROM,
        .policy = SCRUBHEAP_POLICY_SCRUBHEAP,
        .scrub_batch = 32,
        .initially_dirty = true,
        .memory = {.ctx = NULL, .zero = mem_zero, .is_zero = mem_is_zero, .copy = mem_copy},
    };
    ScrubheapHeap *h = NULL;
    OK(scrubheap_heap_new(&cfg, &h));
    uint32_t nodes = 0;
    OK(scrubheap_node_count(h, &nodes));
    CHECK(nodes == NODES, "node count %u", nodes);
    ScrubheapStats st;
    OK(scrubheap_stats(h, &st));
    CHECK(st.free_dirty == TOTAL, "boot: %llu dirty of %u", (unsigned long long)st.free_dirty, TOTAL);

    return h;
}

/* Build guests on dirty memory: every extent goes through a ticket that yields. */
static void build_all(ScrubheapHeap *h) {
    for (uint32_t d = 1; d <= GUESTS; d++) build_guest(h, d, d % NODES, d % 2 ? SCRUBHEAP_ALLOC_MOVABLE : 0);
    CHECK(yields > 0, "no ticket ever yielded on dirty memory");
    check_counters(h, 0);
    ScrubheapStats st;
    OK(scrubheap_stats(h, &st));
    CHECK(st.scrubbed_in_place >= held_frames() * FRAME, "in-place bytes %llu below what guests got",
          (unsigned long long)st.scrubbed_in_place);

}

static void pin_and_hot_remove(ScrubheapHeap *h) {
    /* A device pins a page of guest 1 (movable): our migrator moves it to Normal memory. */
    ScrubheapMigrator mig = {.ctx = guests, .copy = copy_piece, .switch_to = migrate};
    ScrubheapExtent last = guests[1].ext[guests[1].n - 1], pinned;
    OK(scrubheap_pin(h, last.mfn, last.order, 1, &mig, NULL, NULL, &pinned));
    CHECK(pinned.mfn % NODE_FRAMES < MOVABLE_FROM, "pinned frames still in the Movable zone");
    CHECK(migrations == 1, "%llu migrations for one pin", (unsigned long long)migrations);
    check_guest_data();

    /* Hot-remove node 1's Movable zone: the guests living there move out, the pinned page
     * is no longer there; then it comes back (dirty). */
    /* As a job, yielding after every step as a hypervisor returning to its scheduler. */
    uint64_t off_first = NODE_FRAMES + MOVABLE_FROM, off_count = NODE_FRAMES - MOVABLE_FROM, calls = 0;
    ScrubheapJob *job = NULL;
    ScrubheapJobDone jd;
    ScrubheapStatus s;
    OK(scrubheap_offline_start(h, off_first, off_count, &job));
    while ((s = scrubheap_job_advance(job, &mig, NULL, always_yield, NULL, &jd)) == SCRUBHEAP_PENDING) calls++;
    OK(s);
    CHECK(calls > 1, "the offline job returned %llu times before it ended", (unsigned long long)calls);
    CHECK(scrubheap_job_advance(job, &mig, NULL, NULL, NULL, &jd) == SCRUBHEAP_E_JOB_FINISHED, "advanced an ended job");
    OK(scrubheap_job_drop(job));
    ScrubheapOfflined done = jd.offlined;
    CHECK(done.frames == off_count, "offline took %llu of %llu frames", (unsigned long long)done.frames,
          (unsigned long long)off_count);
    CHECK(done.migrated_chunks > 0 && migrations == 1 + done.migrated_chunks, "offline moved %llu chunks",
          (unsigned long long)done.migrated_chunks);
    check_guest_data();
    check_counters(h, off_count);
    OK(scrubheap_online_start(h, off_first, off_count, &job));
    while ((s = scrubheap_job_advance(job, NULL, NULL, always_yield, NULL, &jd)) == SCRUBHEAP_PENDING) {}
    OK(s);
    OK(scrubheap_job_drop(job));
    CHECK(jd.onlined == off_count, "onlined %llu", (unsigned long long)jd.onlined);
    OK(scrubheap_unpin(h, pinned.mfn, pinned.order, 1));
    check_counters(h, 0);

}

static void destroy_and_scrub(ScrubheapHeap *h) {
    ScrubheapStats st;
    /* Destroy half the guests: their frames go back dirty, nothing is scrubbed yet. */
    uint64_t before = zeroed_frames, freed = guests[1].frames + guests[2].frames + guests[3].frames;
    destroy_guest(h, 1), destroy_guest(h, 2), destroy_guest(h, 3);
    CHECK(zeroed_frames == before, "free scrubbed frames");
    OK(scrubheap_stats(h, &st));
    CHECK(st.free_dirty >= freed, "freed %llu frames, only %llu dirty", (unsigned long long)freed,
          (unsigned long long)st.free_dirty);
    check_counters(h, 0);

    /* Idle CPUs scrub everything; the background accounting covers it. */
    uint64_t dirty = st.free_dirty, scrubbed = scrub_until_clean(h);
    OK(scrubheap_stats(h, &st));
    CHECK(st.free_dirty == 0 && scrubbed == dirty, "scrubbed %llu of %llu dirty", (unsigned long long)scrubbed,
          (unsigned long long)dirty);
    CHECK(st.scrubbed_background == scrubbed * FRAME, "background bytes %llu",
          (unsigned long long)st.scrubbed_background);
    check_counters(h, 0);

}

static void reboot_and_tear_down(ScrubheapHeap *h) {
    ScrubheapStats st;
    /* Reboot storm: the destroyed guests come back on memory others dirtied; all zero. */
    destroy_guest(h, 4);
    for (uint32_t d = 1; d <= 4; d++) build_guest(h, d, (d + 1) % NODES, 0);
    check_counters(h, 0);

    for (uint32_t d = 1; d <= GUESTS; d++) destroy_guest(h, d);
    scrub_until_clean(h);
    check_counters(h, 0);
    OK(scrubheap_stats(h, &st));
    CHECK(st.free_clean == TOTAL, "after all, %llu clean of %u", (unsigned long long)st.free_clean, TOTAL);
}

int main(void) {
    ScrubheapHeap *h = boot();
    build_all(h);
    pin_and_hot_remove(h);
    destroy_and_scrub(h);
    reboot_and_tear_down(h);
    OK(scrubheap_heap_destroy(h));
    free(arena);
    printf("hypervisor: %u guests built over dirty memory and 4 rebuilt, %llu ticket yields, %llu frames zeroed, "
           "%llu migrations; every frame handed over was zero and the counters added up\n",
           GUESTS, (unsigned long long)yields, (unsigned long long)zeroed_frames, (unsigned long long)migrations);
    return 0;
}
