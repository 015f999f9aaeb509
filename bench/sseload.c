/* sseload: an SSE load client that is not the bottleneck.
 *
 * One process, one epoll loop for N subscriber connections (HTTP/1.1, chunked or
 * not, LF or CRLF lines), plus publisher threads (--publishers, 1 by default),
 * each POSTing its share of the events over a keep-alive connection of its own.
 * Every published body is the same JSON for every server:
 *     {"m":"@<seq>@<t_us>@<padding>"}
 * and each server relays it inside its `data:` line, so a subscriber finds
 * "@seq@t_us@" in the line and computes the end-to-end latency from the
 * publisher's send (CLOCK_MONOTONIC, same process) to its own read. With P
 * publishers, publisher p sends seq = i * P + p for its i-th event: gaps and
 * duplicates are counted per publisher (the order between connections is free).
 *
 * Protocol with the driver (bench/run.py):
 *   1. connect the subscribers; print one JSON line {"phase":"ready",...}
 *   2. wait for a line on stdin: "go" publishes, anything else (or EOF) quits
 *   3. publish, wait for the deliveries to drain, print {"phase":"done",...}
 *
 * --port is where the subscribers connect, and the publisher too unless
 * --pub-port gives it another one (a server whose ingest has its own port).
 *
 * --external: no publisher threads; the events come from an upstream started
 * apart (below), which is told to start with the same "go": `count` events are
 * expected at `rate`, and the drain starts when they are due.
 *
 * --upstream: instead of all that, be an SSE upstream (bench/relay.py): listen on
 * 127.0.0.1 (--port, 0: any), print {"phase":"listening","port":P}, answer every
 * request with an endless text/event-stream; on SIGUSR1 write `count` events at
 * `rate` to every connection, as they fall due (a write per connection for the
 * events due since the last one; blocking: a reader slower than the rate slows
 * the upstream, which reports the rate it kept), then print
 * {"phase":"done","published":N,"publish_seconds":S} and keep the streams open.
 *
 * Build: cc -O2 -pthread -o sseload sseload.c
 * 127.0.0.1 only: the host is fixed, not an option.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536

static int port = 0;
static int pub_port = 0;        /* the publisher's port; 0: the same as port */
static const char *sub_path = "/sub";
static const char *pub_path = "/publish";
static int nsubs = 100;
static int nslow = 0;
static long count = 1000;      /* events to publish */
static double rate = 0;        /* events/s; 0 = as fast as possible */
static double max_seconds = 60; /* publisher stops after this */
static int pad = 0;            /* padding bytes in each event */
static int pipeline = 1;       /* requests in flight on each publisher connection */
#define MAX_PUBLISHERS 64
static int npubs = 1;          /* publisher connections, one thread each */
static long batch = 1;         /* events per POST: 1 sends an object, more a JSON array of them; --ndjson: lines per chunk */
static int ndjson = 0;         /* --ndjson: each publisher streams its events as lines of one chunked POST */
static double drain_seconds = 5; /* after the last publish, wait this long at most */
static double connect_seconds = 120;
static int max_pending = 200;  /* subscriptions in flight at once: connect to response head */
static int external = 0;       /* --external: the events come from an upstream process, not publisher threads */
static int upstream = 0;       /* --upstream: be that upstream */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- latency samples (µs) ---- */
static uint32_t *lat = NULL;
static size_t lat_n = 0, lat_cap = 0;
static const size_t LAT_LIMIT = 50u * 1000 * 1000;
static void lat_add(int64_t us) {
    if (us < 0) us = 0;
    if (lat_n == lat_cap) {
        if (lat_cap >= LAT_LIMIT) return;
        lat_cap = lat_cap ? lat_cap * 2 : 1 << 20;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat) { perror("realloc"); exit(2); }
    }
    lat[lat_n++] = us > 0xffffffffLL ? 0xffffffffu : (uint32_t)us;
}
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- subscribers ---- */
enum { S_CONNECTING, S_HEAD, S_BODY, S_DEAD };
enum { C_SIZE, C_DATA, C_CRLF };
typedef struct {
    int fd, state, slow, chunked, cstate;
    long cleft;
    long events;
    int64_t last_seq[MAX_PUBLISHERS]; /* per publisher */
    long gaps, dups;
    size_t hlen, llen;
    char *head;   /* response head being read */
    char *line;   /* SSE line being assembled */
    char csz[24]; int cszlen;
} sub_t;

