/*
 * A fake NVMe controller thread for testing the queue core on the host (test-only, never shipped).
 * It serves I/O queue pairs whose rings and doorbells are ordinary memory: it watches each SQ Tail
 * Doorbell, fetches the SQEs, runs Read, Write and Flush against a RAM disk through PRPs that must
 * fall inside the windows of an emulated IOMMU, and posts CQEs with the Phase Tag and SQHD,
 * never past the CQ head the host rang (back-pressure).
 *
 * Faults it injects: completion delays, out-of-order completion within a window, error statuses,
 * completions that never come (dropped commands, later releasable), and whatever a small queue
 * does by itself (phase wraps, a full SQ). What it checks of the host: doorbell values in range,
 * no CID twice in flight on one SQ, data pointers inside the windows and aligned as NVMe requires.
 */
#ifndef LIBNVM_FAKE_CTRL_H
#define LIBNVM_FAKE_CTRL_H
#include <stdint.h>

#define FC_API __attribute__((visibility("default")))

struct fc_config {
    uint32_t lba_bytes;     /* 512 or 4096 */
    uint32_t nsid;          /* the namespace; others get Invalid Namespace */
    uint64_t blocks;        /* RAM disk size in blocks */
    uint32_t delay_min_us;  /* each completion waits at least this long after its fetch */
    uint32_t delay_max_us;  /* and at most this long (uniform) */
    uint32_t reorder;       /* complete any of the first `reorder` pending commands (0/1: in order) */
    uint32_t error_ppm;     /* this share completes with Unrecovered Read Error (Media and Data Integrity 81h) */
    uint32_t drop_ppm;      /* this share is never completed (until fc_release_dropped) */
    uint32_t seed;
    uint64_t drop_nth;      /* also never complete the Nth command fetched (1-based; 0: none) */
};

/* Indices of fc_stats() out[]. */
enum {
    FC_FETCHED,       /* SQEs fetched */
    FC_COMPLETED,     /* CQEs posted */
    FC_ERRORS,        /* of them, with an injected error status */
    FC_DROPPED,       /* commands held without completion */
    FC_BAD_DOORBELL,  /* doorbell writes out of range */
    FC_DUP_CID,       /* a CID fetched while one of the same value was in flight on that SQ */
    FC_BAD_PRP,       /* data pointers outside the windows or misaligned */
    FC_CQ_FULL,       /* times a completion waited for the host to free CQ entries */
    FC_MAX_INFLIGHT,  /* most commands in flight on one SQ at once */
    FC_READS,
    FC_WRITES,
    FC_BAD_OPCODE,
    FC_STATS
};

struct fc;

/* A controller with its RAM disk; NULL on a bad config or no memory. Not started. */
FC_API struct fc *fc_create(const struct fc_config *cfg, void *bar);
/* Bus addresses [bus, bus+bytes) map to host memory at `host` (the emulated IOMMU). */
FC_API int32_t fc_add_window(struct fc *fc, uint64_t bus, void *host, uint64_t bytes);
/* Serve SQ `qid` with CQ of the same id: rings at `sq` (entries x 64) and `cq` (entries x 16),
 * doorbells in `bar` where DSTRD 0 puts them. The host starts with tail 0, head 0, phase 1. */
FC_API int32_t fc_add_queue(struct fc *fc, uint32_t qid, void *sq, void *cq, uint32_t entries);
FC_API int32_t fc_start(struct fc *fc);
/* Stop the thread and wait for it; fc_destroy() frees everything. */
FC_API int32_t fc_stop(struct fc *fc);
FC_API void fc_destroy(struct fc *fc);
/* Complete every dropped command now with `status` (e.g. Command Abort Requested, 07h). */
FC_API int32_t fc_release_dropped(struct fc *fc, uint32_t status);
FC_API void fc_stats(struct fc *fc, uint64_t *out);
/* Change the injected error rate of commands fetched from now on. */
FC_API void fc_set_error_ppm(struct fc *fc, uint32_t ppm);
/* The RAM disk, for checking what was written. */
FC_API void *fc_disk(struct fc *fc);
/* Convenience for tests written in TypeScript: fc_create from plain values. */
FC_API struct fc *fc_create_simple(uint32_t lba_bytes, uint32_t blocks, uint32_t delay_min_us, uint32_t delay_max_us, uint32_t reorder,
                                   uint32_t error_ppm, uint32_t drop_ppm, uint32_t seed, uint32_t drop_nth, void *bar);

#endif
