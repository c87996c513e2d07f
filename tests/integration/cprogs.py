"""Tiny static C programs the runtime tests put into a busybox root filesystem.

``cma``: ``serve FILE [SECONDS]`` writes ``PID ADDRESS USERNS`` to FILE and waits; ``read FILE``
reads 16 bytes of the server's memory with ``process_vm_readv`` (CMA, as MPI's shared-memory
single copy does) and prints ``cma-ok ...`` or ``cma-error ...``; no arguments: print the user
namespace.  ``hog``: ``mem MIB`` allocates and touches MIB MiB, reporting every 16 MiB;
``fork N`` forks up to N waiting children and prints how many forks succeeded (bounded: safe
even if a limit were not applied).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CMA = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
static char buf[64] = "yurt-cma-payload";
int main(int argc, char **argv) {
    char ns[64] = "";
    ssize_t n = readlink("/proc/self/ns/user", ns, sizeof ns - 1);
    if (n > 0) ns[n] = 0;
    if (argc >= 3 && strcmp(argv[1], "serve") == 0) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
        FILE *f = fopen(tmp, "w");
        if (!f) { perror(tmp); return 2; }
        fprintf(f, "%d %lu %s\n", (int)getpid(), (unsigned long)buf, ns);
        fclose(f);
        rename(tmp, argv[2]);
        sleep(argc > 3 ? atoi(argv[3]) : 5);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "read") == 0) {
        FILE *f = NULL; int pid; unsigned long addr; char other[64];
        for (int i = 0; i < 400 && !(f = fopen(argv[2], "r")); i++) usleep(50000);
        if (!f || fscanf(f, "%d %lu %63s", &pid, &addr, other) != 3) { fprintf(stderr, "no server\n"); return 2; }
        char out[64] = "";
        struct iovec l = {out, 16}, r = {(void *)addr, 16};
        ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (got < 0) { printf("cma-error %s mine=%s server=%s\n", strerror(errno), ns, other); return 1; }
        printf("cma-ok %.*s mine=%s server=%s\n", (int)got, out, ns, other);
        return 0;
    }
    printf("%s\n", ns);
    return 0;
}
"""

HOG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "mem") == 0) {
        int mb = atoi(argv[2]);
        for (int i = 1; i <= mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) { printf("malloc failed at %d\n", i); return 3; }
            memset(p, 1, 1 << 20);
            if (i % 16 == 0) { printf("allocated %d MiB\n", i); fflush(stdout); }
        }
        printf("allocated all %d MiB\n", mb);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "fork") == 0) {
        int n = atoi(argv[2]), made = 0, fds[2];
        if (pipe(fds)) return 4;
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0) break;
            if (pid == 0) { char c; close(fds[1]); if (read(fds[0], &c, 1) < 0) _exit(1); _exit(0); }
            made++;
        }
        close(fds[1]);
        while (wait(NULL) > 0) {}
        printf("forked %d of %d\n", made, n);
        return 0;
    }
    return 2;
}
"""

SOURCES = {"cma": CMA, "hog": HOG}


def add_programs(rootfs: Path, workdir: Path, *names: str) -> None:
    """Compile ``names`` statically (gcc) into ``rootfs``; skip the test when that is impossible."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc missing (apt-get install gcc)")
    for name in names:
        src = workdir / f"{name}.c"
        src.write_text(SOURCES[name])
        out = rootfs / name
        proc = subprocess.run([gcc, "-static", "-O2", "-o", str(out), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot link a static program (libc6-dev missing?): {proc.stderr.strip()[-200:]}")
        out.chmod(0o755)