static sub_t *subs;
static long total_events = 0, connected = 0, failed = 0, closed_early = 0, slow_cut = 0, bad_status = 0;
static int epfd;
static int pending = 0; /* subscriptions between connect() and their response head */

static volatile long published = 0, pub_errors = 0; /* over all publishers (atomic adds) */
static volatile int pub_done = 0;                    /* every publisher has ended */
static volatile double pub_started = 0, pub_ended = 0;
static int64_t last_event_us = 0;

static void on_line(sub_t *s, char *p, size_t n) {
    if (n && p[n - 1] == '\r') n--;
    if (n < 5 || memcmp(p, "data:", 5) != 0) return;
    char *at = memchr(p, '@', n);
    if (!at) return;
    char *end = p + n;
    char *q = at + 1;
    int64_t seq = 0, ts = 0;
    while (q < end && *q >= '0' && *q <= '9') seq = seq * 10 + (*q++ - '0');
    if (q >= end || *q != '@') return;
    q++;
    while (q < end && *q >= '0' && *q <= '9') ts = ts * 10 + (*q++ - '0');
    int64_t t = now_us();
    lat_add(t - ts);
    last_event_us = t;
    s->events++;
    total_events++;
    int64_t *last = &s->last_seq[seq % npubs], i = seq / npubs;
    if (i <= *last) s->dups++;
    else if (i != *last + 1 && *last >= 0) s->gaps += i - *last - 1;
    *last = i;
}

static void feed_sse(sub_t *s, const char *p, size_t n) {
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (s->llen + take < LINE_MAX_BYTES) {
            memcpy(s->line + s->llen, p, take);
            s->llen += take;
        } else s->llen = LINE_MAX_BYTES; /* overlong: dropped */
        if (!nl) return;
        if (s->llen < LINE_MAX_BYTES) on_line(s, s->line, s->llen);
        s->llen = 0;
        p += take + 1;
        n -= take + 1;
    }
}

static void feed_body(sub_t *s, const char *p, size_t n) {
    if (!s->chunked) { feed_sse(s, p, n); return; }
    while (n) {
        if (s->cstate == C_SIZE) {
            char c = *p++; n--;
            if (c == '\n') {
                s->csz[s->cszlen] = 0;
                s->cleft = strtol(s->csz, NULL, 16);
                s->cszlen = 0;
                s->cstate = s->cleft ? C_DATA : C_CRLF;
            } else if (c != '\r' && s->cszlen < 20) s->csz[s->cszlen++] = c;
        } else if (s->cstate == C_DATA) {
            size_t take = n < (size_t)s->cleft ? n : (size_t)s->cleft;
            feed_sse(s, p, take);
            p += take; n -= take; s->cleft -= take;
            if (!s->cleft) s->cstate = C_CRLF;
        } else { /* CRLF after a chunk */
            char c = *p++; n--;
            if (c == '\n') s->cstate = C_SIZE;
        }
    }
}

static void sub_close(sub_t *s, int early) {
    if (s->state == S_DEAD) return;
    if (s->state == S_CONNECTING || s->state == S_HEAD) pending--; /* in flight until the head is in */
    if (s->state == S_CONNECTING) failed++;
    else if (early) closed_early++;
    if (s->state == S_BODY || s->state == S_HEAD) connected -= (s->state == S_BODY);
    epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->state = S_DEAD;
    free(s->head); s->head = NULL;
    free(s->line); s->line = NULL;
}

