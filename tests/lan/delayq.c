/* delayq: hold every packet of one NFQUEUE queue for a fixed time, then
 * accept it, in arrival order.
 *
 * It stands in for the missing `netem` qdisc in tests/lan/lan.sh: an iptables
 * rule inside a network namespace sends the link's packets to queue N, and one
 * delayq per namespace releases them D ms later. A constant delay keeps FIFO
 * order, so the pending packets are a ring of (packet id, due time) and one
 * timerfd armed for the oldest one; the loop sleeps in poll() between packets
 * (no busy-spin). Only packet metadata is copied to user space; the payload
 * stays in the kernel. Verdicts go out in batches ("accept every id up to X"),
 * which also releases a packet whose queue message the socket dropped.
 *
 * It does not shape bandwidth (tbf does that), reorder, drop, or add jitter.
 *
 *   delayq --queue 0 --delay-ms 1 [--pidfile F] [--rt] [--maxlen N]
 *   delayq --queue 0 --probe      (bind the queue and exit: 0 if it works)
 *
 * SIGTERM/SIGINT: accept what is still held, print counters, exit 0.
 * Build: cc -O2 delayq.c -lnetfilter_queue -o delayq
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

/* ------------------------------------------------------------------------ */
/* Pending packets: a growable ring in arrival (= release) order            */

struct held {
    uint32_t id;     /* NFQUEUE packet id */
    uint64_t due_ns; /* CLOCK_MONOTONIC time to accept it */
};

struct ring {
    struct held *v;
    size_t cap; /* power of two */
    size_t head, n;
};

static int ring_push(struct ring *r, struct held h) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        struct held *v = malloc(cap * sizeof *v);
        if (!v) return -1;
        for (size_t i = 0; i < r->n; i++) v[i] = r->v[(r->head + i) & (r->cap - 1)];
        free(r->v);
        r->v = v, r->cap = cap, r->head = 0;
    }
    r->v[(r->head + r->n) & (r->cap - 1)] = h;
    r->n++;
    return 0;
}

static const struct held *ring_front(const struct ring *r) {
    return r->n ? &r->v[r->head] : NULL;
}

static void ring_pop(struct ring *r) {
    r->head = (r->head + 1) & (r->cap - 1);
    r->n--;
}

/* ------------------------------------------------------------------------ */
/* State                                                                    */

