/*
 * mdp_worker.c - a Majordomo (MDP/0.2, ZeroMQ RFC 18) worker in C with libzmq.
 *
 * Registers with a Majordomo broker (maitred, or any other) as a worker of SERVICE and answers
 * each request with its body frames upper-cased (ASCII letters only), or unchanged with -e.
 *
 *   mdp_worker [-n MAX_REQUESTS] [-s SECONDS] [-h HEARTBEAT_MS] [-p] [-e] [-v] ENDPOINT SERVICE
 *
 *   -n MAX_REQUESTS  exit after answering this many requests (default 0: no limit)
 *   -s SECONDS       exit after this many seconds (default 0: no limit)
 *   -h HEARTBEAT_MS  heartbeat interval (default 2500, what maitred and every MDP peer expect;
 *                    it must match the broker's)
 *   -p               send a PARTIAL reply ("working on <first frame>") before each FINAL
 *   -e               echo the body instead of upper-casing it
 *   -v               log every command sent and received on stderr
 *
 * It exits with status 0 when a limit is reached (after telling the broker DISCONNECT), on
 * SIGINT/SIGTERM (likewise), or when the broker sends DISCONNECT (e.g. the broker shuts down);
 * with 1 on a usage or ZeroMQ error.
 *
 * The frames on the wire (after the routing id, which the DEALER socket handles for us):
 *
 *   READY      W->B  "MDPW02", 0x01, service
 *   REQUEST    B->W  "MDPW02", 0x02, client-address, "", body...
 *   PARTIAL    W->B  "MDPW02", 0x03, client-address, "", body...
 *   FINAL      W->B  "MDPW02", 0x04, client-address, "", body...
 *   HEARTBEAT  both  "MDPW02", 0x05
 *   DISCONNECT both  "MDPW02", 0x06
 *
 * The client-address is an opaque token (maitred: the request id in decimal) that the worker
 * echoes back unchanged. Heartbeats go both ways every interval; a broker silent for 3 intervals
 * is taken for dead, and the worker reconnects and sends READY again.
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_FRAMES 256    /* more than maitred's default max_frames (64) */
#define LIVENESS 3        /* heartbeat intervals of silence before the broker is dead */

/* MDP/0.2 worker commands (the second frame). */
#define READY 0x01
#define REQUEST 0x02
#define PARTIAL 0x03
#define FINAL 0x04
#define HEARTBEAT 0x05
#define DISCONNECT 0x06

static const char *const command_names[] = {
    "?", "READY", "REQUEST", "PARTIAL", "FINAL", "HEARTBEAT", "DISCONNECT",
};

/* A received multipart message: its frames, in order. */
struct message {
    int count;
    int truncated; /* more frames arrived than MAX_FRAMES (the rest were read and dropped) */
    zmq_msg_t frames[MAX_FRAMES];
};

static volatile sig_atomic_t interrupted = 0;
static int verbose = 0;

