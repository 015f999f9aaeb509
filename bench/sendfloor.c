/* sendfloor: what the kernel's loopback sends of a fan-out cost, with no Python, no parsing, no encoding.
 *
 *     cc -O2 -Wall -o /tmp/sendfloor bench/sendfloor.c
 *     /tmp/sendfloor [subscribers 100] [events/s 50000] [bytes an event 110] [window µs 1000] [seconds 5]
 *
 * The relay's p99 target (issue 17) asks for 50,000 events/s to 100 subscribers on one core. Whatever
 * a relay does per event, it must hand the bytes to 100 sockets: at a flush window of W, that is
 * 100 send()s every W, each carrying the events of the window. This program does only that, the way
 * the sink does it (one non-blocking send() per subscriber per window, all of a window's frames in
 * one buffer): the parent, on CPU 0, writes; a forked child, on CPU 1, reads the 100 connections with
 * epoll and discards. It prints the writer's user and system CPU per second of the run: the share of
 * one core a relay spends on its sends alone, before any of its own work. Bounded: `seconds` long,
 * 127.0.0.1 only. A short send (the reader behind) is counted and its rest dropped (reported).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) perror("sched_setaffinity");
}

static double seconds_of(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static int reader(int port, int subscribers) {
    pin(1);
    int ep = epoll_create1(0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < subscribers; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 2; }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    static char buf[1 << 16];
    struct epoll_event events[128];
    int open = subscribers;
    while (open > 0) {
        int n = epoll_wait(ep, events, 128, 10000);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            ssize_t got = read(events[i].data.fd, buf, sizeof buf);
            if (got <= 0) { close(events[i].data.fd); open--; }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    int subscribers = argc > 1 ? atoi(argv[1]) : 100;
    long rate = argc > 2 ? atol(argv[2]) : 50000;
    int frame = argc > 3 ? atoi(argv[3]) : 110;
    long window_us = argc > 4 ? atol(argv[4]) : 1000;
    double seconds = argc > 5 ? atof(argv[5]) : 5;
    if (subscribers < 1 || subscribers > 1000 || rate < 1 || rate > 1000000 || frame < 1 || frame > 65536
        || window_us < 50 || window_us > 1000000 || seconds <= 0 || seconds > 60) {
        fprintf(stderr, "usage: sendfloor [subscribers 1-1000] [events/s] [bytes an event] [window µs >= 50] [seconds <= 60]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1024) < 0
        || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) { perror("listen"); return 2; }
    pid_t child = fork();
    if (child == 0) return reader(ntohs(a.sin_port), subscribers);
    pin(0);
    int *fds = calloc(subscribers, sizeof *fds);
    for (int i = 0; i < subscribers; i++) {
        fds[i] = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* as Twisted sets it */
    }
    size_t cap = (size_t)((rate * window_us) / 1000000 + 2) * frame;
    char *buf = malloc(cap);
    memset(buf, 'x', cap);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    struct timespec start, next;
    clock_gettime(CLOCK_MONOTONIC, &start);
    next = start;
    long long due_total = (long long)(rate * seconds), sent_events = 0, sends = 0, short_sends = 0;
    while (sent_events < due_total) {
        next.tv_nsec += window_us * 1000;
        while (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        double elapsed = (next.tv_sec - start.tv_sec) + (next.tv_nsec - start.tv_nsec) / 1e9;
        long long due = (long long)(elapsed * rate);
        if (due > due_total) due = due_total;
        size_t len = (size_t)(due - sent_events) * frame;
        if (len == 0) continue;
        if (len > cap) len = cap;
        for (int i = 0; i < subscribers; i++) {
            ssize_t n = send(fds[i], buf, len, 0);
            sends++;
            if (n < (ssize_t)len) short_sends++;
        }
        sent_events = due;
    }
    getrusage(RUSAGE_SELF, &after);
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    double wall = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    double user = seconds_of(after.ru_utime) - seconds_of(before.ru_utime);
    double sys = seconds_of(after.ru_stime) - seconds_of(before.ru_stime);
    for (int i = 0; i < subscribers; i++) close(fds[i]);
    waitpid(child, NULL, 0);
    printf("subscribers %d, %ld events/s of %d B, window %ld us, %.1f s: %lld sends (%lld short); "
           "writer CPU share user %.3f + system %.3f = %.3f of a core; %.2f us a send, %.2f us an event\n",
           subscribers, rate, frame, window_us, wall, sends, short_sends, user / wall, sys / wall,
           (user + sys) / wall, (user + sys) / sends * 1e6, (user + sys) / sent_events * 1e6);
    return 0;
}