struct delayq {
    struct nfq_handle *h;
    struct nfq_q_handle *qh;
    int nfq_fd, timer_fd, sig_fd;
    uint64_t delay_ns;
    struct ring ring;
    uint64_t armed_ns;        /* due time the timer is armed for; 0 = disarmed */
    uint64_t n_packets;       /* packets seen */
    uint64_t n_verdicts;      /* verdict messages sent */
    uint64_t n_overruns;      /* ENOBUFS: queue messages lost by the socket */
    uint64_t max_held;        /* largest number of packets held at once */
    uint64_t max_late_ns;     /* worst lateness of a release vs its due time */
    int failed;               /* a fatal error in the packet callback */
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Accept every packet with id <= last (the kernel's batch verdict). */
static int accept_upto(struct delayq *q, uint32_t last) {
    q->n_verdicts++;
    if (nfq_set_verdict_batch(q->qh, last, NF_ACCEPT) < 0) {
        fprintf(stderr, "delayq: verdict for id %u failed: %s\n", last, strerror(errno));
        return -1;
    }
    return 0;
}

/* Release the packets whose time has come; returns -1 on a failed verdict. */
static int release_due(struct delayq *q, uint64_t now) {
    const struct held *f;
    uint32_t last = 0;
    int any = 0;
    while ((f = ring_front(&q->ring)) && f->due_ns <= now) {
        if (now - f->due_ns > q->max_late_ns) q->max_late_ns = now - f->due_ns;
        last = f->id, any = 1;
        ring_pop(&q->ring);
    }
    return any ? accept_upto(q, last) : 0;
}

/* Arm the timer for the oldest held packet (or disarm it when none is). */
static int arm_timer(struct delayq *q) {
    const struct held *f = ring_front(&q->ring);
    uint64_t due = f ? f->due_ns : 0;
    if (due == q->armed_ns) return 0;
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(due / 1000000000u);
    its.it_value.tv_nsec = (long)(due % 1000000000u);
    if (timerfd_settime(q->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        fprintf(stderr, "delayq: timerfd_settime: %s\n", strerror(errno));
        return -1;
    }
    q->armed_ns = due;
    return 0;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg,
                     struct nfq_data *nfa, void *arg) {
    (void)qh, (void)msg;
    struct delayq *q = arg;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    q->n_packets++;
    if (q->delay_ns == 0) return accept_upto(q, id);
    struct held h = {.id = id, .due_ns = now_ns() + q->delay_ns};
    if (ring_push(&q->ring, h) < 0) {
        fprintf(stderr, "delayq: out of memory holding %zu packets\n", q->ring.n);
        q->failed = 1;
        return -1;
    }
    if (q->ring.n > q->max_held) q->max_held = q->ring.n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Setup and teardown                                                        */

static void close_queue(struct delayq *q) {
    if (q->qh) nfq_destroy_queue(q->qh);
    if (q->h) nfq_close(q->h);
    if (q->timer_fd >= 0) close(q->timer_fd);
    if (q->sig_fd >= 0) close(q->sig_fd);
    free(q->ring.v);
}

static int open_queue(struct delayq *q, unsigned queue, unsigned maxlen) {
    q->h = nfq_open();
    if (!q->h) {
        fprintf(stderr, "delayq: nfq_open: %s (needs CAP_NET_ADMIN and nfnetlink_queue)\n",
                strerror(errno));
        return -1;
    }
    q->qh = nfq_create_queue(q->h, (uint16_t)queue, on_packet, q);
    if (!q->qh) {
        fprintf(stderr, "delayq: cannot bind queue %u: %s (another program holds it?)\n",
                queue, strerror(errno));
        return -1;
    }
    /* Metadata only: the id is all a verdict needs. */
    if (nfq_set_mode(q->qh, NFQNL_COPY_META, 0) < 0) {
        fprintf(stderr, "delayq: nfq_set_mode: %s\n", strerror(errno));
        return -1;
    }
    if (nfq_set_queue_maxlen(q->qh, maxlen) < 0)
        fprintf(stderr, "delayq: warning: cannot set queue maxlen %u\n", maxlen);
    /* Take GSO packets whole instead of having the kernel segment them. */
    if (nfq_set_queue_flags(q->qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0)
        fprintf(stderr, "delayq: warning: kernel refused NFQA_CFG_F_GSO\n");
    q->nfq_fd = nfq_fd(q->h);
    int rcvbuf = 8 << 20;
    if (setsockopt(q->nfq_fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(q->nfq_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    return 0;
}

static int open_fds(struct delayq *q) {
    q->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (q->timer_fd < 0) {
        fprintf(stderr, "delayq: timerfd_create: %s\n", strerror(errno));
        return -1;
    }
    /* A background job may have inherited SIGINT ignored; an ignored signal
     * never reaches the signalfd, so take the defaults back first. */
    signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL), signal(SIGHUP, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    q->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (q->sig_fd < 0) {
        fprintf(stderr, "delayq: signalfd: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Main loop                                                                 */

/* Read every queue message already waiting; returns -1 on a fatal error. */
static int drain_socket(struct delayq *q, char *buf, size_t len) {
    for (;;) {
        ssize_t n = recv(q->nfq_fd, buf, len, MSG_DONTWAIT);
        if (n > 0) {
            nfq_handle_packet(q->h, buf, (int)n);
            if (q->failed) return -1;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == ENOBUFS) { /* lost messages: a later batch verdict frees them */
            q->n_overruns++;
            continue;
        }
        fprintf(stderr, "delayq: recv: %s\n", n < 0 ? strerror(errno) : "socket closed");
        return -1;
    }
}

static int run(struct delayq *q) {
    static char buf[1 << 16];
    struct pollfd fds[3] = {
        {.fd = q->nfq_fd, .events = POLLIN},
        {.fd = q->timer_fd, .events = POLLIN},
        {.fd = q->sig_fd, .events = POLLIN},
    };
    for (;;) {
        if (poll(fds, 3, -1) < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "delayq: poll: %s\n", strerror(errno));
            return -1;
        }
        if (fds[2].revents) {
            struct signalfd_siginfo si;
            if (read(q->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) return 0;
        }
        if (fds[1].revents) {
            uint64_t expirations;
            if (read(q->timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                fprintf(stderr, "delayq: timerfd read: %s\n", strerror(errno));
            q->armed_ns = 0; /* an absolute one-shot timer is spent once it fired */
        }
        if (fds[0].revents && drain_socket(q, buf, sizeof buf) < 0) return -1;
        if (release_due(q, now_ns()) < 0) return -1;
        if (arm_timer(q) < 0) return -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Command line                                                              */

static void usage(FILE *f) {
    fprintf(f,
            "usage: delayq --queue N --delay-ms D [--pidfile FILE] [--rt] [--maxlen N]\n"
            "       delayq --queue N --probe\n"
            "Holds each packet of NFQUEUE queue N for D ms (float, >= 0), then accepts it\n"
            "in arrival order. --rt: SCHED_FIFO so a busy CPU does not stretch the delay.\n"
            "--pidfile is written once the queue is bound (a readiness signal).\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"queue", required_argument, NULL, 'q'},  {"delay-ms", required_argument, NULL, 'd'},
        {"pidfile", required_argument, NULL, 'p'}, {"maxlen", required_argument, NULL, 'm'},
        {"rt", no_argument, NULL, 'r'},           {"probe", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},         {0, 0, 0, 0},
    };
    long queue = -1, maxlen = 8192;
    double delay_ms = -1;
    const char *pidfile = NULL;
    int rt = 0, probe = 0, c;
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'q': queue = strtol(optarg, &end, 10); if (*end || queue < 0 || queue > 65535) queue = -2; break;
        case 'd': delay_ms = strtod(optarg, &end); if (*end || !isfinite(delay_ms)) delay_ms = -2; break;
        case 'm': maxlen = strtol(optarg, &end, 10); if (*end || maxlen < 1) maxlen = -1; break;
        case 'p': pidfile = optarg; break;
        case 'r': rt = 1; break;
        case 'P': probe = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || queue < 0 || maxlen < 1 || (!probe && (delay_ms < 0 || delay_ms > 60000))) {
        fprintf(stderr, "delayq: need --queue 0..65535 and --delay-ms 0..60000\n");
        usage(stderr);
        return 2;
    }

    struct delayq q = {.nfq_fd = -1, .timer_fd = -1, .sig_fd = -1};
    q.delay_ns = probe ? 0 : (uint64_t)(delay_ms * 1e6 + 0.5);
    int rc = 1;
    if (open_fds(&q) < 0 || open_queue(&q, (unsigned)queue, (unsigned)maxlen) < 0) goto done;
    if (probe) {
        rc = 0;
        goto done;
    }
    /* Timer slack would add up to 50 us to every release; ask for none. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    if (rt) {
        struct sched_param sp = {.sched_priority = 10};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
            fprintf(stderr, "delayq: warning: SCHED_FIFO refused (%s); running at normal priority\n",
                    strerror(errno));
    }
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0) {
            fprintf(stderr, "delayq: cannot write %s: %s\n", pidfile, strerror(errno));
            goto done;
        }
    }
    rc = run(&q) < 0 ? 1 : 0;
    /* Let go of what is still held rather than leave it to be dropped. */
    const struct held *f;
    uint32_t last = 0;
    int any = 0;
    while ((f = ring_front(&q.ring))) last = f->id, any = 1, ring_pop(&q.ring);
    if (any) accept_upto(&q, last);
    fprintf(stderr,
            "delayq: queue %ld delay %.3f ms: %llu packets, %llu verdicts, max held %llu, "
            "worst lateness %.3f ms, %llu socket overruns\n",
            queue, delay_ms, (unsigned long long)q.n_packets, (unsigned long long)q.n_verdicts,
            (unsigned long long)q.max_held, q.max_late_ns / 1e6,
            (unsigned long long)q.n_overruns);
done:
    close_queue(&q);
    return rc;
}
