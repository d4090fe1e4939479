/*
 * mdp_client.c - a Majordomo (MDP) client in C with libzmq.
 *
 * Sends one request to a service through a Majordomo broker (maitred, or any other) and prints
 * the reply: each body frame of the FINAL reply on its own line on stdout; PARTIAL replies, if
 * the worker sends any, on stderr as "partial: <frame>".
 *
 *   mdp_client [-1] [-t TIMEOUT_MS] [-k SERVER_KEY -c KEY_FILE] ENDPOINT SERVICE [BODY_FRAME...]
 *
 *   -1             speak MDP/0.1 (ZeroMQ RFC 7) instead of MDP/0.2 (RFC 18): one reply only
 *   -t TIMEOUT_MS  how long to wait for the final reply (default 5000)
 *   -k SERVER_KEY  CURVE: the broker's public key, 40 Z85 characters or its key file
 *                  (broker.key, as `maitred keygen broker` writes it)
 *   -c KEY_FILE    CURVE: this client's secret key file (client.key_secret from
 *                  `maitred keygen client`); its public key must be in the broker's
 *                  [[transports.mdp.keys]]
 *
 * Exit status: 0 a final reply was printed, 1 usage or ZeroMQ error, 2 no reply in time,
 * 3 a reply that is not valid MDP.
 *
 * The frames on the wire (after the routing id, which the DEALER socket handles for us):
 *
 *   MDP/0.2 (RFC 18)                          MDP/0.1 (RFC 7), on a DEALER socket
 *   REQUEST  "MDPC02", 0x01, service, body... "", "MDPC01", service, body...
 *   PARTIAL  "MDPC02", 0x02, service, body... (none: 0.1 has exactly one reply)
 *   FINAL    "MDPC02", 0x03, service, body... "", "MDPC01", service, body...
 *
 * maitred answers a request it cannot serve (no worker, deadline passed, ...) with an ordinary
 * final reply of two frames, a three-digit code and a reason, e.g. "503" / "no worker for x".
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_FRAMES 256 /* more than maitred's default max_frames (64) */