static void on_head(sub_t *s) {
    /* s->head holds the whole head plus maybe some body after \r\n\r\n */
    char *end = memmem(s->head, s->hlen, "\r\n\r\n", 4);
    if (!end) return;
    size_t headlen = end - s->head + 4;
    if (s->hlen < 12 || memcmp(s->head + 9, "200", 3) != 0) { bad_status++; sub_close(s, 1); return; }
    s->head[headlen - 1] = 0;
    for (char *c = s->head; c < s->head + headlen; c++) *c = (*c >= 'A' && *c <= 'Z') ? *c + 32 : *c;
    s->chunked = strstr(s->head, "transfer-encoding: chunked") != NULL;
    s->state = S_BODY;
    pending--;
    connected++;
    s->line = malloc(LINE_MAX_BYTES);
    if (s->slow) {
        /* read nothing more: only a hang-up or reset is reported */
        struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = s};
        epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    if (s->hlen > headlen) feed_body(s, s->head + headlen, s->hlen - headlen);
    free(s->head); s->head = NULL;
}

static char request[1024];
static size_t request_len;
static int started_connects = 0;

static void start_connect(int i) {
    sub_t *s = &subs[i];
    memset(s, 0, sizeof *s);
    for (int p = 0; p < MAX_PUBLISHERS; p++) s->last_seq[p] = -1;
    s->slow = i < nslow;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) { perror("socket"); s->state = S_DEAD; failed++; return; }
    if (s->slow) { int small = 4096; setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small); }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int r = connect(s->fd, (struct sockaddr *)&a, sizeof a);
    if (r < 0 && errno != EINPROGRESS) { close(s->fd); s->state = S_DEAD; failed++; return; }
    s->state = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = s};
    epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
    pending++;
}

static char rbuf[1 << 18];

static void on_event(sub_t *s, uint32_t evs) {
    if (s->state == S_DEAD) return;
    if (s->slow && s->state == S_BODY) {
        if (evs & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) { slow_cut++; sub_close(s, 0); }
        return;
    }
    if (s->state == S_CONNECTING) {
        int err = 0; socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { sub_close(s, 1); return; }
        if (write(s->fd, request, request_len) != (ssize_t)request_len) { sub_close(s, 1); return; }
        s->state = S_HEAD;
        s->head = malloc(8192);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
        epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    for (;;) {
        ssize_t n = read(s->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            if (s->state == S_HEAD) {
                size_t take = (size_t)n < 8191 - s->hlen ? (size_t)n : 8191 - s->hlen;
                memcpy(s->head + s->hlen, rbuf, take);
                s->hlen += take;
                on_head(s);
                if (s->state == S_BODY && take < (size_t)n && !s->slow) feed_body(s, rbuf + take, n - take);
                if (s->state != S_BODY && s->hlen >= 8191) { sub_close(s, 1); return; }
                if (s->slow && s->state == S_BODY) return;
            } else feed_body(s, rbuf, n);
            if ((size_t)n < sizeof rbuf) return;
        } else if (n == 0) { sub_close(s, 1); return; }
        else { if (errno != EAGAIN && errno != EINTR) sub_close(s, 1); return; }
    }
}

static int epoll_round(int timeout_ms) {
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, timeout_ms);
    for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
    return n;
}

