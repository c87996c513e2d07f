/* MPI test and benchmark program for yurt (tests/e2e/test_mpi_slurm.py, bench/mpi).
 *
 *   mpiprog hello                       one line per rank: "hello rank R of N on HOST pid PID"
 *   mpiprog pingpong [MAXBYTES] [ITERS] ranks 0 and 1 bounce messages of 1 B .. MAXBYTES (powers of
 *                                       four, plus MAXBYTES); rank 0 prints "pingpong BYTES USEC MBPS"
 *                                       (one-way latency in microseconds, bandwidth in MB/s) and checks
 *                                       every byte it gets back
 *   mpiprog allreduce [COUNT] [ITERS]   MPI_Allreduce of COUNT doubles; rank 0 prints
 *                                       "allreduce COUNT USEC" (mean time per call) after checking the sum
 * Every mode ends with "done N" from rank 0, N being the communicator size.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int rank, size;

static void fail(const char *what) {
    fprintf(stderr, "mpiprog: rank %d: %s\n", rank, what);
    MPI_Abort(MPI_COMM_WORLD, 2);
}

static double bounce(char *buf, long bytes, int iters) {
    MPI_Status st;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, (int)bytes, MPI_CHAR, 1, 7, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)bytes, MPI_CHAR, 1, 7, MPI_COMM_WORLD, &st);
        } else if (rank == 1) {
            MPI_Recv(buf, (int)bytes, MPI_CHAR, 0, 7, MPI_COMM_WORLD, &st);
            MPI_Send(buf, (int)bytes, MPI_CHAR, 0, 7, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - t0;
}

static void pingpong(long maxbytes, int iters) {
    if (size < 2) fail("pingpong needs at least 2 ranks");
    char *buf = malloc(maxbytes > 0 ? maxbytes : 1);
    if (!buf) fail("out of memory");
    for (long bytes = 1;; bytes = bytes * 4 > maxbytes && bytes < maxbytes ? maxbytes : bytes * 4) {
        if (bytes > maxbytes) break;
        int n = iters;
        if (bytes >= (1 << 20)) n = iters / 10 > 10 ? iters / 10 : 10;
        for (long i = 0; i < bytes; i++) buf[i] = (char)((i * 31 + bytes) & 0x7f);
        bounce(buf, bytes, n > 10 ? n / 10 : 1); /* warm-up */
        double t = bounce(buf, bytes, n);
        if (rank == 0) {
            for (long i = 0; i < bytes; i++)
                if (buf[i] != (char)((i * 31 + bytes) & 0x7f)) fail("ping-pong data corrupted");
            double one_way = t / (2.0 * n);
            printf("pingpong %ld %.3f %.1f\n", bytes, one_way * 1e6, bytes / one_way / 1e6);
            fflush(stdout);
        }
        if (bytes == maxbytes) break;
    }
    free(buf);
}

static void allreduce(long count, int iters) {
    double *in = malloc(count * sizeof(double)), *out = malloc(count * sizeof(double));
    if (!in || !out) fail("out of memory");
    for (long i = 0; i < count; i++) in[i] = rank + 1 + i % 3;
    MPI_Allreduce(in, out, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) MPI_Allreduce(in, out, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double t = MPI_Wtime() - t0;
    double want0 = size * (size + 1) / 2.0;
    if (out[0] != want0 || out[count - 1] != want0 + size * ((count - 1) % 3)) fail("allreduce sum wrong");
    if (rank == 0) printf("allreduce %ld %.3f\n", count, t / iters * 1e6);
    free(in);
    free(out);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *mode = argc > 1 ? argv[1] : "hello";
    if (strcmp(mode, "hello") == 0) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        printf("hello rank %d of %d on %s pid %d\n", rank, size, host, (int)getpid());
        fflush(stdout);
        MPI_Barrier(MPI_COMM_WORLD);
    } else if (strcmp(mode, "pingpong") == 0) {
        pingpong(argc > 2 ? atol(argv[2]) : 8L << 20, argc > 3 ? atoi(argv[3]) : 200);
    } else if (strcmp(mode, "allreduce") == 0) {
        allreduce(argc > 2 ? atol(argv[2]) : 1024, argc > 3 ? atoi(argv[3]) : 1000);
    } else {
        fail("unknown mode (hello, pingpong, allreduce)");
    }
    if (rank == 0) printf("done %d\n", size);
    MPI_Finalize();
    return 0;
}