/* A received multipart message: its frames, in order. */
struct message {
    int count;
    int truncated; /* more frames arrived than MAX_FRAMES (the rest were read and dropped) */
    zmq_msg_t frames[MAX_FRAMES];
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send one frame; `more` says whether further frames of the same message follow. */
static int send_frame(void *socket, const void *data, size_t size, int more)
{
    if (zmq_send(socket, data, size, more ? ZMQ_SNDMORE : 0) < 0) {
        fprintf(stderr, "mdp_client: zmq_send: %s\n", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static int send_string(void *socket, const char *text, int more)
{
    return send_frame(socket, text, strlen(text), more);
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
            fprintf(stderr, "mdp_client: zmq_msg_recv: %s\n", zmq_strerror(zmq_errno()));
            zmq_msg_close(frame);
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

/* Does frame `i` of `msg` hold exactly these `size` bytes? */
static int frame_is(struct message *msg, int i, const void *data, size_t size)
{
    return i < msg->count && zmq_msg_size(&msg->frames[i]) == size
        && memcmp(zmq_msg_data(&msg->frames[i]), data, size) == 0;
}

/* Print frames first..count-1 of `msg`, each followed by a line break, with `prefix`. */
static void print_frames(FILE *out, const char *prefix, struct message *msg, int first)
{
    for (int i = first; i < msg->count; i++) {
        fputs(prefix, out);
        fwrite(zmq_msg_data(&msg->frames[i]), 1, zmq_msg_size(&msg->frames[i]), out);
        fputc('\n', out);
    }
    fflush(out);
}

static void usage(void)
{
    fprintf(stderr, "usage: mdp_client [-1] [-t TIMEOUT_MS] [-k SERVER_KEY -c KEY_FILE] ENDPOINT"
                    " SERVICE [BODY_FRAME...]\n");
}

/* Read the Z85 value of `name` (public-key or secret-key) from a ZeroMQ certificate file (the
 * format of czmq's zcert, pyzmq's zmq.auth and `maitred keygen`): a line such as
 *     public-key = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
 * Writes 40 characters and a NUL to `key`; returns 0, or -1 (with a message) when absent. */
static int read_key(const char *path, const char *name, char key[41])
{
    FILE *file = fopen(path, "r");
    if (!file) {
        fprintf(stderr, "mdp_client: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[512];
    int found = -1;
    size_t name_len = strlen(name);
    while (found != 0 && fgets(line, sizeof line, file)) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, name, name_len) != 0)
            continue;
        char *quote = strchr(p + name_len, '"');
        if (quote && strlen(quote + 1) > 40 && quote[41] == '"') {
            memcpy(key, quote + 1, 40);
            key[40] = '\0';
            found = 0;
        }
    }
    fclose(file);
    if (found != 0)
        fprintf(stderr, "mdp_client: %s: no %s line of 40 Z85 characters\n", path, name);
    return found;
}

/* CURVE, before connecting: the broker's public key (Z85 or a key file) and this client's key
 * pair. libzmq does the handshake; a key the broker does not know is refused in it, and the
 * request then gets no reply (exit status 2). */
static int set_curve(void *socket, const char *server_key, const char *key_file)
{
    char server[41], public_key[41], secret_key[41];
    if (strlen(server_key) == 40) {
        memcpy(server, server_key, 41);
    } else if (read_key(server_key, "public-key", server) != 0) {
        return -1;
    }
    if (read_key(key_file, "public-key", public_key) != 0
        || read_key(key_file, "secret-key", secret_key) != 0)
        return -1;
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, server, 40) != 0
        || zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, public_key, 40) != 0
        || zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, secret_key, 40) != 0) {
        fprintf(stderr, "mdp_client: CURVE: %s (libzmq built without CURVE? bad key?)\n",
                zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int v01 = 0;
    long timeout_ms = 5000;
    const char *server_key = NULL, *key_file = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "1t:k:c:")) != -1) {
        switch (opt) {
        case 'k':
            server_key = optarg;
            break;
        case 'c':
            key_file = optarg;
            break;
        case '1':
            v01 = 1;
            break;
        case 't':
            timeout_ms = strtol(optarg, NULL, 10);
            if (timeout_ms <= 0) {
                fprintf(stderr, "mdp_client: -t needs a positive number of milliseconds\n");
                return 1;
            }
            break;
        default:
            usage();
            return 1;
        }
    }
    if (argc - optind < 2 || (server_key == NULL) != (key_file == NULL)) {
        if (argc - optind >= 2)
            fprintf(stderr, "mdp_client: CURVE needs both -k SERVER_KEY and -c KEY_FILE\n");
        usage();
        return 1;
    }
    const char *endpoint = argv[optind];
    const char *service = argv[optind + 1];
    char **body = &argv[optind + 2];
    int body_count = argc - optind - 2;

    void *context = zmq_ctx_new();
    if (!context) {
        fprintf(stderr, "mdp_client: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    /* A DEALER socket: asynchronous, so one request can be answered by several replies
     * (MDP/0.2 partials). A REQ socket would do for MDP/0.1 only. */
    void *socket = zmq_socket(context, ZMQ_DEALER);
    int linger = 0; /* do not hang in zmq_ctx_term when the broker is gone */
    if (socket && server_key && set_curve(socket, server_key, key_file) != 0) {
        zmq_close(socket);
        zmq_ctx_term(context);
        return 1;
    }
    if (!socket || zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_connect(socket, endpoint) != 0) {
        fprintf(stderr, "mdp_client: cannot connect to %s: %s\n", endpoint,
                zmq_strerror(zmq_errno()));
        if (socket)
            zmq_close(socket);
        zmq_ctx_term(context);
        return 1;
    }

    /* The REQUEST. */
    int rc = 0;
    if (v01) {
        /* MDP/0.1: "", "MDPC01", service, body... (a REQ socket would add the "" itself) */
        rc |= send_frame(socket, "", 0, 1);
        rc |= send_string(socket, "MDPC01", 1);
    } else {
        /* MDP/0.2: "MDPC02", 0x01 (REQUEST), service, body... */
        rc |= send_string(socket, "MDPC02", 1);
        rc |= send_frame(socket, "\x01", 1, 1);
    }
    rc |= send_string(socket, service, body_count > 0);
    for (int i = 0; i < body_count; i++)
        rc |= send_string(socket, body[i], i + 1 < body_count);
    if (rc != 0) {
        zmq_close(socket);
        zmq_ctx_term(context);
        return 1;
    }

    /* Replies until the final one, or the deadline. */
    int status = 2;
    long long deadline = now_ms() + timeout_ms;
    struct message *reply = malloc(sizeof *reply);
    if (!reply) {
        fprintf(stderr, "mdp_client: out of memory\n");
        status = 1;
    }
    while (reply && status == 2) {
        long long left = deadline - now_ms();
        if (left <= 0)
            break;
        zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, (long)left);
        if (ready < 0) {
            if (zmq_errno() == EINTR)
                continue;
            fprintf(stderr, "mdp_client: zmq_poll: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (ready == 0)
            break; /* timed out */
        if (receive_message(socket, reply) != 0) {
            status = 1;
            break;
        }
        if (reply->truncated) {
            fprintf(stderr, "mdp_client: a reply of more than %d frames\n", MAX_FRAMES);
            status = 3;
        } else if (v01) {
            /* "", "MDPC01", service, body... */
            if (frame_is(reply, 0, "", 0) && frame_is(reply, 1, "MDPC01", 6) && reply->count >= 3) {
                print_frames(stdout, "", reply, 3);
                status = 0;
            } else {
                fprintf(stderr, "mdp_client: not an MDP/0.1 reply (%d frames)\n", reply->count);
                status = 3;
            }
        } else {
            /* "MDPC02", 0x02 (PARTIAL) or 0x03 (FINAL), service, body... */
            if (frame_is(reply, 0, "MDPC02", 6) && reply->count >= 3
                && frame_is(reply, 1, "\x02", 1)) {
                print_frames(stderr, "partial: ", reply, 3);
            } else if (frame_is(reply, 0, "MDPC02", 6) && reply->count >= 3
                       && frame_is(reply, 1, "\x03", 1)) {
                print_frames(stdout, "", reply, 3);
                status = 0;
            } else {
                fprintf(stderr, "mdp_client: not an MDP/0.2 reply (%d frames)\n", reply->count);
                status = 3;
            }
        }
        close_message(reply);
    }
    if (status == 2)
        fprintf(stderr, "mdp_client: no reply from %s within %ld ms\n", service, timeout_ms);

    free(reply);
    zmq_close(socket);
    zmq_ctx_term(context);
    return status;
}