/* ---- publisher ---- */
static int http_read_response(int fd, char *buf, size_t cap, size_t *have, char *body_out, size_t body_cap) {
    /* reads one response from a keep-alive connection; leaves what follows in buf; with body_out,
     * copies the start of its body there (NUL-terminated) */
    for (;;) {
        char *end = *have >= 4 ? memmem(buf, *have, "\r\n\r\n", 4) : NULL;
        if (end) {
            size_t headlen = end - buf + 4;
            int status = (*have >= 12) ? atoi(buf + 9) : 0;
            long clen = 0;
            int chunked = 0;
            for (char *p = buf; p < end; p++) {
                if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) clen = atol(p + 15);
                if ((p == buf || p[-1] == '\n') && strncasecmp(p, "transfer-encoding:", 18) == 0 &&
                    strcasestr(p, "chunked") && strcasestr(p, "chunked") < end) chunked = 1;
            }
            size_t total;
            if (chunked) {
                char *z = memmem(buf + headlen, *have - headlen, "0\r\n\r\n", 5);
                if (!z) goto more;
                total = z - buf + 5;
            } else {
                total = headlen + clen;
                if (*have < total) goto more;
            }
            if (body_out && body_cap) {
                size_t n = total - headlen < body_cap - 1 ? total - headlen : body_cap - 1;
                memcpy(body_out, buf + headlen, n);
                body_out[n] = 0;
            }
            memmove(buf, buf + total, *have - total);
            *have -= total;
            return status;
        }
    more:;
        if (*have >= cap) return -1;
        ssize_t n = read(fd, buf + *have, cap - *have);
        if (n <= 0) { if (n < 0 && errno == EINTR) continue; return -1; }
        *have += n;
    }
}

/* --ndjson: one chunked POST of NDJSON lines, `batch` lines a chunk, written as fast as TCP takes them
 * (or at the rate); the answer's "accepted" is what counts as published. */
static void streaming_publish(int fd, long me, long mine, double my_rate, const char *padding, char *body,
                              size_t bodycap, char *resp, size_t cap) {
    char head[512];
    int hlen = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n", pub_path);
    if (write(fd, head, hlen) != hlen) { __sync_fetch_and_add(&pub_errors, 1); return; }
    double t0 = pub_started;
    long sent = 0;
    while (sent < mine && now_s() - t0 <= max_seconds) {
        if (my_rate > 0) {
            double due = t0 + sent / my_rate, t = now_s();
            if (due > t) {
                struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
                nanosleep(&d, NULL);
            }
        }
        long n = mine - sent < batch ? mine - sent : batch;
        size_t blen = 16; /* room for the chunk size line, written in front once the size is known */
        for (long j = 0; j < n; j++)
            blen += snprintf(body + blen, bodycap - blen, "{\"m\":\"@%ld@%lld@%s\"}\n", (sent + j) * npubs + me,
                             (long long)now_us(), padding);
        char size[16];
        int slen = snprintf(size, sizeof size, "%zx\r\n", blen - 16);
        memcpy(body + 16 - slen, size, slen);
        memcpy(body + blen, "\r\n", 2);
        size_t total = blen + 2 - (16 - slen), off = 0;
        const char *from = body + 16 - slen;
        while (off < total) { /* blocking: a daemon that reads slower holds this thread here (TCP backpressure) */
            ssize_t w = write(fd, from + off, total - off);
            if (w <= 0) { if (w < 0 && errno == EINTR) continue; __sync_fetch_and_add(&pub_errors, 1); return; }
            off += w;
        }
        sent += n;
    }
    if (write(fd, "0\r\n\r\n", 5) != 5) { __sync_fetch_and_add(&pub_errors, 1); return; }
    size_t have = 0;
    char answer[4096];
    int status = http_read_response(fd, resp, cap, &have, answer, sizeof answer);
    if (status < 200 || status >= 300) { __sync_fetch_and_add(&pub_errors, 1); return; }
    char *accepted = strstr(answer, "\"accepted\": ");
    if (accepted) __sync_fetch_and_add(&published, atol(accepted + 12));
}

