/*
 * mdp_subscriber.c - receive maitred's topics and system events with a plain libzmq SUB socket.
 *
 * Connects to a broker's pub/sub endpoint ([transports.mdp] pub_endpoints), subscribes and
 * prints one line per message on stdout: the topic, then each body frame, separated by spaces.
 *
 *   mdp_subscriber [-n COUNT] [-t TIMEOUT_MS] ENDPOINT [SUBSCRIPTION...]
 *
 *   SUBSCRIPTION   a maitred pattern ("$sys.service.>", "news.*") or a ZeroMQ prefix ("news.",
 *                  "" for everything); default: "$sys.service.>" (services online and offline)
 *   -n COUNT       exit after COUNT messages (default 0: until SIGINT/SIGTERM)
 *   -t TIMEOUT_MS  exit with status 2 when no message comes for that long (default 0: wait)
 *
 * Exit status: 0 done (COUNT messages, or a signal), 1 usage or ZeroMQ error, 2 timeout.
 *
 * The frames (docs/reference/mdp.md, "Publish and subscribe"):
 *
 *   subscribed to a prefix     topic, body...
 *   subscribed to a pattern    pattern, topic, body...   (the pattern first, so that ZeroMQ's
 *                                                         prefix filter lets it through)
 *
 * A topic never contains a "*" or ">" segment, so a first frame that does is a pattern. Since
 * ZeroMQ filters by prefix, a prefix subscriber may also get the pattern form meant for another
 * subscriber's pattern (a prefix "news." matches the frame "news.*"): those are skipped here
 * unless this program subscribed to that pattern itself.
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_SUBSCRIPTIONS 64
#define MAX_FRAMES 66 /* pattern, topic and maitred's default max_frames (64) body frames */

static volatile sig_atomic_t stopping = 0;

static void on_signal(int signo)
{
    (void)signo;
    stopping = 1;
}

/* Whether the text of a frame has a wildcard segment ("*", or ">"): then it is a pattern. */
static int is_pattern(const char *data, size_t size)
{
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i == size || data[i] == '.') {
            if (i - start == 1 && (data[start] == '*' || data[start] == '>'))
                return 1;
            start = i + 1;
        }
    }
    return 0;
}

static void print_frame(const zmq_msg_t *frame, int first)
{
    if (!first)
        putchar(' ');
    fwrite(zmq_msg_data((zmq_msg_t *)frame), 1, zmq_msg_size((zmq_msg_t *)frame), stdout);
}

int main(int argc, char **argv)
{
    long count = 0;
    int timeout_ms = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:t:")) != -1) {
        if (opt == 'n')
            count = strtol(optarg, NULL, 10);
        else if (opt == 't')
            timeout_ms = atoi(optarg);
        else
            goto usage;
    }
    if (optind >= argc || argc - optind - 1 > MAX_SUBSCRIPTIONS)
        goto usage;
    const char *endpoint = argv[optind];
    const char *defaults[] = {"$sys.service.>"};
    const char **subs = argc - optind > 1 ? (const char **)&argv[optind + 1] : defaults;
    int nsubs = argc - optind > 1 ? argc - optind - 1 : 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(socket, endpoint) != 0) {
        fprintf(stderr, "mdp_subscriber: cannot connect to %s: %s\n", endpoint,
                zmq_strerror(zmq_errno()));
        zmq_close(socket);
        zmq_ctx_term(context);
        return 1;
    }
    for (int i = 0; i < nsubs; i++) {
        zmq_setsockopt(socket, ZMQ_SUBSCRIBE, subs[i], strlen(subs[i]));
        fprintf(stderr, "mdp_subscriber: subscribed to \"%s\"\n", subs[i]);
    }

    int status = 0;
    long received = 0;
    while (!stopping && (count == 0 || received < count)) {
        zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, timeout_ms > 0 ? timeout_ms : -1);
        if (ready < 0) {
            if (zmq_errno() == EINTR)
                continue; /* a signal: the loop condition decides */
            fprintf(stderr, "mdp_subscriber: zmq_poll: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (ready == 0) {
            fprintf(stderr, "mdp_subscriber: nothing within %d ms\n", timeout_ms);
            status = 2;
            break;
        }
        zmq_msg_t frames[MAX_FRAMES];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t scratch;
            zmq_msg_t *frame = n < MAX_FRAMES ? &frames[n] : &scratch;
            zmq_msg_init(frame);
            if (zmq_msg_recv(frame, socket, 0) < 0) {
                zmq_msg_close(frame);
                status = 1;
                break;
            }
            more = zmq_msg_more(frame);
            if (frame == &scratch)
                zmq_msg_close(frame); /* beyond MAX_FRAMES: read and dropped */
            else
                n++;
        }
        if (status != 0) {
            for (int i = 0; i < n; i++)
                zmq_msg_close(&frames[i]);
            break;
        }
        int topic = 0; /* index of the topic frame */
        int mine = 1;
        if (n > 0 && is_pattern(zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]))) {
            topic = 1;
            mine = 0; /* the pattern form: ours only if we subscribed to exactly that pattern */
            for (int i = 0; i < nsubs; i++)
                if (strlen(subs[i]) == zmq_msg_size(&frames[0]) &&
                    memcmp(subs[i], zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0])) == 0)
                    mine = 1;
        }
        if (mine && topic < n) {
            for (int i = topic; i < n; i++)
                print_frame(&frames[i], i == topic);
            putchar('\n');
            fflush(stdout);
            received++;
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
    }
    zmq_close(socket);
    zmq_ctx_term(context);
    return status;

usage:
    fprintf(stderr, "usage: mdp_subscriber [-n COUNT] [-t TIMEOUT_MS] ENDPOINT [SUBSCRIPTION...]\n");
    return 1;
}
