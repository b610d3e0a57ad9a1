// A minimal CUDA activity tracer, loaded by the driver through CUDA_INJECTION64_PATH.
//
// The GPU box's Nsight Systems records but cannot import its own traces ("Importer error
// status"), so this library asks CUPTI for the same activity records and writes them as
// text lines to $CUPTI_TRACE_OUT:
//   K start end gridX gridY gridZ blockX blockY blockZ stream correlation name   (kernels)
//   M start end copyKind bytes stream                                            (copies)
//   A start end correlation name                                    (driver API calls)
// A kernel and the API call that launched it share the correlation id.
// Times are CUPTI's nanosecond timestamps. `bench/trace_summary.py --cupti FILE` reads them.
// Built on the box by `bash bench/gpu.sh profile`, where the record struct names are
// taken from the installed cupti_activity.h (KERNEL_T, MEMCPY_T).
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *out;

static void CUPTIAPI request(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = aligned_alloc(8, 8 << 20);
    *size = *buffer ? 8 << 20 : 0;  // no buffer: CUPTI drops the records
    *max_records = 0;
}

static void CUPTIAPI complete(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                              size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *record = NULL;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
            record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            KERNEL_T *k = (KERNEL_T *)record;
            fprintf(out, "K %llu %llu %d %d %d %d %d %d %u %u %s\n",
                    (unsigned long long)k->start, (unsigned long long)k->end, k->gridX,
                    k->gridY, k->gridZ, k->blockX, k->blockY, k->blockZ, k->streamId,
                    k->correlationId, k->name ? k->name : "?");
        } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            MEMCPY_T *m = (MEMCPY_T *)record;
            fprintf(out, "M %llu %llu %u %llu %u\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, (unsigned)m->copyKind,
                    (unsigned long long)m->bytes, m->streamId);
        } else if (record->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
            CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)record;
            const char *name = "?";
            cuptiGetCallbackName(CUPTI_CB_DOMAIN_DRIVER_API, a->cbid, &name);
            fprintf(out, "A %llu %llu %u %s\n", (unsigned long long)a->start,
                    (unsigned long long)a->end, a->correlationId, name);
        }
    }
    free(buffer);
}

static void finish(void) {
    cuptiActivityFlushAll(1);
    if (out) fclose(out);
}

int InitializeInjection(void) {
    const char *path = getenv("CUPTI_TRACE_OUT");
    out = fopen(path ? path : "/tmp/cupti_trace.txt", "w");
    if (!out) return 0;
    if (cuptiActivityRegisterCallbacks(request, complete) != CUPTI_SUCCESS) return 0;
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    if (!getenv("CUPTI_TRACE_NO_API")) cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
    atexit(finish);
    return 1;
}