static void *publisher(void *arg) {
    long me = (long)arg;
    long mine = count / npubs + (me < count % npubs); /* this publisher's share of the events */
    double my_rate = rate / npubs;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(pub_port ? pub_port : port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("publisher connect"); __sync_fetch_and_add(&pub_errors, 1); return NULL; }
    char *padding = malloc(pad + 1);
    memset(padding, 'x', pad); padding[pad] = 0;
    size_t cap = 1 << 16, reqcap = (size_t)(pad + 96) * batch + 1024;
    char *resp = malloc(cap), *req = malloc(reqcap), *body = malloc(reqcap);
    long *inflight = calloc(pipeline, sizeof *inflight); /* events in each POST in flight, oldest first */
    int head = 0, nflight = 0;
    size_t have = 0;
    if (ndjson) {
        streaming_publish(fd, me, mine, my_rate, padding, body, reqcap, resp, cap);
        goto out;
    }
    double t0 = pub_started;
    long sent = 0, done = 0; /* events */
    while (done < mine) {
        while (sent < mine && nflight < pipeline) {
            if (my_rate > 0) {
                double due = t0 + sent / my_rate, t = now_s();
                if (due > t) {
                    if (sent > done) break; /* read what is in flight first */
                    struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
                    nanosleep(&d, NULL);
                }
            }
            if (now_s() - t0 > max_seconds) break;
            long n = mine - sent < batch ? mine - sent : batch; /* events in this POST */
            size_t blen = 0;
            if (batch > 1) body[blen++] = '[';
            for (long j = 0; j < n; j++) {
                blen += snprintf(body + blen, reqcap - blen, "%s{\"m\":\"@%ld@%lld@%s\"}", j ? "," : "",
                                 (sent + j) * npubs + me, (long long)now_us(), padding);
            }
            if (batch > 1) body[blen++] = ']';
            int len = snprintf(req, reqcap,
                               "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               "Content-Length: %zu\r\n\r\n", pub_path, blen);
            if (write(fd, req, len) != len || write(fd, body, blen) != (ssize_t)blen) { __sync_fetch_and_add(&pub_errors, 1); goto out; }
            inflight[(head + nflight++) % pipeline] = n;
            sent += n;
        }
        if (sent == done) break; /* out of time */
        int status = http_read_response(fd, resp, cap, &have, NULL, 0);
        if (status < 0) { __sync_fetch_and_add(&pub_errors, 1); goto out; }
        long n = inflight[head];
        head = (head + 1) % pipeline;
        nflight--;
        done += n;
        if (status < 200 || status >= 300) __sync_fetch_and_add(&pub_errors, 1);
        else __sync_fetch_and_add(&published, n);
    }
out:
    close(fd);
    return NULL;
}

static void *publishers(void *arg) {
    (void)arg;
    pthread_t th[MAX_PUBLISHERS];
    pub_started = now_s();
    for (long p = 0; p < npubs; p++) pthread_create(&th[p], NULL, publisher, (void *)p);
    for (int p = 0; p < npubs; p++) pthread_join(th[p], NULL);
    pub_ended = now_s();
    pub_done = 1;
    return NULL;
}

/* ---- --upstream: an SSE server writing `count` events at `rate` to every reader ---- */
static volatile sig_atomic_t upstream_go = 0;
static void on_usr1(int sig) { (void)sig; upstream_go = 1; }

static int serve_upstream(void) {
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, on_usr1);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1024) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) { perror("upstream listen"); return 2; }
    printf("{\"phase\":\"listening\",\"port\":%d}\n", ntohs(a.sin_port));
    fflush(stdout);
    static int readers[4096];
    int nreaders = 0;
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";
    char *padding = malloc(pad + 1);
    memset(padding, 'x', pad); padding[pad] = 0;
    size_t cap = (size_t)(pad + 64) * 4096 + 1024;
    char *buf = malloc(cap);
    long sent = 0;
    double t0 = 0;
    for (;;) {
        /* take new readers: their request is read and dropped, their answer's head written */
        int fd;
        while (nreaders < 4096 && (fd = accept4(lfd, NULL, NULL, 0)) >= 0) {
            char req[4096];
            ssize_t r = read(fd, req, sizeof req); /* blocking: the request comes with the connect */
            if (r <= 0 || write(fd, head, sizeof head - 1) != (ssize_t)(sizeof head - 1)) { close(fd); continue; }
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            readers[nreaders++] = fd;
        }
        if (!upstream_go || sent >= count) {
            if (upstream_go && sent >= count) break;
            struct timespec d = {0, 5 * 1000 * 1000};
            nanosleep(&d, NULL);
            continue;
        }
        double t = now_s();
        if (t0 == 0) t0 = t;
        if (t - t0 > max_seconds) break;
        long due = rate > 0 ? (long)((t - t0) * rate) + 1 : sent + 1000;
        if (due > count) due = count;
        if (due > sent + 4096) due = sent + 4096;
        if (due <= sent) {
            double wait = t0 + sent / rate - t;
            struct timespec d = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&d, NULL);
            continue;
        }
        size_t blen = 0;
        for (long i = sent; i < due; i++)
            blen += snprintf(buf + blen, cap - blen, "data: {\"m\":\"@%ld@%lld@%s\"}\n\n", i, (long long)now_us(), padding);
        for (int k = 0; k < nreaders; k++) {
            size_t off = 0;
            while (readers[k] >= 0 && off < blen) {
                ssize_t w = write(readers[k], buf + off, blen - off);
                if (w <= 0) { if (w < 0 && errno == EINTR) continue; close(readers[k]); readers[k] = -1; }
                else off += w;
            }
        }
        sent = due;
    }
    printf("{\"phase\":\"done\",\"published\":%ld,\"publish_seconds\":%.3f,\"publish_rate\":%.1f,\"readers\":%d}\n",
           sent, t0 ? now_s() - t0 : 0.0, t0 && now_s() > t0 ? sent / (now_s() - t0) : 0.0, nreaders);
    fflush(stdout);
    pause(); /* the streams stay open until the driver ends this process */
    return 0;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