static void on_signal(int signum)
{
    (void)signum;
    interrupted = 1;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void log_command(const char *direction, int command)
{
    if (verbose && command >= READY && command <= DISCONNECT)
        fprintf(stderr, "mdp_worker: %s %s\n", direction, command_names[command]);
}

static int send_frame(void *socket, const void *data, size_t size, int more)
{
    if (zmq_send(socket, data, size, more ? ZMQ_SNDMORE : 0) < 0) {
        fprintf(stderr, "mdp_worker: zmq_send: %s\n", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

/* Send "MDPW02", command, then `extra` (the service for READY; nothing for HEARTBEAT and
 * DISCONNECT). */
static int send_command(void *socket, unsigned char command, const char *extra)
{
    log_command("sent", command);
    if (send_frame(socket, "MDPW02", 6, 1) != 0)
        return -1;
    if (send_frame(socket, &command, 1, extra != NULL) != 0)
        return -1;
    if (extra)
        return send_frame(socket, extra, strlen(extra), 0);
    return 0;
}

/* Send a PARTIAL or FINAL: "MDPW02", command, client-address, "", body frames. */
static int send_reply(void *socket, unsigned char command, zmq_msg_t *address,
                      zmq_msg_t *body, int body_count)
{
    log_command("sent", command);
    if (send_frame(socket, "MDPW02", 6, 1) != 0 || send_frame(socket, &command, 1, 1) != 0
        || send_frame(socket, zmq_msg_data(address), zmq_msg_size(address), 1) != 0
        || send_frame(socket, "", 0, body_count > 0) != 0)
        return -1;
    for (int i = 0; i < body_count; i++)
        if (send_frame(socket, zmq_msg_data(&body[i]), zmq_msg_size(&body[i]),
                       i + 1 < body_count) != 0)
            return -1;
    return 0;
}

/* Receive every frame of the next message (the caller has polled: one is waiting). */
static int receive_message(void *socket, struct message *msg)
{
    msg->count = 0;
    msg->truncated = 0;
    for (;;) {
        zmq_msg_t scratch;
        zmq_msg_t *frame = msg->count < MAX_FRAMES ? &msg->frames[msg->count] : &scratch;
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, socket, 0) < 0) {
            int err = zmq_errno();
            zmq_msg_close(frame);
            if (err == EINTR && msg->count == 0)
                return 1; /* a signal before anything was read: the caller looks again */
            fprintf(stderr, "mdp_worker: zmq_msg_recv: %s\n", zmq_strerror(err));
            return -1;
        }
        int more = zmq_msg_more(frame);
        if (frame == &scratch) {
            msg->truncated = 1;
            zmq_msg_close(&scratch);
        } else {
            msg->count++;
        }
        if (!more)
            return 0;
    }
}

static void close_message(struct message *msg)
{
    for (int i = 0; i < msg->count; i++)
        zmq_msg_close(&msg->frames[i]);
    msg->count = 0;
}

/* A new DEALER socket connected to the broker, with READY sent; NULL on error. */
static void *connect_to_broker(void *context, const char *endpoint, const char *service)
{
    void *socket = zmq_socket(context, ZMQ_DEALER);
    if (!socket) {
        fprintf(stderr, "mdp_worker: zmq_socket: %s\n", zmq_strerror(zmq_errno()));
        return NULL;
    }
    /* Keep unsent messages (a final DISCONNECT) for at most one second at close. */
    int linger = 1000;
    if (zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_connect(socket, endpoint) != 0) {
        fprintf(stderr, "mdp_worker: cannot connect to %s: %s\n", endpoint,
                zmq_strerror(zmq_errno()));
        zmq_close(socket);
        return NULL;
    }
    if (send_command(socket, READY, service) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

/* Answer one REQUEST: msg is "MDPW02", 0x02, client-address, "", body... */
static int serve_request(void *socket, struct message *msg, int partial, int echo)
{
    zmq_msg_t *address = &msg->frames[2];
    zmq_msg_t *body = &msg->frames[4];
    int body_count = msg->count - 4;

    if (partial) {
        /* One PARTIAL first, to show the streaming replies of MDP/0.2. */
        char text[128];
        size_t first = body_count > 0 ? zmq_msg_size(&body[0]) : 0;
        int n = snprintf(text, sizeof text, "working on %.*s", (int)(first > 64 ? 64 : first),
                         body_count > 0 ? (const char *)zmq_msg_data(&body[0]) : "");
        zmq_msg_t note;
        zmq_msg_init_size(&note, (size_t)n);
        memcpy(zmq_msg_data(&note), text, (size_t)n);
        int rc = send_reply(socket, PARTIAL, address, &note, 1);
        zmq_msg_close(&note);
        if (rc != 0)
            return -1;
    }
    if (!echo) {
        /* Upper-case the ASCII letters of every body frame, in place. */
        for (int i = 0; i < body_count; i++) {
            unsigned char *data = zmq_msg_data(&body[i]);
            for (size_t j = 0; j < zmq_msg_size(&body[i]); j++)
                if (data[j] >= 'a' && data[j] <= 'z')
                    data[j] = (unsigned char)(data[j] - 'a' + 'A');
        }
    }
    return send_reply(socket, FINAL, address, body, body_count);
}

static void usage(void)
{
    fprintf(stderr, "usage: mdp_worker [-n MAX_REQUESTS] [-s SECONDS] [-h HEARTBEAT_MS] [-p] [-e]"
                    " [-v] ENDPOINT SERVICE\n");
}

int main(int argc, char **argv)
{
    long max_requests = 0, seconds = 0, heartbeat_ms = 2500;
    int partial = 0, echo = 0, opt;
    while ((opt = getopt(argc, argv, "n:s:h:pev")) != -1) {
        switch (opt) {
        case 'n':
            max_requests = strtol(optarg, NULL, 10);
            break;
        case 's':
            seconds = strtol(optarg, NULL, 10);
            break;
        case 'h':
            heartbeat_ms = strtol(optarg, NULL, 10);
            break;
        case 'p':
            partial = 1;
            break;
        case 'e':
            echo = 1;
            break;
        case 'v':
            verbose = 1;
            break;
        default:
            usage();
            return 1;
        }
    }
    if (argc - optind != 2 || max_requests < 0 || seconds < 0 || heartbeat_ms <= 0) {
        usage();
        return 1;
    }
    const char *endpoint = argv[optind];
    const char *service = argv[optind + 1];

    /* SIGINT/SIGTERM interrupt zmq_poll (no SA_RESTART): the loop then says DISCONNECT. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    struct message *msg = malloc(sizeof *msg);
    void *context = zmq_ctx_new();
    if (!msg || !context) {
        fprintf(stderr, "mdp_worker: cannot start (out of memory or zmq_ctx_new failed)\n");
        return 1;
    }
    void *socket = connect_to_broker(context, endpoint, service);
    if (!socket) {
        zmq_ctx_term(context);
        return 1;
    }
    printf("mdp_worker: serving %s on %s\n", service, endpoint);
    fflush(stdout);

    long long start = now_ms();
    long long stop_at = seconds > 0 ? start + seconds * 1000 : 0;
    long long heartbeat_at = start + heartbeat_ms;           /* when we send the next HEARTBEAT */
    long long broker_dead_at = start + LIVENESS * heartbeat_ms; /* unless we hear from it */
    long served = 0;
    int status = 0, say_disconnect = 1;

    for (;;) {
        if (interrupted) {
            fprintf(stderr, "mdp_worker: interrupted\n");
            break;
        }
        if (max_requests > 0 && served >= max_requests) {
            fprintf(stderr, "mdp_worker: served %ld requests, exiting\n", served);
            break;
        }
        long long now = now_ms();
        if (stop_at && now >= stop_at) {
            fprintf(stderr, "mdp_worker: time limit of %ld s reached\n", seconds);
            break;
        }
        if (now >= broker_dead_at) {
            /* The broker has been silent for LIVENESS intervals: start again with a new socket
             * (a new routing id), as the zguide's mdwrkapi does. */
            fprintf(stderr, "mdp_worker: broker silent, reconnecting\n");
            zmq_close(socket);
            socket = connect_to_broker(context, endpoint, service);
            if (!socket) {
                status = 1;
                say_disconnect = 0;
                break;
            }
            broker_dead_at = now + LIVENESS * heartbeat_ms;
            heartbeat_at = now + heartbeat_ms;
        }
        if (now >= heartbeat_at) {
            if (send_command(socket, HEARTBEAT, NULL) != 0) {
                status = 1;
                break;
            }
            heartbeat_at = now + heartbeat_ms;
        }

        /* Sleep until a message arrives or the next timer is due. */
        long long wake = heartbeat_at < broker_dead_at ? heartbeat_at : broker_dead_at;
        if (stop_at && stop_at < wake)
            wake = stop_at;
        zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, wake > now ? (long)(wake - now) : 0);
        if (ready < 0) {
            if (zmq_errno() == EINTR)
                continue; /* a signal: the top of the loop looks at `interrupted` */
            fprintf(stderr, "mdp_worker: zmq_poll: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (ready == 0)
            continue;
        int rc = receive_message(socket, msg);
        if (rc > 0)
            continue;
        if (rc < 0) {
            status = 1;
            break;
        }
        /* Any message from the broker shows it is alive. */
        broker_dead_at = now_ms() + LIVENESS * heartbeat_ms;

        if (msg->truncated || msg->count < 2 || zmq_msg_size(&msg->frames[0]) != 6
            || memcmp(zmq_msg_data(&msg->frames[0]), "MDPW02", 6) != 0
            || zmq_msg_size(&msg->frames[1]) != 1) {
            fprintf(stderr, "mdp_worker: dropped a message that is not MDP/0.2 (%d frames)\n",
                    msg->count);
            close_message(msg);
            continue;
        }
        int command = *(unsigned char *)zmq_msg_data(&msg->frames[1]);
        log_command("received", command);
        if (command == REQUEST && msg->count >= 4 && zmq_msg_size(&msg->frames[3]) == 0) {
            if (serve_request(socket, msg, partial, echo) != 0) {
                close_message(msg);
                status = 1;
                break;
            }
            served++;
        } else if (command == HEARTBEAT) {
            /* nothing to do: hearing it was the point */
        } else if (command == DISCONNECT) {
            /* The broker forgot us (it is shutting down, or we broke the protocol). This
             * example stops; a long-running worker would reconnect and send READY again. */
            fprintf(stderr, "mdp_worker: DISCONNECT from the broker, exiting\n");
            close_message(msg);
            say_disconnect = 0;
            break;
        } else {
            fprintf(stderr, "mdp_worker: dropped an unexpected command 0x%02x\n", command);
        }
        close_message(msg);
    }

    if (socket) {
        if (say_disconnect)
            send_command(socket, DISCONNECT, NULL); /* the broker forgets us at once */
        zmq_close(socket); /* lingers up to 1 s to deliver the DISCONNECT */
    }
    zmq_ctx_term(context);
    free(msg);
    return status;
}