#define OPT(name) (strcmp(k, name) == 0 && ++i)
        if (OPT("--port")) port = atoi(v);
        else if (OPT("--pub-port")) pub_port = atoi(v);
        else if (OPT("--sub-path")) sub_path = v;
        else if (OPT("--pub-path")) pub_path = v;
        else if (OPT("--subs")) nsubs = atoi(v);
        else if (OPT("--slow")) nslow = atoi(v);
        else if (OPT("--count")) count = atol(v);
        else if (OPT("--rate")) rate = atof(v);
        else if (OPT("--max-seconds")) max_seconds = atof(v);
        else if (OPT("--pad")) pad = atoi(v);
        else if (OPT("--pipeline")) pipeline = atoi(v) > 0 ? atoi(v) : 1;
        else if (OPT("--batch")) batch = atol(v) < 1 ? 1 : atol(v);
        else if (strcmp(k, "--ndjson") == 0) ndjson = 1;
        else if (OPT("--publishers")) npubs = atoi(v) < 1 ? 1 : atoi(v) > MAX_PUBLISHERS ? MAX_PUBLISHERS : atoi(v);
        else if (OPT("--drain-seconds")) drain_seconds = atof(v);
        else if (OPT("--connect-seconds")) connect_seconds = atof(v);
        else if (OPT("--max-pending")) max_pending = atoi(v);
        else if (strcmp(k, "--external") == 0) external = 1;
        else if (strcmp(k, "--upstream") == 0) upstream = 1;
        else { fprintf(stderr, "sseload: unknown option %s\n", k); return 2; }
    }
    if (upstream) return serve_upstream();
    if (!port) { fprintf(stderr, "sseload: --port is required\n"); return 2; }
    int total = nsubs + nslow;
    request_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n", sub_path);
    epfd = epoll_create1(0);
    subs = calloc(total ? total : 1, sizeof *subs);
    double t0 = now_s();
    /* connect, a bounded number at a time, until every one has its response head */
    while (now_s() - t0 < connect_seconds) {
        while (started_connects < total && pending < max_pending) start_connect(started_connects++);
        if (started_connects == total && connected + failed + closed_early + bad_status >= total) break;
        epoll_round(20);
    }
    double connect_time = now_s() - t0;
    printf("{\"phase\":\"ready\",\"connected\":%ld,\"failed\":%ld,\"bad_status\":%ld,\"connect_seconds\":%.3f,\"client_cpu\":%.3f}\n",
           connected, failed + closed_early, bad_status, connect_time, cpu_seconds());
    fflush(stdout);
    /* wait for "go" on stdin, serving the subscribers meanwhile */
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    char cmd[64] = {0};
    for (;;) {
        struct epoll_event evs[512];
        int n = epoll_wait(epfd, evs, 512, 100);
        int got = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) got = 1;
            else on_event(evs[i].data.ptr, evs[i].events);
        }
        if (got) {
            ssize_t r = read(0, cmd, sizeof cmd - 1);
            if (r <= 0) cmd[0] = 0; else cmd[r] = 0;
            break;
        }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
    long events_before = total_events;
    lat_n = 0;
    double cpu0 = cpu_seconds();
    if (strncmp(cmd, "go", 2) == 0 && external) { /* the upstream's events: `count` of them, due by count/rate */
        pub_started = now_s();
        pub_ended = pub_started + (rate > 0 ? count / rate : 0);
        published = count;
        double last_progress = pub_ended;
        long last_total = total_events;
        for (;;) {
            epoll_round(10);
            double t = now_s();
            if (total_events != last_total) { last_total = total_events; last_progress = t; }
            if (t < pub_ended) continue;
            long fast_alive = 0;
            for (int i = nslow; i < total; i++) fast_alive += subs[i].state == S_BODY;
            if (total_events - events_before >= published * fast_alive) break;
            if (t - last_progress > 1.0 || t - pub_ended > drain_seconds) break;
        }
    } else if (strncmp(cmd, "go", 2) == 0) {
        pthread_t th;
        pthread_create(&th, NULL, publishers, NULL);
        double last_progress = 0;
        long last_total = -1;
        for (;;) {
            epoll_round(10);
            if (!pub_done) continue;
            double t = now_s();
            if (total_events != last_total) { last_total = total_events; last_progress = t; }
            long fast_alive = 0;
            for (int i = nslow; i < total; i++) fast_alive += subs[i].state == S_BODY;
            if (total_events - events_before >= published * fast_alive) break;
            if (t - last_progress > 1.0 || t - pub_ended > drain_seconds) break;
        }
        pthread_join(th, NULL);
    }
    double end = now_s();
    double cpu = cpu_seconds() - cpu0;
    long delivered = total_events - events_before;
    long fast_connected = 0, gaps = 0, dups = 0;
    for (int i = nslow; i < total; i++) {
        fast_connected += subs[i].state == S_BODY;
        gaps += subs[i].gaps;
        dups += subs[i].dups;
    }
    qsort(lat, lat_n, sizeof *lat, cmp_u32);
#define PCT(p) (lat_n ? lat[(size_t)((p) * (lat_n - 1))] / 1000.0 : -1.0)
    double pub_secs = pub_ended > pub_started ? pub_ended - pub_started : 0;
    double wall = pub_started > 0 && last_event_us ? last_event_us / 1e6 - pub_started : 0;
    (void)end;
    printf("{\"phase\":\"done\",\"published\":%ld,\"publish_errors\":%ld,\"publish_seconds\":%.3f,"
           "\"publish_rate\":%.1f,\"delivered\":%ld,\"expected\":%ld,\"fast_connected\":%ld,"
           "\"gaps\":%ld,\"dups\":%ld,\"closed_early\":%ld,\"slow_cut\":%ld,\"wall_seconds\":%.3f,"
           "\"deliveries_per_s\":%.1f,\"lat_ms_p50\":%.3f,\"lat_ms_p99\":%.3f,\"lat_ms_max\":%.3f,"
           "\"samples\":%zu,\"client_cpu\":%.3f}\n",
           (long)published, (long)pub_errors, pub_secs, pub_secs > 0 ? published / pub_secs : 0.0,
           delivered, (long)published * (long)(nsubs), fast_connected, gaps, dups, closed_early, slow_cut,
           wall, wall > 0 ? delivered / wall : 0.0, PCT(0.5), PCT(0.99), lat_n ? lat[lat_n - 1] / 1000.0 : -1.0,
           lat_n, cpu);
    fflush(stdout);
    return 0;
}
